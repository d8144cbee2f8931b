"""Keras inference and training time of dense, masked, shrunk and block-diagonal models (JAX).

Times, on whatever device JAX computes on (the CPU here, a CUDA GPU on a GPU
machine), for two models with random weights:

- **wide**: the wide MLP of `benchmarks/blocks.py`, 64 -> 1024 -> 1024 -> 10
  on inputs of the digits' shape (64 features);
- **resnet**: a small ResNet-style CNN on 32x32x3 inputs: a stride-2 stem and
  two bottleneck blocks (1x1 -> 3x3 -> 1x1 convolutions with BatchNormalization,
  residual `Add`; the second downsamples through a 1x1 projection), global
  average pooling, a 128-unit Dense layer and 10 logits.

Rows, each built from the same dense model:

- dense: the model itself;
- masked: `kc.Prune(density=0.1)` applied, wrappers on (the mask is multiplied
  into the weights at every call, what fine-tuning runs);
- shrunk: `kc.NeuronPrune` (wide) or `kc.FilterPrune` (resnet) at density 0.5
  applied, stripped and `kc.shrink`-ed: a smaller dense model;
- blockdiag: `kc.BlockDiagonalPrune(blocks=8)` applied (the logits layer left
  dense), stripped and shrunk: its Dense and 1x1 convolution layers become
  `kc.BlockDense` (the resnet's 3x3 convolutions stay dense).

Columns: p50 milliseconds per batch of `predict_on_batch` at batch 1 and at
batch 256, and of a training step (`train_on_batch`, Adam, sparse categorical
cross-entropy) at batch 256, each with its ratio to the dense model's time
(below 1 is faster). Both calls are jitted by Keras and return NumPy arrays, so
each timed call waits for the device. Data are random, of the right shapes:
accuracy is not the point, time is. After warm-up calls (compilation), the
variants take turns for `--rounds` rounds; in a round each runs every
measurement for at least `--seconds` (and 3 calls). A time is the median over
rounds of the round's median call; a ratio is the median over rounds of the
round's ratio to dense, so a change in the machine's load hits both sides.
The last column is the largest difference between the logits of the shrunk
model and of the masked model it came from (they compute the same function).

The script sets `KERAS_BACKEND=jax` before importing Keras and needs only JAX,
Keras and keras_condensa. Where TensorFlow and scikit-learn are installed, Keras
imports them on its own (optional integrations), so the script blocks both
first (`sys.modules[name] = None`: an import fails as if the package were
missing) and runs as it would on a GPU machine without them; it says at the
end whether TensorFlow got imported.

Run: `KERAS_BACKEND=jax .venv/bin/python benchmarks/gpu.py` (`--models`,
`--rounds`, `--seconds`; about 4 minutes on 2 shared CPU cores, most of it the resnet).
"""

import argparse
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported
# Run as on a GPU machine without TensorFlow or scikit-learn: Keras imports them where they are
# installed (every `get_config` checks for `tf.TensorShape`, `set_random_seed` seeds TensorFlow),
# and a None entry makes those imports fail the way a missing package does, which Keras expects.
# Code that needed them would fail here too.
for _missing in ("tensorflow", "sklearn"):
    sys.modules.setdefault(_missing, None)

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_condensa as kc  # noqa: E402
from keras_condensa.bench import device_name  # noqa: E402

BATCH = 256
BLOCKS = 8
MASK_DENSITY = 0.1
CHANNEL_DENSITY = 0.5
MIN_CALLS = 3
MAX_CALLS = 500
INPUT_SHAPES = {"wide": (64,), "resnet": (32, 32, 3)}


