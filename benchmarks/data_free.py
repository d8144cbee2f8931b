"""Data-free compression: synthetic inputs from BatchNorm statistics vs real data vs noise.

A BatchNorm CNN (six 3x3 convolutions of 32 filters, each followed by BatchNorm and ReLU,
then a Dense classifier; 67,818 parameters) is trained on scikit-learn's digits (8x8x1 in
[0, 1], 1347 training / 450 validation images). Calibration and recovery data come from:

- real: the training images (their labels are not used: see Table 2);
- synthetic: `kc.data_free.synthesize(model, method=...)`, Gaussian noise optimized so that
  every BatchNorm layer's batch statistics match its running ones (`"batchnorm"`: Haroush et
  al. 2020, ZeroQ), without and with the known input range (`input_range=(0, 1)`), and with
  a class target per sample added (`"batchnorm+inception"`); `--n` inputs, `--steps` steps;
- noise: uniform in the input range [0, 1], and standard normal (`method="gaussian"`).

Table 1, int8 post-training quantization: `tflite_export.export(model, quantize="int8",
representative_data=...)` calibrated on each source (the exporter uses at most 500 samples);
accuracy of the .tflite file (LiteRT, run sample by sample) on the validation images and its
mean absolute logit error against the float model (x: ratio to real calibration), plus how
far each source's BatchNorm statistics are from the running ones (KL summed over the six
BatchNorms, batches of 128; what `"batchnorm"` minimizes).

Table 2, structured pruning with data-free recovery: 50% of the filters of every convolution
removed at once (`kc.FilterPrune(0.5)`, BatchNorms follow), then `kc.distill` with the dense
model as teacher (temperature 4, alpha 0.9; labels = the teacher's argmax, the same recipe
for every source, so none uses the real labels), then `kc.strip(..., shrink=True)`.
Differences are to the dense model (Table 2) or to real calibration (Table 1) of the same run.

Run: `KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/data_free.py`
(`--epochs`, `--recovery-epochs`, `--n`, `--steps`, `--seed`; about 4.5 minutes on 2 shared
cores, most of it synthesis).
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _digits  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_condensa as kc  # noqa: E402
import keras_condensa.data_free  # noqa: E402, F401 - until the package exports it
import tflite_export as te  # noqa: E402
from keras_condensa import batchnorm_taps  # noqa: E402


def bn_cnn(depth=6, width=32):
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    h = inputs
    for i in range(depth):
        h = layers.Conv2D(width, 3, padding="same", name=f"conv{i}")(h)
        h = layers.ReLU()(layers.BatchNormalization(name=f"bn{i}")(h))
    h = layers.Flatten()(h)
    outputs = layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name="bn_cnn")


def sources(model, x_train, n, steps, seed):
    """`{name: (inputs, seconds to make them)}` for every calibration/recovery source."""
    rng = np.random.default_rng(seed)
    out = {"real (training images)": (x_train, 0.0)}
    for method, input_range in (
        ("batchnorm", None),
        ("batchnorm", (0, 1)),
        ("batchnorm+inception", (0, 1)),
    ):
        start = time.perf_counter()
        x = kc.data_free.synthesize(
            model, n=n, method=method, steps=steps, seed=seed, input_range=input_range
        )
        where = "" if input_range is None else ", input_range=(0, 1)"
        out[f"synthetic: {method}{where}"] = (x, time.perf_counter() - start)
    out["uniform noise in [0, 1]"] = (rng.uniform(0, 1, (n, 8, 8, 1)).astype("float32"), 0.0)
    gaussian = kc.data_free.synthesize(model, n=n, method="gaussian", seed=seed)
    out["gaussian noise N(0, 1)"] = (gaussian, 0.0)
    return out


def batchnorm_gap(model, x, batch_size=128):
    """Sum over BatchNorm layers of the KL of batch vs running statistics, mean over batches."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    taps = keras.Model(model.inputs[0], [bn.input for bn in bns])
    gaps = []
    for i in range(0, len(x) - batch_size + 1, batch_size):
        features = taps(x[i : i + batch_size])
        pairs = zip(features, bns, strict=True)
        gaps.append(sum(float(batchnorm_taps.gaussian_divergence(h, bn)) for h, bn in pairs))
    return float(np.mean(gaps))


