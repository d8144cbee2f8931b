"""CompressionWrapper: masked forward pass, exact zeros under training, serialisation."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import compile_classifier, lenet_300_100
from keras import ops

import keras_condensa as kc
from keras_condensa import masking

LAYERS = {
    "Dense": (lambda: keras.layers.Dense(6), (5,)),
    "EinsumDense": (
        lambda: keras.layers.EinsumDense("ab,bc->ac", output_shape=6, bias_axes="c"),
        (5,),
    ),
    "Conv1D": (lambda: keras.layers.Conv1D(6, 3), (7, 4)),
    "Conv2D": (lambda: keras.layers.Conv2D(6, 3), (7, 7, 4)),
    "Conv3D": (lambda: keras.layers.Conv3D(4, 2), (4, 4, 4, 2)),
    "DepthwiseConv2D": (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (7, 7, 4)),
    "SeparableConv2D": (lambda: keras.layers.SeparableConv2D(6, 3), (7, 7, 4)),
    "Conv2DTranspose": (lambda: keras.layers.Conv2DTranspose(6, 3), (5, 5, 4)),
    "Embedding": (lambda: keras.layers.Embedding(20, 6), None),
    "LSTM": (lambda: keras.layers.LSTM(6), (5, 4)),
}


def _model_with(name):
    make, shape = LAYERS[name]
    keras.utils.set_random_seed(1)
    inputs = keras.Input((5,), dtype="int32") if shape is None else keras.Input(shape)
    outputs = make()(inputs)
    return keras.Model(inputs, outputs)


def _sample(model):
    rng = np.random.default_rng(0)
    spec = model.inputs[0]
    shape = (3,) + tuple(spec.shape[1:])
    if "int" in str(spec.dtype):
        return rng.integers(0, 20, shape).astype("int32")
    return rng.standard_normal(shape).astype("float32")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_supported_layer_uses_masked_weights(name):
    model = _model_with(name)
    pruned = kc.Prune(density=0.3, scope="layer").apply(model)
    wrapper = next(masking.iter_wrappers(pruned))
    plain = kc.strip(pruned)
    x = _sample(model)
    # The wrapper's forward pass equals the plain layer with zeros baked in.
    np.testing.assert_allclose(
        ops.convert_to_numpy(pruned(x)), ops.convert_to_numpy(plain(x)), rtol=1e-5, atol=1e-5
    )
    for path in wrapper.masked_weights:
        value = ops.convert_to_numpy(wrapper.weight(path))
        assert abs(np.count_nonzero(value) / value.size - 0.3) < 0.05, path
    assert not any(isinstance(layer, kc.CompressionWrapper) for layer in plain.layers)


@pytest.mark.parametrize(
    "optimizer",
    [lambda: keras.optimizers.Adam(1e-2), lambda: keras.optimizers.SGD(0.1, momentum=0.9)],
    ids=["adam", "sgd_momentum"],
)
@pytest.mark.parametrize("gradual", [False, True], ids=["one_shot", "gradual"])
def test_masked_weights_stay_exactly_zero_under_momentum(digits, optimizer, gradual):
    x_train, y_train, _, _ = digits
    schedule = kc.PolynomialDecay(end_step=0.6, frequency=4) if gradual else None
    scheme = kc.Prune(density=0.2, schedule=schedule)
    pruned = compile_classifier(scheme.apply(lenet_300_100()), optimizer=optimizer())
    seen = []

    class CheckZeros(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch % 7:
                return
            for w in masking.iter_wrappers(self.model):
                kernel = ops.convert_to_numpy(w.weight("kernel"))
                mask = ops.convert_to_numpy(w.masks["kernel"])
                seen.append(np.abs(kernel[mask == 0]).max() if (mask == 0).any() else 0.0)

    pruned.fit(
        x_train, y_train, epochs=2, batch_size=64, verbose=0,
        callbacks=kc.callbacks(scheme) + [CheckZeros()],
    )
    assert seen and max(seen) == 0.0
    assert abs(kc.summary(pruned, print_fn=None).masked_density - 0.2) < 0.005


def test_wrapped_model_round_trips_through_keras_file_and_keeps_training(tmp_path, digits):
    x_train, y_train, x_val, _ = digits
    scheme = kc.Compose([kc.Prune(0.3), kc.NMPrune(2, 4, include=["fc2"])])
    model = lenet_300_100()
    model(x_val[:1])
    pruned = compile_classifier(scheme.apply(model))
    pruned.fit(x_train, y_train, epochs=1, verbose=0)
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x_val, verbose=0), pruned.predict(x_val, verbose=0), atol=1e-6
    )
    for a, b in zip(masking.iter_wrappers(loaded), masking.iter_wrappers(pruned), strict=True):
        assert a.masked_weights == b.masked_weights
        for path_ in a.masked_weights:
            np.testing.assert_array_equal(
                ops.convert_to_numpy(a.masks[path_]), ops.convert_to_numpy(b.masks[path_])
            )
    before = kc.summary(loaded, print_fn=None).masked_nonzeros
    loaded.fit(x_train, y_train, epochs=1, verbose=0, callbacks=kc.callbacks(scheme))
    assert kc.summary(loaded, print_fn=None).masked_nonzeros == before


def test_stripped_model_loads_without_keras_condensa(tmp_path, digits):
    _, _, x_val, _ = digits
    pruned = kc.Prune(0.1).apply(lenet_300_100())
    final = kc.strip(pruned)
    path = tmp_path / "final.keras"
    final.save(path)
    np.save(tmp_path / "x.npy", x_val[:20])
    np.save(tmp_path / "y.npy", final.predict(x_val[:20], verbose=0))
    script = (
        "import sys, numpy as np, keras\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        f"y = m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)\n"
        f"np.testing.assert_allclose(y, np.load({str(tmp_path / 'y.npy')!r}), atol=1e-6)\n"
        "assert 'keras_condensa' not in sys.modules\n"
        "print(sum(int(np.count_nonzero(w)) for w in m.get_weights()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == kc.summary(final, print_fn=None).nonzeros


def test_custom_prunable_layer_is_wrapped():
    class Scale(keras.layers.Layer, kc.PrunableLayer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=input_shape[-1:], initializer="random_normal")

        def call(self, x):
            return x * self.w

        def get_prunable_weights(self):
            return [self.w]

    inputs = keras.Input((40,))
    model = keras.Model(inputs, Scale(name="scale")(inputs))
    pruned = kc.Prune(0.25, include=["scale"]).apply(model)
    wrapper = next(masking.iter_wrappers(pruned))
    assert wrapper.masked_weights == ("w",)
    out = ops.convert_to_numpy(pruned(np.ones((1, 40), "float32")))
    assert np.count_nonzero(out) == 10