def build_wide():
    return keras.Sequential(
        [
            keras.Input(INPUT_SHAPES["wide"]),
            keras.layers.Dense(1024, activation="relu", name="fc1"),
            keras.layers.Dense(1024, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="wide",
    )


def _conv_bn(h, filters, kernel, name, strides=1, relu=True):
    h = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", name=name)(h)
    h = keras.layers.BatchNormalization(name=f"{name}_bn")(h)
    return keras.layers.ReLU()(h) if relu else h


def build_resnet():
    inputs = keras.Input(INPUT_SHAPES["resnet"])
    h = _conv_bn(inputs, 32, 3, "stem", strides=2)  # 16x16x32
    for b, (width, strides) in enumerate(((32, 1), (64, 2))):
        shortcut = h
        if strides != 1 or width != h.shape[-1]:
            shortcut = _conv_bn(h, width, 1, f"b{b}_proj", strides, relu=False)
        r = _conv_bn(h, width, 1, f"b{b}_reduce")
        r = _conv_bn(r, width, 3, f"b{b}_conv", strides)
        r = _conv_bn(r, width, 1, f"b{b}_expand", relu=False)
        h = keras.layers.ReLU()(keras.layers.Add(name=f"b{b}_add")([shortcut, r]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(128, activation="relu", name="fc")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="resnet")


def variants(model_name):
    """`({row: model}, {row: max |shrunk - masked| logits error or None}, x)`."""
    keras.utils.set_random_seed(0)
    dense = build_wide() if model_name == "wide" else build_resnet()
    x = np.random.default_rng(0).uniform(size=(BATCH, *INPUT_SHAPES[model_name]))
    x = x.astype("float32")
    channel = kc.NeuronPrune if model_name == "wide" else kc.FilterPrune
    masked_channels = kc.strip(channel(CHANNEL_DENSITY).apply(dense))
    masked_blocks = kc.strip(kc.BlockDiagonalPrune(BLOCKS, seed=0, exclude=["logits"]).apply(dense))
    models = {
        "dense": dense,
        "masked": kc.Prune(MASK_DENSITY).apply(dense),
        "shrunk": kc.shrink(masked_channels),
        "blockdiag": kc.shrink(masked_blocks),
    }
    errors = {"dense": None, "masked": None}
    for row, source in (("shrunk", masked_channels), ("blockdiag", masked_blocks)):
        errors[row] = float(np.max(np.abs(np.asarray(models[row](x)) - np.asarray(source(x)))))
    for model in models.values():
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    return models, errors, x


def parameters(row, model, dense):
    """Stored parameters; for the masked row, those pruning did not zero (vs the dense model)."""
    if row != "masked":
        return model.count_params()
    pairs = zip(dense.weights, kc.strip(model).weights, strict=True)
    removed = sum(int(np.sum((np.asarray(s) == 0) & (np.asarray(d) != 0))) for d, s in pairs)
    return dense.count_params() - removed


def measurements(model, x, y):
    """`{column: call}`: each call runs one batch and returns NumPy (waits for the device)."""
    return {
        "b1": lambda: np.asarray(model.predict_on_batch(x[:1])),
        "b256": lambda: np.asarray(model.predict_on_batch(x)),
        "train": lambda: model.train_on_batch(x, y),
    }


def round_median_ms(call, seconds):
    """Median ms per call over at least `MIN_CALLS` calls and `seconds` of calling."""
    times = []
    start = time.perf_counter()
    while len(times) < MIN_CALLS or (
        time.perf_counter() - start < seconds and len(times) < MAX_CALLS
    ):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def time_model(model_name, rounds, seconds):
    models, errors, x = variants(model_name)
    dense = models["dense"]
    params = {row: parameters(row, model, dense) for row, model in models.items()}
    y = np.random.default_rng(1).integers(0, 10, size=BATCH).astype("int32")
    calls = {row: measurements(model, x, y) for row, model in models.items()}
    for row_calls in calls.values():  # warm-up: compiles every jitted function
        for call in row_calls.values():
            for _ in range(2):
                call()
    per_round = {row: {column: [] for column in calls[row]} for row in calls}
    for _ in range(rounds):  # interleaved: a change in load hits every row alike
        for row, row_calls in calls.items():
            for column, call in row_calls.items():
                per_round[row][column].append(round_median_ms(call, seconds))
    results = {}
    for row, columns in per_round.items():
        results[row] = {"params": params[row], "error": errors[row]}
        for column, times in columns.items():
            base = per_round["dense"][column]
            ratios = [t / b for t, b in zip(times, base, strict=True)]
            results[row][column] = (float(np.median(times)), float(np.median(ratios)))
    return results


def table(model_name, results):
    lines = [
        f"\n### {model_name}",
        "",
        "| model | params | batch 1 p50 ms | vs dense | batch 256 p50 ms | vs dense "
        "| train step b256 p50 ms | vs dense | max abs error vs masked |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, r in results.items():
        cells = [row, f"{r['params']:,}"]
        for column in ("b1", "b256", "train"):
            ms, ratio = r[column]
            cells += [f"{ms:.3f}", f"{ratio:.2f}x"]
        cells.append("" if r["error"] is None else f"{r['error']:.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="wide,resnet")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.3, help="least time per measurement")
    args = parser.parse_args()
    models = args.models.split(",")
    unknown = sorted(set(models) - set(INPUT_SHAPES))
    if unknown:
        parser.error(f"unknown --models {unknown}; expected names from {sorted(INPUT_SHAPES)}")
    print(
        f"device: {device_name()}\n"
        f"keras {keras.__version__}, backend {keras.backend.backend()}, jax {jax.__version__}, "
        f"jax devices {[str(d) for d in jax.devices()]}"
    )
    print(
        f"p50 ms per batch (median over {args.rounds} interleaved rounds of each round's median); "
        "vs dense: median of per-round time ratios (below 1 is faster)"
    )
    for model_name in models:
        start = time.perf_counter()
        results = time_model(model_name, args.rounds, args.seconds)
        print(table(model_name, results))
        print(f"\n({time.perf_counter() - start:.0f} s)", flush=True)
    imported = sys.modules.get("tensorflow") is not None
    print(
        f"\nTensorFlow imported: {'yes' if imported else 'no'} (blocked at start, as on a machine "
        "without it; the run needed neither TensorFlow nor scikit-learn)"
    )


if __name__ == "__main__":
    main()
