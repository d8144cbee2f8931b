"""Bad input gets a clear error, and the user's model is left unchanged."""

import keras
import numpy as np
import pytest
from conftest import lenet_300_100, weights_of

import keras_condensa as kc


@pytest.fixture()
def model():
    m = lenet_300_100()
    return m, weights_of(m)


def _unchanged(model, before):
    assert not any(isinstance(layer, kc.CompressionWrapper) for layer in model.layers)
    for a, b in zip(before, weights_of(model), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("density", [0, 1.5, -0.1, "0.1", None])
def test_density_outside_zero_one(density):
    with pytest.raises(ValueError, match=r"density .* must be in \(0, 1\]. Received: density="):
        kc.Prune(density)


def test_scheme_that_covers_no_layer(model):
    m, before = model
    with pytest.raises(ValueError, match="covers no layer of model 'lenet_300_100'"):
        kc.FilterPrune(0.5).apply(m)
    with pytest.raises(ValueError, match="covers no layer"):
        kc.Prune(0.5, exclude=[keras.layers.Dense]).apply(m)
    _unchanged(m, before)


def test_including_a_layer_the_operator_cannot_handle_names_it():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(8, name="fc")(inputs)
    outputs = keras.layers.LayerNormalization(name="norm")(h)
    m = keras.Model(inputs, outputs)
    before = weights_of(m)
    with pytest.raises(
        ValueError,
        match=r"cannot handle layer 'norm' \(LayerNormalization\)" r".*exclude=\['norm'\]",
    ):
        kc.Prune(0.5, include=["fc", "norm"]).apply(m)
    with pytest.raises(ValueError, match=r"'fc' \(Dense\): Dense has no filter structure"):
        kc.FilterPrune(0.5, include=["fc"]).apply(m)
    _unchanged(m, before)


def test_include_of_an_unknown_layer_lists_the_real_ones(model):
    m, before = model
    with pytest.raises(ValueError, match=r"\['nope'\].*\['fc1', 'fc2', 'logits'\]"):
        kc.Prune(0.5, include=["nope"]).apply(m)
    _unchanged(m, before)


def test_tf_keras_model_is_refused_with_the_reason():
    tf_keras = pytest.importorskip("tf_keras")
    m = tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(3,))])
    before = [w.copy() for w in m.get_weights()]
    with pytest.raises(TypeError, match=r"tf_keras \(Keras 2\) model.*works on Keras 3 models"):
        kc.Prune(0.5).apply(m)
    for a, b in zip(before, m.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_subclassed_model_that_cannot_be_copied_is_refused_with_the_way_out():
    class Net(keras.Model):
        def __init__(self, layer):
            super().__init__()
            self.fc = layer

        def call(self, x):
            return self.fc(x)

    m = Net(keras.layers.Dense(4))
    m(np.zeros((1, 3), "float32"))
    before = weights_of(m)
    with pytest.raises(TypeError, match="(?s)Cannot copy subclassed model.*constructor arguments"):
        kc.Prune(0.5).apply(m)
    _unchanged(m, before)


def test_applying_a_scheme_to_a_wrapped_model(model):
    m, _ = model
    pruned = kc.Prune(0.5).apply(m)
    before = weights_of(pruned)
    with pytest.raises(
        ValueError, match=r"already wrapped by CompressionWrapper.*kc.strip\(model\).*kc.Compose"
    ):
        kc.NMPrune().apply(pruned)
    for a, b in zip(before, weights_of(pruned), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unbuilt_model():
    m = keras.Sequential([keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="not built.*keras.Input"):
        kc.Prune(0.5).apply(m)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: kc.Prune(0.5, scope="model"), "scope must be one of"),
        (lambda: kc.Prune(0.5, min_layer_density=2), "min_layer_density must be in"),
        (lambda: kc.NeuronPrune(0.5, criterion="l3"), "criterion must be one of"),
        (lambda: kc.FilterPrune(0.5, align=0), "align must be a positive int"),
        (lambda: kc.BlockPrune(0.5, block_size=(4,)), "block_size must be two positive ints"),
        (lambda: kc.NMPrune(5, 4), "0 < n <= m"),
        (lambda: kc.Compose([]), "non-empty list"),
        (lambda: kc.Prune(0.5, include=[3]), "layer names .* or layer classes"),
        (lambda: kc.Prune(0.5, schedule="poly"), "schedule must be"),
    ],
)
def test_bad_operator_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_global_floor_that_exceeds_the_budget(model):
    m, before = model
    with pytest.raises(ValueError, match="min_layer_density=0.5 keeps .* density=0.1 allows only"):
        kc.Prune(0.1, min_layer_density=0.5).apply(m)
    _unchanged(m, before)


def test_callbacks_on_the_original_model(digits, model):
    m, _ = model
    scheme = kc.Prune(0.5)
    m.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="fit the model returned by scheme.apply"):
        m.fit(digits[0][:64], digits[1][:64], epochs=1, verbose=0, callbacks=kc.callbacks(scheme))
