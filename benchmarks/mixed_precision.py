"""Mixed-precision search vs uniform int8 and uniform int4: accuracy, LiteRT bytes and latency.

The CNN of `_digits` (conv1 16, conv2 32, flatten, fc1 64, logits 10) is trained on
scikit-learn's digits (the `_digits` split). Under the tuner's default floor, 1 point
below the dense validation accuracy (`--drop 0.01`), it is then compressed:

- dense float: the trained model, float32 (`quantize=None`);
- uniform int8 and uniform int4: `kc.Quantize("int8")`, `kc.Quantize("int4")` (4-bit
  weights, int8 activations), fine-tuned as a search trial is
  (`keras_condensa.workflows.fine_tune`, the same epochs and seed);
- one mixed search per objective (`--objectives`, by default `tflite_bytes` and
  `litert_latency_ms`): `kc.search.CompressionTuner` with
  `scheme=kc.search.mixed_precision_scheme(model)` (one `bits/<layer>` choice of int4,
  int8 or "skip", left float, per layer), the default `ConstrainedBayesianOracle`,
  `quantize="int8"`, `--trials` trials of `--fine-tune-epochs` quantization-aware epochs.
  The oracle's first point (every layer left float) fails at once: nothing to quantize;
- all layouts (`--exhaustive`, on by default): every layout the file can have (56 for
  four layers: a "skip" the converter quantizes anyway is counted as int8), one trial
  each through the same tuner (`keras_tuner.oracles.GridSearchOracle` over a `layout`
  choice); per objective, its cheapest trial whose reading meets the floor: the best a
  search of this space can find, and how far `--trials` trials fall from it.

Every file is exported with `tflite_export.export(quantize="int8")` from the model's own
ranges (no calibration data), the dense one with `quantize=None`. Columns: the layout
(each layer's weight type, read back from the file's tensors), the Keras validation
accuracy (what the search constrains), the LiteRT file's accuracy on the same 450
digits, whether the Keras accuracy meets the floor, the file's bytes, and the median
`invoke()` latency (ai-edge-litert, one thread, XNNPACK): the median over `--rounds`
rounds that take turns between the files. Ratios are to the dense float file. The
searches pick from one timing of each trial, taken while they ran (the noisier, the
more the smallest reading flatters its trial); the table times the picked files again,
with the others.

Run: `KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/mixed_precision.py`
(`--trials`, `--fine-tune-epochs`, `--drop`, `--objectives`, `--rounds`, `--seed`,
`--no-exhaustive`; about 6 minutes on 2 shared cores, 1.5 without the grid).
"""

import argparse
import itertools
import logging
import os
import re
import sys
import tempfile
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _digits  # noqa: E402
import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402

import keras_condensa as kc  # noqa: E402
import tflite_export as te  # noqa: E402
from keras_condensa.workflows import fine_tune  # noqa: E402

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes of the trials
DENSE_EPOCHS = 20
RUNS, WARMUP = 400, 50
OBJECTIVES = ("tflite_bytes", "litert_latency_ms")


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--drop", type=float, default=0.01)
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--exhaustive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run every layout (a grid search) for the best of the whole space",
    )
    return parser.parse_args()


def file_layout(path, layers):
    """`{layer: weight dtype}` read from the kernel tensors of a LiteRT file."""
    found = {}
    for tensor in te.inspect_tflite(path):
        if tensor.bytes and len(tensor.shape) >= 2:
            parts = tensor.name.split(";")[0].split("/")
            for name in layers:
                if any(re.fullmatch(rf"{name}(_compressed)?(_\d+)?", p) for p in parts):
                    found[name] = tensor.dtype
    return " ".join(f"{name}:{found.get(name, '?')}" for name in layers)


def litert_accuracy(path, x, y):
    return float(np.mean(np.argmax(te.predict(path, x), axis=-1) == y))


def export(model, path, quantize):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse encoding skipped" for int4, said in the doc
        return te.export(model, path, quantize=quantize)


def uniform(model, scheme, bits, data, args):
    """Every layer at `bits`, fine-tuned as a search trial of these values is."""
    x_train, y_train, _, _ = data
    ops = scheme.build(dict.fromkeys(scheme.layers, bits))
    tuned = fine_tune(model, ops, x_train, y_train, epochs=args.fine_tune_epochs, seed=args.seed)
    return tuned.model


