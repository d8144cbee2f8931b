"""Shared data, models and timing helpers for the benchmark scripts.

This module imports only numpy and scikit-learn at import time, so both sides
of a comparison can use it: the Keras 3 side (`import keras`) and the
tfmot side (`import tf_keras`), which must run in separate processes because
importing tensorflow_model_optimization switches `tf.keras` to `tf_keras`
for the whole process. Model builders and the timing callback take the
Keras module (`keras` or `tf_keras`) as an argument.
"""

import math
import time

import numpy as np

SPLIT_SEED = 0  # the train/val split is fixed; seeds only change init and shuffling
VAL_FRACTION = 0.25
MODELS = ("lenet300", "cnn")


def load(model_name="lenet300"):
    """The digits split: `(x_train, y_train, x_val, y_val)`, pixels scaled to [0, 1].

    Stratified 75/25 split with `random_state=0`. `x` is `(n, 64)` for LeNet
    and `(n, 8, 8, 1)` for the CNN.
    """
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=VAL_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    if model_name == "cnn":
        x_train = x_train.reshape(-1, 8, 8, 1)
        x_val = x_val.reshape(-1, 8, 8, 1)
    return x_train, y_train, x_val, y_val


def build(model_name, K):
    """The benchmark architecture, built with the Keras module `K` (keras or tf_keras).

    Both modules give the same layer order and weight shapes, so
    `model.get_weights()` of one loads into the other with `set_weights`.
    """
    layers = K.layers
    if model_name == "lenet300":
        return K.Sequential(
            [
                K.Input(shape=(64,)),
                layers.Dense(300, activation="relu", name="fc1"),
                layers.Dense(100, activation="relu", name="fc2"),
                layers.Dense(10, name="logits"),
            ],
            name="lenet300",
        )
    if model_name == "cnn":
        return K.Sequential(
            [
                K.Input(shape=(8, 8, 1)),
                layers.Conv2D(16, 3, activation="relu", name="conv1"),
                layers.Conv2D(32, 3, activation="relu", name="conv2"),
                layers.Flatten(name="flatten"),
                layers.Dense(64, activation="relu", name="fc1"),
                layers.Dense(10, name="logits"),
            ],
            name="cnn",
        )
    raise ValueError(f"Unknown model {model_name!r}; expected one of {MODELS}.")


def compile_model(model, K, learning_rate=1e-3):
    """Adam + sparse categorical cross-entropy on logits, with accuracy: same on both sides."""
    model.compile(
        optimizer=K.optimizers.Adam(learning_rate=learning_rate),
        loss=K.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def accuracy(model, x, y, batch_size=512):
    """Top-1 accuracy from direct model calls (no compile, no traced evaluate function)."""
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size], training=False)
        logits = np.asarray(logits.numpy() if hasattr(logits, "numpy") else logits)
        correct += int(np.sum(np.argmax(logits, axis=-1) == y[i : i + batch_size]))
    return correct / len(x)


def steps_per_epoch(n, batch_size):
    return math.ceil(n / batch_size)


def kernel_density(model):
    """Nonzero fraction over the kernels (Dense/Conv) of a plain or stripped model.

    Works for Keras 3 and tf_keras models: counts the weights named `kernel`.
    """
    nonzeros = total = 0
    for layer in model.layers:
        for w in layer.weights:
            name = w.name.split("/")[-1].split(":")[0]
            if name == "kernel":
                a = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
                nonzeros += int(np.count_nonzero(a))
                total += a.size
    return nonzeros / total if total else 1.0


def tile_for_timing(x, y, batch_size, target_steps=80):
    """Repeats the training set so that one epoch has about `target_steps` steps.

    Digits is small (1347 training images): 22 steps per epoch at batch size 64
    would make epochs too short to time on a noisy machine.
    """
    reps = max(1, math.ceil(target_steps * batch_size / len(x)))
    return np.concatenate([x] * reps), np.concatenate([y] * reps)


