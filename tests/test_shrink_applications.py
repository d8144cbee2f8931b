"""kc.shrink on every keras.applications family: smaller, and the same function as the masked model.

The smallest member of each family at the smallest input it accepts, with
`weights=None` and a 10-class head without softmax (so a wrong channel shows
in the logits). BatchNormalization statistics and scales, and ConvNeXt's
LayerScale, are set at random: at their initial values a wrongly folded
constant would be invisible.
"""

import logging
import os

import keras
import numpy as np
import pytest

import keras_condensa as kc

apps = keras.applications


def _top(**kwargs):
    return dict(weights=None, classes=10, classifier_activation=None, **kwargs)


# name: (builder, pruned channels the shrunk model keeps and why (a log excerpt), or None)
FAMILIES = {
    "mobilenet": (lambda: apps.MobileNet((32, 32, 3), alpha=0.25, **_top()), None),
    "mobilenet_v2": (lambda: apps.MobileNetV2((32, 32, 3), alpha=0.35, **_top()), None),
    "mobilenet_v3_small": (
        lambda: apps.MobileNetV3Small(
            (32, 32, 3), alpha=0.75, include_preprocessing=False, **_top()
        ),
        None,
    ),
    "mobilenet_v3_large": (
        lambda: apps.MobileNetV3Large(
            (32, 32, 3), alpha=0.75, include_preprocessing=False, **_top()
        ),
        None,
    ),
    "efficientnet_b0": (lambda: apps.EfficientNetB0(input_shape=(32, 32, 3), **_top()), None),
    "efficientnet_v2_b0": (
        lambda: apps.EfficientNetV2B0(input_shape=(32, 32, 3), **_top()),
        None,
    ),
    "resnet50": (lambda: apps.ResNet50(input_shape=(32, 32, 3), **_top()), None),
    "resnet50_v2": (lambda: apps.ResNet50V2(input_shape=(32, 32, 3), **_top()), None),
    "densenet121": (lambda: apps.DenseNet121(input_shape=(32, 32, 3), **_top()), None),
    "convnext_tiny": (
        lambda: apps.ConvNeXtTiny(input_shape=(32, 32, 3), **_top()),
        "layer 'convnext_tiny_stem' (Sequential): a nested model",
    ),
    "xception": (lambda: apps.Xception(input_shape=(71, 71, 3), **_top()), None),
    "inception_v3": (
        lambda: apps.InceptionV3(input_shape=(75, 75, 3), **_top()),
        "cannot fold the nonzero constants",
    ),
    "nasnet_mobile": (
        lambda: apps.NASNetMobile(input_shape=(32, 32, 3), **_top()),
        "merges tensors with different channel layouts",
    ),
    "vgg16": (lambda: apps.VGG16(input_shape=(32, 32, 3), **_top()), None),
}


def _randomize_statistics(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.0, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 0.3, n).astype("float32"))
        elif type(layer).__name__ == "LayerScale":  # initialised at 1e-6: would hide errors
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))


def _scheme(name):
    if name.startswith("convnext"):
        # ConvNeXt's convolutions all feed a LayerNormalization over the channels (kept);
        # its pointwise convolutions are Dense layers, which NeuronPrune removes.
        return kc.Compose([kc.FilterPrune(0.5), kc.NeuronPrune(0.5)])
    return kc.FilterPrune(0.5)


# NASNetMobile takes about 40 s per backend here (three clones of ~770 layers: apply, strip,
# shrink), more than the rest of the file's budget allows: it runs with KC_SLOW_TESTS=1.
_SLOW = {"nasnet_mobile"}
# The graph walk and the folding are NumPy host code, the same on every backend; under JAX a
# family takes 20 to 90 s (tracing hundreds of layers three times), a few seconds on PyTorch, so
# the JAX leg keeps two families (residual Adds with BatchNorm; Dense layers, LayerNormalization
# and LayerScale) and the TensorFlow and PyTorch legs run them all.
_ON_JAX = {"resnet50", "convnext_tiny"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_application_shrinks_to_the_masked_function(name, caplog):
    if name in _SLOW and not os.environ.get("KC_SLOW_TESTS"):
        pytest.skip(f"{name} takes ~40 s per backend; set KC_SLOW_TESTS=1 to run it")
    if name not in _ON_JAX and keras.backend.backend() == "jax":
        pytest.skip(f"{name}: backend-independent host code; the other legs cover it")
    build, kept_reason = FAMILIES[name]
    keras.utils.set_random_seed(0)
    model = build()
    _randomize_statistics(model)
    masked = _scheme(name).apply(model)
    with caplog.at_level(logging.INFO, logger="keras_condensa"):
        shrunk = kc.shrink(masked)  # on_unknown="error": every layer on the way has a rule
    x = np.random.default_rng(1).uniform(0.0, 1.0, (2, *model.input_shape[1:]))
    x = x.astype("float32")
    expected = masked.predict(x, verbose=0)  # compiled: an eager call is slow on JAX
    got = shrunk.predict(x, verbose=0)
    assert np.max(np.abs(expected - got)) < 1e-4
    assert shrunk.count_params() < model.count_params()
    if kept_reason is not None:
        assert "kc.shrink kept pruned channels" in caplog.text
        assert kept_reason in caplog.text
    if name == "mobilenet_v3_small":  # squeeze-excite behind x + 3.0 (a Keras op) shrinks
        excite = "expanded_conv_squeeze_excite_conv_1"
        after = shrunk.get_layer(excite).filters
        assert after < model.get_layer(excite).filters
        assert shrunk.get_layer("expanded_conv_depthwise").kernel.shape[-2] == after


def test_layer_normalization_over_channels_keeps_its_channels(caplog):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(8, 1, name="a")(inputs)
    h = keras.layers.LayerNormalization(name="ln")(h)
    h = keras.layers.Conv2D(8, 1, name="b")(h)
    h = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    h = keras.layers.Reshape((8,), name="flat")(h)
    outputs = keras.layers.Dense(4, name="out")(h)
    masked = kc.FilterPrune(0.5).apply(keras.Model(inputs, outputs))
    with caplog.at_level(logging.INFO, logger="keras_condensa"):
        shrunk = kc.shrink(masked)
    assert shrunk.get_layer("a").filters == 8
    assert shrunk.get_layer("b").filters == 4  # through pooling and Reshape((C,))
    assert shrunk.get_layer("flat").target_shape == (4,)
    assert "'ln' (LayerNormalization) normalizes over the channels" in caplog.text
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
    assert (
        np.max(
            np.abs(keras.ops.convert_to_numpy(masked(x)) - keras.ops.convert_to_numpy(shrunk(x)))
        )
        < 1e-5
    )
