"""kc.shrink: pruned channels physically removed, same function as the masked model."""

import logging

import keras
import numpy as np
import pytest
from conftest import compile_classifier, slow_on_jax, small_cnn

import keras_condensa as kc


def _images(digits, size=8):
    x_train, y_train, x_val, _ = digits
    x_train = x_train.reshape(-1, 8, 8, 1)
    x_val = x_val.reshape(-1, 8, 8, 1)
    if size != 8:
        reps = size // 8
        x_train = np.kron(x_train, np.ones((1, reps, reps, 1), "float32"))
        x_val = np.kron(x_val, np.ones((1, reps, reps, 1), "float32"))
    return x_train, y_train, x_val


def _max_error(a, b, x):
    return float(
        np.max(
            np.abs(
                keras.ops.convert_to_numpy(a(x, training=False))
                - keras.ops.convert_to_numpy(b(x, training=False))
            )
        )
    )


def _filters(model):
    return {
        layer.name: (layer.filters if hasattr(layer, "filters") else layer.units)
        for layer in model.layers
        if hasattr(layer, "filters") or hasattr(layer, "units")
    }


def _resnet(seed=0, momentum=0.99):
    """ResNet-style: stem, two bottleneck blocks with batch norm and residual adds.

    `momentum` is the BatchNorm one: 0.9 lets a few epochs settle the moving statistics.
    """
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    h = layers.Conv2D(16, 3, padding="same", name="stem")(inputs)
    h = layers.ReLU()(layers.BatchNormalization(momentum=momentum, name="stem_bn")(h))
    for b in range(2):
        r = layers.Conv2D(16, 3, padding="same", name=f"b{b}_conv1")(h)
        r = layers.ReLU()(layers.BatchNormalization(momentum=momentum, name=f"b{b}_bn1")(r))
        r = layers.Conv2D(16, 1, name=f"b{b}_conv2")(r)
        r = layers.BatchNormalization(momentum=momentum, name=f"b{b}_bn2")(r)
        h = layers.ReLU()(layers.Add(name=f"b{b}_add")([h, r]))
    h = layers.GlobalAveragePooling2D()(h)
    outputs = layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name="resnet")


@pytest.fixture(scope="module")
def trained_resnet(digits):
    x_train, y_train, _ = _images(digits)
    model = compile_classifier(_resnet())
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    return model


def test_shrunk_plain_cnn_equals_masked_and_is_smaller(digits):
    x_train, y_train, x_val = _images(digits)
    model = compile_classifier(small_cnn())
    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    scheme = kc.Compose([kc.FilterPrune(density=0.5), kc.NeuronPrune(density=0.25)])
    masked = scheme.apply(model)
    shrunk = kc.shrink(masked)
    assert _filters(shrunk) == {"conv1": 8, "conv2": 16, "fc": 16, "logits": 10}
    assert shrunk.count_params() < 0.4 * model.count_params()
    assert _max_error(masked, shrunk, x_val) < 1e-5
    assert _filters(model)["conv1"] == 16  # the user's model is untouched


def test_shrink_works_on_sequential_and_keeps_output_units(digits):
    x_val = _images(digits)[2]
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="c"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, name="out"),
        ]
    )
    masked = kc.FilterPrune(density=0.5).apply(model)
    shrunk = kc.shrink(kc.strip(masked))
    assert isinstance(shrunk, keras.Sequential)
    assert shrunk.layers[-1].units == 10  # channels that feed the output stay
    assert shrunk.layers[0].filters < 8
    assert _max_error(masked, shrunk, x_val) < 1e-5


def test_shrunk_resnet_with_trained_batchnorm_equals_masked(trained_resnet, digits):
    x_val = _images(digits)[2]
    bn = trained_resnet.get_layer("b0_bn1")
    assert np.abs(np.asarray(bn.moving_mean)).max() > 1e-3  # statistics are trained
    masked = kc.FilterPrune(density=0.5).apply(trained_resnet)
    shrunk = kc.shrink(masked)
    assert _max_error(masked, shrunk, x_val) < 1e-5
    sizes = _filters(shrunk)
    # The residual group (stem, b0_conv2, b1_conv2) is pruned as one or not at all.
    assert sizes["stem"] == sizes["b0_conv2"] == sizes["b1_conv2"]
    # Inside a block, the 3x3 convs feed a 1x1 conv: their constants fold into its bias.
    assert sizes["b0_conv1"] == 8 and sizes["b1_conv1"] == 8
    assert shrunk.get_layer("b0_bn1").gamma.shape == (8,)