def ptq_table(model, data, x_val, y_val, directory):
    float_logits = np.asarray(model(x_val, training=False))
    float_accuracy = float(np.mean(np.argmax(float_logits, axis=-1) == y_val))
    rows = []
    for i, (name, (x, seconds)) in enumerate(data.items()):
        path = os.path.join(directory, f"ptq{i}.tflite")
        te.export(model, path, quantize="int8", representative_data=x)
        logits = te.predict(path, x_val)
        error = float(np.mean(np.abs(logits - float_logits)))
        accuracy = float(np.mean(np.argmax(logits, axis=-1) == y_val))
        rows.append((name, batchnorm_gap(model, x), accuracy, error, seconds))
    lines = [
        f"\nTable 1: int8 post-training quantization, LiteRT (float32 model: {float_accuracy:.4f})",
        "| calibration data | BN statistics gap (KL) | int8 accuracy (vs real) "
        "| mean abs logit error vs float (x real) | synthesis s |",
        "|---|---|---|---|---|",
    ]
    _, _, real_accuracy, real_error, _ = rows[0]
    for name, gap, accuracy, error, seconds in rows:
        lines.append(
            f"| {name} | {gap:.4f} | {accuracy:.4f} ({100 * (accuracy - real_accuracy):+.1f} pt) "
            f"| {error:.4f} ({error / real_error:.1f}x) | {seconds:.1f} |"
        )
    return "\n".join(lines)


def recover(dense, x, epochs, seed):
    """Prunes half the filters of `dense`, distills on `x` (teacher-labeled), shrinks."""
    scheme = kc.FilterPrune(density=0.5)
    pruned = scheme.apply(dense)
    if x is not None:
        keras.utils.set_random_seed(seed)
        _digits.compile_model(pruned, keras)
        labels = np.argmax(np.asarray(dense.predict(x, batch_size=256, verbose=0)), axis=-1)
        distiller = kc.distill(pruned, dense, temperature=4.0, alpha=0.9)
        distiller.fit(
            x, labels, epochs=epochs, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme)
        )
        pruned = distiller.student
    return kc.strip(pruned, shrink=True)


def prune_table(dense, data, x_val, y_val, epochs, seed):
    base = _digits.accuracy(dense, x_val, y_val)
    rows = [("dense", dense, base)]
    small = recover(dense, None, epochs, seed)
    rows.append(("50% filters pruned, no recovery", small, _digits.accuracy(small, x_val, y_val)))
    for name, (x, _) in data.items():
        small = recover(dense, x, epochs, seed)
        rows.append((f"recovered on {name}", small, _digits.accuracy(small, x_val, y_val)))
    lines = [
        f"\nTable 2: 50% of filters pruned, recovered by distillation ({epochs} epochs, "
        "teacher-labeled inputs)",
        "| model | accuracy (vs dense) | params |",
        "|---|---|---|",
    ]
    for name, model, accuracy in rows:
        lines.append(
            f"| {name} | {accuracy:.4f} ({100 * (accuracy - base):+.1f} pt) "
            f"| {model.count_params():,} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--recovery-epochs", type=int, default=15)
    parser.add_argument("--n", type=int, default=2048, help="synthetic/noise inputs")
    parser.add_argument("--steps", type=int, default=100, help="synthesis steps per batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, no GPU used")
    start = time.perf_counter()
    x_train, y_train, x_val, y_val = _digits.load("cnn")
    keras.utils.set_random_seed(args.seed)
    dense = bn_cnn()
    _digits.compile_model(dense, keras)
    dense.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    data = sources(dense, x_train, args.n, args.steps, args.seed)
    with tempfile.TemporaryDirectory() as directory:
        print(ptq_table(dense, data, x_val, y_val, directory), flush=True)
    print(prune_table(dense, data, x_val, y_val, args.recovery_epochs, args.seed), flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
