"""LiteRT export of pruned models: file size, latency and accuracy, measured in one run.

For LeNet-300-100 and a small CNN trained on scikit-learn's digits and pruned to 10%
density with `kc.Prune` (fine-tuned with its callbacks, then stripped):

- dense float:      the unpruned model, float32, dense encoding
- pruned float sp.: pruned, float32, sparse encoding (EXPERIMENTAL_SPARSITY)
- pruned int8:      pruned, full-integer post-training quantization, dense encoding
- pruned int8 sp.:  pruned, int8, sparse encoding; XNNPACK cannot load it, so it is
                    exported with kernels="builtin" and has no XNNPACK latency

Latency is the median of `invoke()` times with the ai-edge-litert interpreter, one
thread, under XNNPACK (LiteRT's default) and under the built-in kernels; ratios are
to the dense float file on the same kernels. Accuracy is the LiteRT file's on a
held-out split (397 digits).

The second table is the size goal: the smallest gzip-compressed LiteRT file of
LeNet-300-100 within 1 point of the dense model's accuracy, against the dense float
file, for keras-condensa and tensorflow-model-optimization on the same model (the
`_digits` split and architecture, the same dense weights, the same 10-epoch budget
and PolynomialDecay fractions) over a grid of densities:

- kc prune+int8 / prune+int4: `Compose([Prune(d, PolynomialDecay), Quantize(dtype)])`
  fine-tuned (QAT), stripped, exported to int8 LiteRT from its own ranges (int4
  weights are stored packed by the converter);
- tfmot prune+PTQ int8: `prune_low_magnitude`, `strip_pruning`, then full-integer
  post-training quantization (tfmot's pruning guide), in its own process;
- tfmot PQAT int8: pruning, then prune-preserving QAT for the last 2 epochs.

All files use the dense weight encoding (it gzips smaller than the sparse one for
int8) and are run with the ai-edge-litert interpreter for their accuracy.

Run: `.venv/bin/python benchmarks/export.py` (about a minute on 2 cores; the
tfmot column needs `pip install -e ".[compare]"`, else it is left out).
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _digits  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_condensa as kc  # noqa: E402
import tflite_export as te  # noqa: E402

RUNS, WARMUP = 3000, 300
GOAL_DENSITIES = (0.1, 0.07, 0.05)
GOAL_DENSE_EPOCHS, GOAL_EPOCHS, GOAL_DROP = 20, 10, 0.01
GOAL_SCHEDULE = {"begin_fraction": 0.0, "end_fraction": 0.7, "frequency": 10}
LOGITS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def digits():
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    train, val = order[:1400], order[1400:]
    return x[train], data.target[train], x[val], data.target[val]


def lenet():
    inputs = keras.Input((64,))
    h = keras.layers.Dense(300, activation="relu")(inputs)
    h = keras.layers.Dense(100, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="lenet_300_100")


def small_cnn():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(h)), name="small_cnn")


def train_and_prune(model, x, y, density=0.1):
    model.compile(keras.optimizers.Adam(3e-3), LOGITS)
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    scheme = kc.Prune(density=density)
    pruned = scheme.apply(model)
    pruned.compile(keras.optimizers.Adam(1e-3), LOGITS)
    pruned.fit(x, y, epochs=5, batch_size=64, verbose=0, callbacks=kc.callbacks(scheme))
    return model, kc.strip(pruned)


def latency(result, kernels):
    if kernels == "default" and result.kernels == "builtin":
        return None
    return te.benchmark(result, num_threads=1, runs=RUNS, warmup=WARMUP, kernels=kernels).p50_ms


def measure(name, build, shape, data, directory):
    x, y, x_val, y_val = data
    x, x_val = x.reshape(-1, *shape), x_val.reshape(-1, *shape)
    keras.utils.set_random_seed(0)
    dense, pruned = train_and_prune(build(), x, y)
    calibration = x[:300]
    variants = [
        ("dense float", dense, {"sparse": False}),
        ("pruned float sparse", pruned, {"sparse": True}),
        (
            "pruned int8",
            pruned,
            {"quantize": "int8", "representative_data": calibration, "sparse": False},
        ),
        (
            "pruned int8 sparse",
            pruned,
            {
                "quantize": "int8",
                "representative_data": calibration,
                "sparse": True,
                "kernels": "builtin",
            },
        ),
    ]
    rows = []
    for label, model, options in variants:
        path = os.path.join(directory, f"{name}_{label.replace(' ', '_')}.tflite")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", te.ExportWarning)
            result = te.export(model, path, **options)
        kernels = result.kernels
        accuracy = float(np.mean(te.predict(result, x_val, kernels=kernels).argmax(-1) == y_val))
        rows.append(
            {
                "model": name,
                "variant": label,
                "bytes": result.bytes,
                "gzip": result.gzip_bytes,
                "sparse": result.sparse_tensors,
                "xnnpack": latency(result, "default"),
                "builtin": latency(result, "builtin"),
                "accuracy": accuracy,
            }
        )
    return rows


def ratio(value, reference):
    return "n/a" if value is None or reference is None else f"{value / reference:.2f}x"


def ms(value):
    return "n/a" if value is None else f"{value * 1000:.1f}"


def table(rows):
    header = (
        "model",
        "variant",
        "bytes",
        "gzip",
        "sparse",
        "size vs dense",
        "p50 xnnpack us",
        "vs dense",
        "p50 builtin us",
        "vs dense",
        "accuracy",
    )
    lines = []
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["variant"] == "dense float")
        lines.append(
            (
                row["model"],
                row["variant"],
                str(row["bytes"]),
                str(row["gzip"]),
                str(row["sparse"]),
                ratio(row["bytes"], base["bytes"]),
                ms(row["xnnpack"]),
                ratio(row["xnnpack"], base["xnnpack"]),
                ms(row["builtin"]),
                ratio(row["builtin"], base["builtin"]),
                f"{row['accuracy']:.4f}",
            )
        )
    widths = [max(len(r[c]) for r in [header, *lines]) for c in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def launch_tfmot(stderr):
    """Starts the tfmot twin early (it imports TensorFlow while the Keras side trains)."""
    if importlib.util.find_spec("tensorflow_model_optimization") is None:
        return None
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_BACKEND", None)
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "_tfmot_twin.py"), "export", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )


def tfmot_results(process, stderr):
    stdout = process.stdout.read()
    if process.wait() != 0:
        stderr.seek(0)
        sys.stderr.write(stderr.read()[-3000:])
        raise RuntimeError(f"the tfmot twin failed with exit code {process.returncode}")
    return json.loads(stdout.strip().splitlines()[-1])["results"]


def goal(directory):
    """Rows of the size-goal table: kc and tfmot LeNet-300-100 int8 files over densities."""
    x, y, x_val, y_val = _digits.load("lenet300")
    stderr = tempfile.TemporaryFile(mode="w+")
    twin = launch_tfmot(stderr)
    keras.utils.set_random_seed(0)
    dense = _digits.build("lenet300", keras)
    _digits.compile_model(dense, keras)
    dense.fit(x, y, epochs=GOAL_DENSE_EPOCHS, batch_size=64, verbose=0)
    weights = os.path.join(directory, "dense.npz")
    np.savez(weights, *dense.get_weights())

    def file_row(method, density, result, model):
        accuracy = float(np.mean(te.predict(result, x_val).argmax(-1) == y_val))
        return {
            "method": method,
            "density": density,
            "bytes": result.bytes,
            "gzip": result.gzip_bytes,
            "accuracy": accuracy,
            "keras_accuracy": _digits.accuracy(model, x_val, y_val),
        }

    reference = file_row(
        "dense float",
        1.0,
        te.export(dense, os.path.join(directory, "goal_dense.tflite"), sparse=False),
        dense,
    )
    if twin is not None:
        jobs = [
            {"method": method, "density": d, "seed": 0, "weights": weights}
            for method in ("ptq", "pqat")
            for d in GOAL_DENSITIES
        ]
        config = {
            "model": "lenet300",
            "jobs": jobs,
            "epochs": GOAL_EPOCHS,
            "batch_size": 64,
            "qat_epochs": 2,
            **GOAL_SCHEDULE,
        }
        twin.stdin.write(json.dumps(config))
        twin.stdin.close()
    rows = []
    for dtype in ("int8", "int4"):
        for density in GOAL_DENSITIES:
            keras.utils.set_random_seed(0)
            model = _digits.build("lenet300", keras)
            model.set_weights(dense.get_weights())
            schedule = kc.PolynomialDecay(
                begin_step=GOAL_SCHEDULE["begin_fraction"],
                end_step=GOAL_SCHEDULE["end_fraction"],
                frequency=GOAL_SCHEDULE["frequency"],
            )
            scheme = kc.Compose([kc.Prune(density, schedule=schedule), kc.Quantize(dtype)])
            qat = scheme.apply(model)
            _digits.compile_model(qat, keras)
            qat.fit(
                x, y, epochs=GOAL_EPOCHS, batch_size=64, verbose=0, callbacks=kc.callbacks(scheme)
            )
            path = os.path.join(directory, f"goal_{dtype}_{density}.tflite")
            result = te.export(kc.strip(qat), path, quantize="int8", sparse=False)
            rows.append(file_row(f"kc prune+{dtype} QAT", density, result, qat))
    if twin is not None:
        names = {"ptq": "tfmot prune+PTQ int8", "pqat": "tfmot PQAT int8"}
        for job, result in zip(jobs, tfmot_results(twin, stderr), strict=True):
            rows.append(
                {
                    "method": names[job["method"]],
                    "density": job["density"],
                    "bytes": result["bytes"],
                    "gzip": result["gzip"],
                    "accuracy": result["acc"],
                    "keras_accuracy": result["keras_acc"],
                }
            )
    return reference, rows


def goal_table(reference, rows):
    floor = reference["accuracy"] - GOAL_DROP
    header = (
        "method",
        "density",
        "bytes",
        "gzip",
        "gzip vs dense float",
        "Keras acc",
        "file acc",
        "drop",
    )
    lines = [
        (
            row["method"],
            f"{row['density']:.2f}",
            str(row["bytes"]),
            str(row["gzip"]),
            f"{reference['gzip'] / row['gzip']:.1f}x smaller",
            f"{row['keras_accuracy']:.4f}",
            f"{row['accuracy']:.4f}",
            f"{100 * (reference['accuracy'] - row['accuracy']):+.1f} pt",
        )
        for row in [reference, *rows]
    ]
    widths = [max(len(r[c]) for r in [header, *lines]) for c in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.append(
        f"\nSmallest file within {100 * GOAL_DROP:.0f} point of dense float "
        f"(accuracy >= {floor:.4f}), per method:"
    )
    for method in dict.fromkeys(row["method"] for row in rows):
        ok = [r for r in rows if r["method"] == method and r["accuracy"] >= floor - 1e-9]
        if ok:
            best = min(ok, key=lambda r: r["gzip"])
            out.append(
                f"  {method:22s} density {best['density']:.2f}: {best['gzip']} gzip bytes, "
                f"{reference['gzip'] / best['gzip']:.1f}x smaller, accuracy "
                f"{best['accuracy']:.4f}"
            )
        else:
            out.append(f"  {method:22s} no density on the grid stays within the floor")
    return "\n".join(out)


def main():
    start = time.perf_counter()
    data = digits()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", te.ExportWarning)
            reference, goal_rows = goal(directory)
        rows += measure("lenet-300-100", lenet, (64,), data, directory)
        rows += measure("small-cnn", small_cnn, (8, 8, 1), data, directory)
    print(table(rows))
    print()
    print(goal_table(reference, goal_rows))
    print(
        f"\nbytes: file size; gzip: gzip -9 size; sparse: tensors in sparse encoding; p50 of "
        f"{RUNS} invoke() calls, 1 thread, ai-edge-litert; accuracy on 397 held-out digits. "
        f"Total {time.perf_counter() - start:.0f} s, Keras backend {keras.backend.backend()}."
    )


if __name__ == "__main__":
    main()
