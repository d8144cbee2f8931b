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

Run: `.venv/bin/python benchmarks/export.py` (about a minute on 2 cores).
"""

import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_condensa as kc  # noqa: E402
import tflite_export as te  # noqa: E402

RUNS, WARMUP = 3000, 300
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


def main():
    start = time.perf_counter()
    data = digits()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        rows += measure("lenet-300-100", lenet, (64,), data, directory)
        rows += measure("small-cnn", small_cnn, (8, 8, 1), data, directory)
    print(table(rows))
    print(
        f"\nbytes: file size; gzip: gzip -9 size; sparse: tensors in sparse encoding; p50 of "
        f"{RUNS} invoke() calls, 1 thread, ai-edge-litert; accuracy on 397 held-out digits. "
        f"Total {time.perf_counter() - start:.0f} s, Keras backend {keras.backend.backend()}."
    )


if __name__ == "__main__":
    main()
