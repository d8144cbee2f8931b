"""Permuted block-diagonal pruning (MPDCompress, `kc.BlockDiagonalPrune`) vs dense and unstructured.

For LeNet-300-100 and a wide MLP (64 -> 1024 -> 1024 -> 10), trained on scikit-learn's
digits (20 epochs), the hidden layers are pruned to 8 blocks (density 1/8; the 10-class
logits layer stays dense) and fine-tuned (20 epochs, Adam 3e-3 with cosine decay); for
comparison, unstructured magnitude pruning (`kc.Prune`) at the same density (1/8 of the
same layers) is fine-tuned alike. Rows:

- dense: the trained model
- prune masked: `kc.Prune(density=1/8)`, stripped (zeros kept)
- blockdiag masked: `kc.BlockDiagonalPrune(blocks=8)`, stripped (zeros kept)
- blockdiag shrunk: `kc.strip(..., shrink=True)`, the hidden layers as `kc.BlockDense`

Columns: validation accuracy after fine-tuning (450 digits), parameters (nonzero ones for
masked models; for shrunk ones all stored ones, with the zeros that pad uneven blocks),
LiteRT p50 latency (float32, batch 1, 1 thread, XNNPACK; the median of three interleaved
rounds of 300 runs) and Keras inference throughput at batch 64 (`predict_on_batch`,
samples/s, median of seven interleaved rounds) on the JAX backend, in a subprocess. Ratios
are to the dense model of the same run. The title gives the largest difference between the
shrunk and the masked model's logits, and the largest logit.

A second table times the forms a block layer can take in LiteRT (two 1024 -> 1024 layers,
8 blocks, random weights): a dense layer, `einsum("nki,kio->nko")` (what `kc.BlockDense`
uses), a batched `matmul` on `(blocks, n, inputs)` and a grouped 1x1 `Conv2D`.

Run: `KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/blocks.py`
(`--epochs`, `--fine-tune-epochs`, `--models`; about 3 minutes on 2 shared cores).
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _digits  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_condensa as kc  # noqa: E402
from keras_condensa.block_dense import BlockDense  # noqa: E402
from keras_condensa.operators.block_diagonal import BlockDiagonalPrune  # noqa: E402

BLOCKS = 8
FINE_TUNE_RATE = 3e-3  # Adam, cosine decay to 0 (a constant 1e-3 left both ~1 point lower)
ROUNDS = 3


def build(model_name):
    if model_name == "lenet300":
        return _digits.build("lenet300", keras)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(1024, activation="relu", name="fc1"),
            keras.layers.Dense(1024, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="wide",
    )


def fine_tune(scheme, dense, data, epochs):
    x_train, y_train, _, _ = data
    pruned = scheme.apply(dense)
    steps = epochs * _digits.steps_per_epoch(len(x_train), 32)
    schedule = keras.optimizers.schedules.CosineDecay(FINE_TUNE_RATE, steps)
    _digits.compile_model(pruned, keras, learning_rate=schedule)
    pruned.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    return pruned


def nonzero_params(model):
    return sum(int(np.count_nonzero(ops.convert_to_numpy(w))) for w in model.weights)


def litert_p50s(models, directory):
    import tflite_export as te  # noqa: PLC0415 - TensorFlow only

    paths = {}
    for name, model in models.items():
        paths[name] = os.path.join(directory, f"{name.replace(' ', '_')}.tflite")
        te.export(model, paths[name])
    rounds = {name: [] for name in models}
    for _ in range(ROUNDS):  # interleaved: a change in load hits every model alike
        for name, path in paths.items():
            rounds[name].append(te.benchmark(path, num_threads=1, runs=300, warmup=30).p50_ms)
    return {name: float(np.median(v)) for name, v in rounds.items()}


def jax_throughput(paths, batch_size=64, seconds=0.3, rounds=7):
    """Samples/s of `predict_on_batch` per saved model (run with KERAS_BACKEND=jax)."""
    x = _digits.load()[0][:batch_size]
    models = {name: keras.saving.load_model(path, compile=False) for name, path in paths.items()}
    for model in models.values():
        for _ in range(3):
            model.predict_on_batch(x)
    results = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                model.predict_on_batch(x)
                calls += 1
            results[name].append(calls * batch_size / (time.perf_counter() - start))
    return {name: float(np.median(v)) for name, v in results.items()}


def run(model_name, epochs, fine_tune_epochs, directory):
    data = _digits.load()
    x_train, y_train, x_val, y_val = data
    keras.utils.set_random_seed(0)
    dense = build(model_name)
    _digits.compile_model(dense, keras)
    dense.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    excluded = ["logits"]
    pruned = fine_tune(kc.Prune(1 / BLOCKS, exclude=excluded), dense, data, fine_tune_epochs)
    blocked = fine_tune(
        BlockDiagonalPrune(BLOCKS, seed=0, exclude=excluded), dense, data, fine_tune_epochs
    )
    models = {
        "dense": dense,
        "prune masked": kc.strip(pruned),
        "blockdiag masked": kc.strip(blocked),
        "blockdiag shrunk": kc.strip(blocked, shrink=True),
    }
    masked_logits = np.asarray(models["blockdiag masked"](x_val))
    shrunk_error = (
        float(np.max(np.abs(np.asarray(models["blockdiag shrunk"](x_val)) - masked_logits))),
        float(np.max(np.abs(masked_logits))),
    )
    results = {
        name: {
            "acc": _digits.accuracy(m, x_val, y_val),
            "params": nonzero_params(m) if "masked" in name else m.count_params(),
        }
        for name, m in models.items()
    }
    for name, p50 in litert_p50s(models, directory).items():
        results[name]["litert"] = p50
    paths = {}
    for name, model in models.items():
        paths[name] = os.path.join(directory, f"{model_name}_{name.replace(' ', '_')}.keras")
        model.save(paths[name])
    throughput = _digits.run_json(
        [os.path.abspath(__file__), "--jax-throughput", json.dumps(paths)],
        env={"KERAS_BACKEND": "jax"},
    )
    for name, value in throughput.items():
        results[name]["tp64"] = value
    return results, shrunk_error


def table(model_name, results, shrunk_error):
    base = results["dense"]
    lines = [
        f"\n### {model_name}, {BLOCKS} blocks (shrunk vs masked: max |error| "
        f"{shrunk_error[0]:.1e}, max |logit| {shrunk_error[1]:.1f})",
        "",
        "| model | val acc | params | LiteRT p50 ms (vs dense) | JAX batch-64 samples/s "
        "(vs dense) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['acc']:.4f} | {r['params']:,} "
            f"| {r['litert']:.4f} ({r['litert'] / base['litert']:.2f}x) "
            f"| {r['tp64']:,.0f} ({r['tp64'] / base['tp64']:.2f}x) |"
        )
    return "\n".join(lines)


class _BatchedMatmul(keras.layers.Layer):
    """The batched-matmul form of a block layer: `(blocks, n, inputs) @ (blocks, inputs, units)`."""

    def __init__(self, blocks, width, **kwargs):
        super().__init__(**kwargs)
        self.blocks, self.width = blocks, width

    def build(self, input_shape):
        size = self.width // self.blocks
        self.kernel = self.add_weight(shape=(self.blocks, size, size))
        self.bias = self.add_weight(shape=(self.width,), initializer="zeros")

    def call(self, x):
        x = ops.transpose(ops.reshape(x, (-1, self.blocks, self.width // self.blocks)), (1, 0, 2))
        y = ops.transpose(ops.matmul(x, self.kernel), (1, 0, 2))
        return ops.relu(ops.reshape(y, (-1, self.width)) + self.bias)


def form_model(form, width=1024):
    size = width // BLOCKS
    inputs = keras.Input((width,))
    h = inputs
    if form == "grouped conv":
        h = keras.layers.Reshape((1, 1, width))(h)
    for _ in range(2):
        if form == "dense":
            h = keras.layers.Dense(width, activation="relu")(h)
        elif form == "einsum (kc.BlockDense)":
            h = BlockDense(BLOCKS, size, size, activation="relu")(h)
        elif form == "batched matmul":
            h = _BatchedMatmul(BLOCKS, width)(h)
        else:
            h = keras.layers.Conv2D(width, 1, groups=BLOCKS, activation="relu")(h)
    if form == "grouped conv":
        h = keras.layers.Reshape((width,))(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def forms_table(directory):
    keras.utils.set_random_seed(0)
    forms = ("dense", "einsum (kc.BlockDense)", "batched matmul", "grouped conv")
    p50 = litert_p50s({form: form_model(form) for form in forms}, directory)
    lines = [
        f"\n### Block-layer forms in LiteRT: 2 x (1024 -> 1024), {BLOCKS} blocks, "
        "batch 1, 1 thread",
        "",
        "| form | LiteRT p50 ms | vs dense |",
        "|---|---|---|",
    ]
    for form in forms:
        lines.append(f"| {form} | {p50[form]:.4f} | {p50[form] / p50['dense']:.3f}x |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--fine-tune-epochs", type=int, default=20)
    parser.add_argument("--models", default="lenet300,wide")
    parser.add_argument("--jax-throughput", help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args()
    if args.jax_throughput:
        print(json.dumps(jax_throughput(json.loads(args.jax_throughput))))
        return
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, no GPU used")
    with tempfile.TemporaryDirectory() as directory:
        for model_name in args.models.split(","):
            print(
                table(model_name, *run(model_name, args.epochs, args.fine_tune_epochs, directory))
            )
        print(forms_table(directory), flush=True)


if __name__ == "__main__":
    main()
