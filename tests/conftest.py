"""Shared test material: scikit-learn's bundled digits and small models (no downloads)."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_condensa as kc
from keras_condensa.demo import lenet_300_100  # noqa: F401 - the tests' LeNet is the demo's

# The slowest tests train for minutes in the PyTorch backend's eager loop (LeNet and KerasHub
# models): the TensorFlow and JAX legs run them, which keeps `make test` within CI's budget.
slow_on_torch = pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="minutes of training in PyTorch's eager loop; the TensorFlow and JAX legs run it",
)
# NumPy surgery over the hundreds of layers of a keras.applications model: seconds on the other
# backends, a minute under JAX (tracing each of them three times); the other legs run it.
slow_on_jax = pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="a minute of tracing under JAX; the TensorFlow and PyTorch legs run it",
)
# Tests whose work is the same on every backend (the search loop, the command line, NumPy
# surgery over hundreds of layers) or repeats a path another case of the same test covers:
# the TensorFlow leg runs them, the JAX and PyTorch legs keep the backend's own paths.
tensorflow_leg = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent work (or a repeat of a case run on every backend); the "
    "TensorFlow leg runs it",
)


@pytest.fixture(scope="session")
def digits():
    """(x_train, y_train, x_val, y_val): 8x8 digits scaled to [0, 1], flattened."""
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    x_train, x_val, y_train, y_val = train_test_split(
        x, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    return x_train, y_train, x_val, y_val


def small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(32, 3, activation="relu", name="conv2")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu", name="fc")(h)
    outputs = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name="small_cnn")


def compile_classifier(model, learning_rate=1e-3, optimizer=None):
    model.compile(
        optimizer or keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


@pytest.fixture(scope="session")
def trained_lenet(digits):
    """A LeNet-300-100 trained on digits, and its validation accuracy."""
    x_train, y_train, x_val, y_val = digits
    model = compile_classifier(lenet_300_100())
    model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    return model, model.evaluate(x_val, y_val, verbose=0)[1]


def quantized_weights(wrapper):
    """`{path: channel axes}` of the weights a `kc.Quantize` transforms in `wrapper`."""
    return {
        path: state["axes"]
        for path in wrapper.chains
        for op, state in wrapper.chain(path)
        if isinstance(op, kc.Quantize)
    }


def activation_state(wrapper):
    """The per-layer state of the `kc.Quantize` that quantizes `wrapper`'s activations (or `{}`)."""
    for index, state in wrapper.layer_states.items():
        if isinstance(wrapper.operators[index], kc.Quantize):
            return state
    return {}


def activation_places(wrapper):
    """Where `wrapper` quantizes activations: a tuple of "input", "activation", "output"."""
    return activation_state(wrapper).get("places", ())


def trained_mlp(digits, epochs):
    """A 64-32-10 model (logits), compiled with Adam 3e-3 and trained `epochs` on digits."""
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    return model