def make_timer(K):
    """A callback class (on the Keras module `K`) that timestamps every train step.

    It only overrides `on_train_batch_begin` and `on_epoch_end`, and never
    touches `self.model`: a callback that overrides `on_train_batch_end`
    would turn off Keras 3's asynchronous batch-end dispatch, and on JAX
    reading `self.model` forces a state sync; either would slow the step
    being measured.

    After `fit`, `epochs` holds per epoch `(seconds from the first step's
    begin to the epoch's end, steps, [begin-to-begin step intervals])`.
    """

    class StepTimer(K.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []
            self._begins = []

        def on_epoch_begin(self, epoch, logs=None):
            self._begins = []

        def on_train_batch_begin(self, batch, logs=None):
            self._begins.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            end = time.perf_counter()
            b = self._begins
            intervals = [t1 - t0 for t0, t1 in zip(b, b[1:], strict=False)]
            self.epochs.append((end - b[0], len(b), intervals))

    return StepTimer


def summarize_timer(timer, warmup_epochs=1):
    """Per timed epoch, in ms: `(mean step time, median step interval)`; warm-up epochs dropped."""
    kept = timer.epochs[warmup_epochs:]
    epoch_means = [1e3 * seconds / steps for seconds, steps, _ in kept]
    step_medians = [1e3 * median(intervals) for _, _, intervals in kept]
    return epoch_means, step_medians


def median(values):
    return float(np.median(values)) if len(values) else float("nan")


def time_variants(variants, model_name, batch_size, epochs, K, seed=0):
    """Times train steps of several model variants, alternating epoch by epoch.

    Each variant's model is built and compiled once, fitted for one untimed
    warm-up epoch (tracing), then the variants take turns: one `fit(epochs=1)`
    each, `epochs` times. Epoch `i` of every variant therefore ran at nearly
    the same moment, so a change in the machine's load hits them alike and
    ratios can be taken epoch by epoch.

    Args:
        variants: `{name: make}`, where `make(model_name, total_steps)`
            returns `(compiled_model, callbacks)`; `total_steps` is the number
            of steps the model will be trained for (warm-up included), for
            pruning schedules given in steps.
        model_name: `"lenet300"` or `"cnn"`.
        batch_size: the fit's batch size.
        epochs: timed epochs per variant.
        K: the Keras module (`keras` or `tf_keras`).

    Returns:
        `{name: {"epoch_ms": [per timed epoch: epoch time / steps],
        "step_ms": [per timed epoch: median begin-to-begin step interval],
        "model": the model}}`.
    """
    x, y, _, _ = load(model_name)
    x, y = tile_for_timing(x, y, batch_size)
    total_steps = (epochs + 1) * steps_per_epoch(len(x), batch_size)
    Timer = make_timer(K)
    K.utils.set_random_seed(seed)
    built = {name: make(model_name, total_steps) for name, make in variants.items()}
    timers = {name: Timer() for name in variants}
    for _ in range(epochs + 1):
        for name, (model, callbacks) in built.items():
            # The timer goes first so that its batch-begin stamp precedes the
            # pruning callbacks' batch-begin work, which is then part of the step.
            model.fit(
                x,
                y,
                batch_size=batch_size,
                epochs=1,
                verbose=0,
                callbacks=[timers[name], *callbacks],
            )
    out = {}
    for name, timer in timers.items():
        epoch_ms, step_ms = summarize_timer(timer, warmup_epochs=1)
        out[name] = {
            "epoch_ms": [round(v, 4) for v in epoch_ms],
            "step_ms": [round(v, 4) for v in step_ms],
            "model": built[name][0],
        }
    return out


def run_json(args, env=None, timeout=None):
    """Runs `python args...` in a subprocess and returns the JSON on its last stdout line.

    stderr (TensorFlow's logs) is passed through only when the process fails.
    """
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    full_env = dict(os.environ)
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        raise RuntimeError(f"{' '.join(args[:2])} failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])