def run_tuner(model, scheme, data, args, directory, name, **options):
    """A `CompressionTuner` over `scheme` under the floor, searched; and its seconds."""
    x_train, y_train, x_val, y_val = data
    tuner = kc.search.CompressionTuner(
        model,
        scheme=scheme,
        train_data=(x_train, y_train),
        validation_data=(x_val, y_val),
        max_accuracy_drop=args.drop,
        quantize="int8",
        export=True,
        fine_tune_epochs=args.fine_tune_epochs,
        seed=args.seed,
        directory=directory,
        project_name=name,
        **options,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner.search()
    return tuner, time.perf_counter() - start


def summary(tuner, seconds, objective, best, layout_of):
    """What a search ran and what it picked: a dict for `main`'s report."""
    trials = list(tuner.oracle.trials.values())
    completed = [t for t in trials if t.status == "COMPLETED"]
    return {
        "trials": len(trials),
        "failed": len(trials) - len(completed),
        "layouts": len({layout_of(t) for t in completed}),
        "s": seconds,
        "objective": objective,
        "reading": best.metrics.get_last_value(objective),
        "best": best,
    }


def search(model, scheme, data, args, objective, directory):
    """The Bayesian mixed-precision search of `objective`, `args.trials` trials."""
    tuner, seconds = run_tuner(
        model,
        scheme,
        data,
        args,
        directory,
        objective,
        objective=objective,
        max_trials=args.trials,
    )
    best = tuner.best_trial()

    def layout_of(trial):
        return tuple(scheme.resolve(trial.hyperparameters).values())

    return tuner, summary(tuner, seconds, objective, best, layout_of)


def layouts(scheme):
    """`{name: values}`, one entry per layout a file can have, every layer float excepted.

    A "skip" the file quantizes anyway (`scheme.resolve`) is that layout's int8: each
    layout appears once, under its resolved types.
    """
    found = {}
    for choices in itertools.product(scheme.choices, repeat=len(scheme.layers)):
        if set(choices) == {"skip"}:
            continue
        resolved = scheme.resolve(dict(zip(scheme.layers, choices, strict=True)))
        name = " ".join(resolved.values())
        found[name] = {k: "skip" if v == "float32" else v for k, v in resolved.items()}
    return found


def exhaustive(model, scheme, data, args, directory):
    """Every layout, one trial each (a grid search): per objective, the cheapest feasible one."""
    every = layouts(scheme)
    oracle = keras_tuner.oracles.GridSearchOracle(
        objective=keras_tuner.Objective(OBJECTIVES[0], "min"), max_trials=len(every)
    )

    def grid_scheme(hp):
        return scheme.build(every[hp.Choice("layout", list(every))])

    tuner, seconds = run_tuner(model, grid_scheme, data, args, directory, "grid", oracle=oracle)
    feasible = [t for t in tuner.oracle.trials.values() if tuner.is_feasible(t)]
    results = {}
    for objective in args.objectives:
        best = min(feasible, key=lambda t: t.metrics.get_last_value(objective))
        info = summary(tuner, seconds, objective, best, lambda t: t.hyperparameters["layout"])
        results[objective] = (tuner, info)
    return results


def timed(paths, rounds):
    """Median p50 latency of each file over `rounds` rounds that take turns between them."""
    readings = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            readings[name].append(te.benchmark(path, runs=RUNS, warmup=WARMUP).p50_ms)
    return {name: float(np.median(values)) for name, values in readings.items()}


def table(rows, dense):
    lines = [
        "| variant | layout in the file | Keras acc | LiteRT acc | meets floor | bytes | "
        "bytes ratio | p50 µs | p50 ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['layout']} | {r['keras']:.4f} | {r['litert']:.4f} | "
            f"{'yes' if r['meets'] else 'no'} | {r['bytes']:,} | "
            f"{r['bytes'] / dense['bytes']:.3f}x | {1000 * r['p50']:.1f} | "
            f"{r['p50'] / dense['p50']:.2f}x |"
        )
    return "\n".join(lines)


def main():
    args = parse()
    data = _digits.load("cnn")
    x_train, y_train, x_val, y_val = data
    keras.utils.set_random_seed(args.seed)
    dense = _digits.build("cnn", keras)
    _digits.compile_model(dense, keras)
    dense.fit(x_train, y_train, epochs=DENSE_EPOCHS, batch_size=32, verbose=0)
    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"{len(x_train)} training and {len(x_val)} validation digits",
        flush=True,
    )
    scheme = kc.search.mixed_precision_scheme(dense)

    with tempfile.TemporaryDirectory() as directory:
        models = {
            "dense float": (dense, None),
            "uniform int8": (uniform(dense, scheme, 8, data, args), "int8"),
            "uniform int4": (uniform(dense, scheme, 4, data, args), "int8"),
        }
        searches = []
        grid = exhaustive(dense, scheme, data, args, directory) if args.exhaustive else {}
        for objective in args.objectives:
            tuner, info = search(dense, scheme, data, args, objective, directory)
            searches.append((f"search, min {objective}", info))
            models[f"search, min {objective}"] = (tuner.best_model(), "int8")
            if objective in grid:
                grid_tuner, info = grid[objective]
                searches.append((f"all layouts, min {objective}", info))
                model = grid_tuner.load_model(info["best"])
                models[f"all layouts, min {objective}"] = (model, "int8")
        floor = tuner.accuracy_floor
        rows, paths = [], {}
        for name, (model, quantize) in models.items():
            path = os.path.join(directory, f"{re.sub(r'[^a-z0-9]+', '_', name)}.tflite")
            result = export(model, path, quantize)
            paths[name] = path
            keras_acc = _digits.accuracy(model, x_val, y_val)
            rows.append(
                {
                    "name": name,
                    "layout": file_layout(path, scheme.layers),
                    "keras": keras_acc,
                    "litert": litert_accuracy(path, x_val, y_val),
                    "meets": keras_acc >= floor,
                    "bytes": result.bytes,
                }
            )
        latency = timed(paths, args.rounds)
        for row in rows:
            row["p50"] = latency[row["name"]]

    print(
        f"\nfloor: {floor:.4f} (dense Keras accuracy {tuner.dense_accuracy:.4f} - {args.drop}); "
        f"{args.fine_tune_epochs} QAT epochs per trial and per uniform scheme"
    )
    for name, info in searches:
        best = info["best"]
        print(
            f"{name}: {info['trials']} trials ({info['failed']} failed), {info['layouts']} "
            f"distinct layouts, {info['s']:.0f} s; trial {best.trial_id}, its "
            f"{info['objective']} while searching {info['reading']:.4g}"
        )
    print()
    print(table(rows, rows[0]))


if __name__ == "__main__":
    main()
