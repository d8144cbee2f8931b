"""The embedded demo of `keras-condensa demo`: LeNet-300-100 on scikit-learn's digits.

No download: the 8x8 digits ship with scikit-learn. `run` trains the dense
model, runs the same search as `keras-condensa search` (its outputs included),
exports the dense model the same way as a yardstick and prints
`comparison_table`. Like every command, it prints its own lines only: what
TensorFlow and the TFLite converter print is kept in
`OUT/search/keras-condensa.log` (`keras-condensa demo --verbose` shows it).
"""

import os
import tempfile
import time

import keras


def load_data(seed=0):
    """scikit-learn's digits, scaled to [0, 1], split 75/25 stratified.

    Args:
        seed: the split's `random_state`.

    Returns:
        A dict with `x_train`, `y_train`, `x_val`, `y_val` (float32 inputs of
        64 features, int labels 0-9), the layout of a `--data` `.npz`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    x_train, x_val, y_train, y_val = train_test_split(
        x, data.target, test_size=0.25, random_state=seed, stratify=data.target
    )
    return {
        "x_train": x_train,
        "y_train": y_train.astype("int64"),
        "x_val": x_val,
        "y_val": y_val.astype("int64"),
    }


def lenet_300_100(seed=0):
    """LeNet-300-100 for 64 inputs: Dense 300 relu, Dense 100 relu, 10 logits.

    Args:
        seed: seeds the weights.

    Returns:
        An uncompiled `keras.Sequential`.
    """
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(300, activation="relu", name="fc1"),
            keras.layers.Dense(100, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="lenet_300_100",
    )


def train_dense(data, epochs=20, seed=0):
    """Trains LeNet-300-100 on `data` with Adam and sparse cross-entropy on logits.

    Args:
        data: as returned by `load_data`.
        epochs: training epochs.
        seed: seeds weights and shuffling.

    Returns:
        The trained, compiled `keras.Model`.
    """
    model = lenet_300_100(seed)
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(data["x_train"], data["y_train"], epochs=epochs, batch_size=32, verbose=0)
    return model


def _ratio(dense, best, higher_is_smaller=True):
    if dense is None or best is None or best == 0:
        return "-"
    return f"{dense / best:.1f}x" if higher_is_smaller else f"{best / dense:.2f}x"


def comparison_table(dense, best):
    """Dense against best, one row per measure, with the ratio dense / best.

    Args:
        dense: dict with `accuracy`, `params`, `nonzeros`, `tflite_bytes`,
            `gzip_bytes`, `latency_ms` (any may be None).
        best: the same for the chosen compressed model.

    Returns:
        The table as text.
    """

    def num(v, kind):
        if v is None:
            return "-"
        if kind == "acc":
            return f"{v:.4f}"
        if kind == "ms":
            return f"{v:.4f}"
        return f"{int(v):,}"

    rows = [
        ("measure", "dense", "best", "dense/best"),
        (
            "val accuracy",
            num(dense["accuracy"], "acc"),
            num(best["accuracy"], "acc"),
            f"{best['accuracy'] - dense['accuracy']:+.4f}",
        ),
        (
            "parameters",
            num(dense["params"], "n"),
            num(best["params"], "n"),
            _ratio(dense["params"], best["params"]),
        ),
        (
            "nonzeros",
            num(dense["nonzeros"], "n"),
            num(best["nonzeros"], "n"),
            _ratio(dense["nonzeros"], best["nonzeros"]),
        ),
        (
            "TFLite bytes",
            num(dense["tflite_bytes"], "n"),
            num(best["tflite_bytes"], "n"),
            _ratio(dense["tflite_bytes"], best["tflite_bytes"]),
        ),
        (
            "gzip bytes",
            num(dense["gzip_bytes"], "n"),
            num(best["gzip_bytes"], "n"),
            _ratio(dense["gzip_bytes"], best["gzip_bytes"]),
        ),
        (
            "LiteRT p50 ms",
            num(dense["latency_ms"], "ms"),
            num(best["latency_ms"], "ms"),
            _ratio(dense["latency_ms"], best["latency_ms"]),
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        pairs = enumerate(zip(r, widths, strict=True))
        cells = [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in pairs]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args, out):
    """Runs `keras-condensa demo`: train, search, export to LiteRT, compare.

    The floor is the dense accuracy minus 1 point; every trial prunes and
    fine-tunes with int4 weights (quantization-aware), and the objective is
    the gzip size of its LiteRT file (int4 weights, int8 activations). The
    best model is exported the same way, verified against Keras and timed.
    The yardsticks are the dense model exported to int8 (post-training) and
    to float32.

    Args:
        args: the parsed `demo` arguments (`max_trials`, `epochs`, `out`,
            `objective`, `dense_epochs`).
        out: the command line's output (`cli_output.Output`).

    Returns:
        The exit status, 0.

    Raises:
        keras_condensa.cli_checks.UsageError: invalid numbers of trials or epochs.
    """
    from keras_condensa.cli_checks import UsageError
    from keras_condensa.cli_output import json_result, search_with_progress
    from keras_condensa.search.run import density_scheme
    from keras_condensa.summary import summary
    from keras_condensa.workflows.deploy import export_measured

    if args.max_trials < 1 or args.epochs < 0 or args.dense_epochs < 1:
        raise UsageError("--max-trials and --dense-epochs must be >= 1, --epochs >= 0")
    start = time.perf_counter()
    data = load_data()
    out.progress(
        f"training LeNet-300-100 on scikit-learn's digits ({len(data['x_train'])} train, "
        f"{len(data['x_val'])} val samples, {args.dense_epochs} epochs, "
        f"backend {keras.backend.backend()})"
    )
    dense = train_dense(data, epochs=args.dense_epochs)
    result = search_with_progress(
        out,
        "`keras-condensa demo`",
        dense,
        data,
        args.out,
        model_name="LeNet-300-100 (digits)",
        scheme=density_scheme("unstructured", qat="int4"),
        objective=args.objective,
        max_trials=args.max_trials,
        epochs=args.epochs,
        max_drop=0.01,
        quantize="int8",
        kernels="builtin",
        overwrite=True,
        seed=0,
    )
    # The dense model, exported the same way, as the yardstick.
    dense_summary = summary(dense, print_fn=None)
    with tempfile.TemporaryDirectory() as tmp:
        dense_int8 = export_measured(
            dense,
            os.path.join(tmp, "dense.tflite"),
            quantize="int8",
            representative_data=data["x_train"],
            kernels="builtin",
        )
        dense_float = export_measured(
            dense, os.path.join(tmp, "dense_float.tflite"), sparse=False, benchmark=False
        )
    best = result["best"]
    tfl = best["tflite"]
    dense_row = {
        "accuracy": result["dense_accuracy"],
        "params": dense_summary.params,
        "nonzeros": dense_summary.nonzeros,
        "tflite_bytes": dense_int8["bytes"],
        "gzip_bytes": dense_int8["gzip_bytes"],
        "latency_ms": dense_int8["p50_ms"],
    }
    best_row = {
        "accuracy": best["val_accuracy"],
        "params": best["params"],
        "nonzeros": best["nonzeros"],
        "tflite_bytes": tfl["bytes"],
        "gzip_bytes": tfl["gzip_bytes"],
        "latency_ms": tfl["p50_ms"],
    }
    elapsed = time.perf_counter() - start
    out.result(result["results_summary"])
    out.result("")
    out.result(
        f"LeNet-300-100 on digits: dense against the best of {result['trials']} trials "
        f"(floor {result['floor']:.4f}; LiteRT, dense: int8 post-training, best: int4 weights "
        "and int8 activations from fine-tuning; built-in kernels, 1 thread)"
    )
    out.result(comparison_table(dense_row, best_row))
    out.result(
        f"against the dense float32 file ({dense_float['bytes']:,} bytes, "
        f"{dense_float['gzip_bytes']:,} gzipped) the best file is "
        f"{dense_float['bytes'] / tfl['bytes']:.1f}x smaller "
        f"({dense_float['gzip_bytes'] / tfl['gzip_bytes']:.1f}x gzipped)"
    )
    out.result(f"LiteRT file against Keras: top-1 agreement {tfl['top1_agreement']:.4f}")
    out.result(f"wrote {', '.join(result['files'].values())} in {elapsed:.1f} s")
    out.emit_json(
        {
            "command": "demo",
            "backend": keras.backend.backend(),
            "elapsed_s": elapsed,
            "dense": dense_row,
            "dense_float": {
                "tflite_bytes": dense_float["bytes"],
                "gzip_bytes": dense_float["gzip_bytes"],
            },
            "best_table": best_row,
            **json_result(result),
        }
    )
    return 0