def test_residual_group_removed_when_every_branch_prunes_it(trained_resnet, digits):
    x_val = _images(digits)[2]
    masked = kc.FilterPrune(density=0.5).apply(trained_resnet)
    # Prune the same channels in all three coupled producers (what group scoring picks).
    drop = np.arange(0, 16, 2)
    for name in ("stem", "b0_conv2", "b1_conv2"):
        wrapper = masked.get_layer(f"{name}_compressed")
        kernel, bias = wrapper.layer.kernel, wrapper.layer.bias
        k, b = np.array(kernel), np.array(bias)
        k[..., drop], b[drop] = 0.0, 0.0
        kernel.assign(k)
        bias.assign(b)
    plain = kc.strip(masked)
    shrunk = kc.shrink(plain)
    assert _max_error(plain, shrunk, x_val) < 1e-5
    # The stem's constants pass BatchNorm/ReLU into 'same' 3x3 convs: only channels whose
    # constant is exactly zero there can go, so the group shrinks to at most 16, exactly.
    sizes = _filters(shrunk)
    assert sizes["stem"] == sizes["b0_conv2"] == sizes["b1_conv2"] <= 16


@slow_on_jax
def test_shrunk_mobilenet_v2_equals_masked(digits):
    x_train, y_train, x_val = _images(digits, size=32)
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 1), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )
    compile_classifier(model)
    model.fit(x_train[:256], y_train[:256], epochs=1, batch_size=64, verbose=0)
    masked = kc.FilterPrune(density=0.5).apply(model)
    shrunk = kc.shrink(masked)
    assert _max_error(masked, shrunk, x_val[:64]) < 1e-5
    assert shrunk.count_params() < 0.4 * model.count_params()
    # A depthwise conv is pruned with the conv that feeds it, so both lose the channels.
    assert model.get_layer("block_1_depthwise").kernel.shape[-2] == 48
    assert shrunk.get_layer("block_1_depthwise").kernel.shape[-2] == 24


def test_shrunk_concatenate_model_uses_offsets(digits):
    x_val = _images(digits)[2]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(8, 3, activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(12, 3, activation="relu", name="b")(inputs)
    h = keras.layers.Concatenate()([a, b])
    h = keras.layers.Conv2D(16, 3, activation="relu", name="c")(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(10, name="out")(h)
    model = keras.Model(inputs, outputs)
    masked = kc.FilterPrune(density=0.5).apply(model)
    shrunk = kc.shrink(masked)
    assert _filters(shrunk) == {"a": 4, "b": 6, "c": 8, "out": 10}
    assert shrunk.get_layer("c").kernel.shape == (3, 3, 10, 8)
    assert _max_error(masked, shrunk, x_val) < 1e-5


def test_align_keeps_multiples_and_at_least_one_channel(digits):
    x_val = _images(digits)[2]
    model = small_cnn()
    masked = kc.FilterPrune(density=0.3, include=["conv2"]).apply(model)
    shrunk = kc.shrink(masked, align=8)
    assert _filters(shrunk)["conv2"] == 16  # 10 kept, rounded up to 16
    assert _max_error(masked, shrunk, x_val) < 1e-5
    plain = kc.strip(masked)
    kernel = plain.get_layer("conv2").kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    plain.get_layer("conv2").bias.assign(np.zeros((32,), "float32"))
    shrunk = kc.shrink(plain)
    assert _filters(shrunk)["conv2"] == 1
    assert _max_error(plain, shrunk, x_val) < 1e-5
    with pytest.raises(ValueError, match="align"):
        kc.shrink(plain, align=0)


class _Scale(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def test_unknown_layer_raises_or_is_skipped(digits, caplog):
    x_val = _images(digits)[2]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="a")(inputs)
    h = _Scale(name="scale")(h)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="b")(h)
    outputs = keras.layers.Dense(10, name="out")(keras.layers.Flatten()(h))
    masked = kc.FilterPrune(density=0.5).apply(keras.Model(inputs, outputs))
    with pytest.raises(ValueError, match="'scale'"):
        kc.shrink(masked)
    with caplog.at_level(logging.WARNING, logger="keras_condensa"):
        shrunk = kc.shrink(masked, on_unknown="skip")
    assert "scale" in caplog.text
    assert _filters(shrunk) == {"a": 8, "b": 4, "out": 10}
    assert _max_error(masked, shrunk, x_val) < 1e-5
    kc.register_channel_rule(_Scale, kc.ChannelRule("channelwise"))
    try:
        assert _filters(kc.shrink(masked))["a"] == 4
    finally:
        from keras_condensa import dependency

        dependency._RULES.pop(_Scale)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(4)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match="functional"):
        kc.shrink(net)


def test_a_sequential_loaded_from_a_file_shrinks_like_the_one_saved(tmp_path):
    # Loading rebuilds a Sequential layer by layer, leaving each layer more than one
    # node; only the model's own graph counts, so no layer looks shared.
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(8), keras.layers.Dense(3)]
    )
    stripped = kc.strip(kc.NeuronPrune(0.5).apply(model))
    stripped.save(tmp_path / "pruned.keras")
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")
    assert len(loaded.layers[0]._inbound_nodes) > 1
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    shrunk = kc.shrink(loaded)
    assert shrunk.count_params() == kc.shrink(stripped).count_params() < stripped.count_params()
    assert _max_error(loaded, shrunk, x) < 1e-5
