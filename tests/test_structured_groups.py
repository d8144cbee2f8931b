"""Structured schemes prune coupled channels as one group, so that kc.shrink can remove them."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier, small_cnn
from test_shrink import _filters, _images, _max_error, _resnet

import keras_condensa as kc
from keras_condensa import masks

# Convs whose outputs meet at the residual adds, and the batch norm after each.
RESIDUAL = {"stem": "stem_bn", "b0_conv2": "b0_bn2", "b1_conv2": "b1_bn2"}


def _kept(model, name):
    """Per output channel of a wrapped conv or BN: whether its mask keeps it."""
    wrapper = model.get_layer(f"{name}_compressed")
    path = "gamma" if "gamma" in wrapper.masks else "kernel"
    mask = np.asarray(wrapper.masks[path])
    return mask.reshape(-1, mask.shape[-1]).max(axis=0) > 0


def _accuracy(model, x, y):
    return float(
        np.mean(np.argmax(keras.ops.convert_to_numpy(model(x, training=False)), axis=-1) == y)
    )


def _folded_score(model, conv, bn):
    kernel = np.asarray(model.get_layer(conv).kernel)
    bn = model.get_layer(bn)
    scale = np.abs(np.asarray(bn.gamma)) / np.sqrt(np.asarray(bn.moving_variance) + bn.epsilon)
    return masks.channel_scores(kernel, (-1,), "l2") * scale


@pytest.fixture(scope="module")
def fitted_resnet(digits):
    """The ResNet-style CNN trained well enough that its BatchNorm statistics matter."""
    x_train, y_train, _ = _images(digits)
    model = compile_classifier(_resnet(momentum=0.9), learning_rate=1e-2)
    model.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)
    return model


def test_residual_group_is_scored_and_pruned_as_one(fitted_resnet):
    pruned = kc.FilterPrune(density=0.5).apply(fitted_resnet)
    kept = {name: _kept(pruned, name) for name in RESIDUAL}
    assert kept["stem"].sum() == 8
    assert np.array_equal(kept["stem"], kept["b0_conv2"])
    assert np.array_equal(kept["stem"], kept["b1_conv2"])
    # The group keeps the channels with the best mean score over its members, each
    # scored with its BatchNorm folded in.
    scores = [_folded_score(fitted_resnet, conv, bn) for conv, bn in RESIDUAL.items()]
    assert np.array_equal(kept["stem"], masks.topk_mask(np.mean(scores, axis=0), 8) > 0)
    # A layer alone would have kept other channels: coupling changed the choice.
    assert not np.array_equal(kept["stem"], masks.topk_mask(scores[0], 8) > 0)
    # Convs outside the residual group are pruned on their own.
    assert _kept(pruned, "b0_conv1").sum() == 8
    assert not np.array_equal(_kept(pruned, "b0_conv1"), kept["stem"])


def test_batchnorm_follows_the_channels_it_normalizes(fitted_resnet, digits, tmp_path):
    pruned = kc.FilterPrune(density=0.5).apply(fitted_resnet)
    for conv, bn in (("stem", "stem_bn"), ("b0_conv1", "b0_bn1"), ("b1_conv2", "b1_bn2")):
        assert np.array_equal(_kept(pruned, bn), _kept(pruned, conv))
        inner = pruned.get_layer(f"{bn}_compressed").layer
        dropped = ~_kept(pruned, conv)
        assert np.all(np.asarray(inner.gamma)[dropped] == 0)
        assert np.all(np.asarray(inner.beta)[dropped] == 0)
    pruned.save(tmp_path / "pruned.keras")  # the wrapped batch norms load back
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")
    assert _max_error(pruned, loaded, _images(digits)[2]) == 0.0
    assert np.array_equal(_kept(loaded, "stem_bn"), _kept(pruned, "stem"))
    # include= narrows the convs; the batch norms still follow them.
    only = kc.FilterPrune(density=0.5, include=["b0_conv1"]).apply(fitted_resnet)
    assert _kept(only, "b0_bn1").sum() == 8
    assert _kept(only, "b1_bn1").all()


def test_channels_feeding_the_output_are_never_pruned(digits):
    x_val = _images(digits)[2]
    pruned = kc.StructurePrune(density=0.5).apply(small_cnn())
    logits = pruned.get_layer("logits_compressed")
    assert np.all(np.asarray(logits.masks["kernel"]) == 1)
    assert kc.summary(pruned, print_fn=None).masked_density < 0.6
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(8, 3, name="b")(inputs)
    h = keras.layers.Add()([h, b])
    outputs = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 1, name="c")(h))
    pruned = kc.FilterPrune(density=0.5).apply(keras.Model(inputs, outputs))
    assert _kept(pruned, "c").all()
    assert _kept(pruned, "a").sum() == 4
    assert np.array_equal(_kept(pruned, "a"), _kept(pruned, "b"))
    assert _filters(kc.shrink(pruned)) == {"a": 4, "b": 4, "c": 8}
    assert _max_error(pruned, kc.shrink(pruned), x_val) < 1e-5


def test_fine_tuned_resnet_with_batchnorm_keeps_accuracy_and_shrinks_exactly(fitted_resnet, digits):
    x_train, y_train, x_val = _images(digits)
    y_val = digits[3]
    dense_accuracy = _accuracy(fitted_resnet, x_val, y_val)
    assert dense_accuracy > 0.9
    scheme = kc.FilterPrune(density=0.5)
    pruned = compile_classifier(scheme.apply(fitted_resnet), learning_rate=3e-3)
    pruned.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme))
    bn_wrapper = pruned.get_layer("b0_bn2_compressed")
    bn = bn_wrapper.layer
    assert np.abs(np.asarray(bn.moving_mean)).max() > 1e-3  # trained statistics
    dropped = ~_kept(pruned, "b0_conv2")
    assert np.all(np.asarray(bn.gamma)[dropped] == 0) and np.all(np.asarray(bn.beta)[dropped] == 0)
    # Pruned channels are exactly zero after their batch norm in inference, whatever
    # its moving statistics, so they cost no accuracy there.
    after_bn = keras.Model(pruned.input, bn_wrapper.output)
    assert np.all(keras.ops.convert_to_numpy(after_bn(x_val, training=False))[..., dropped] == 0)
    assert _accuracy(pruned, x_val, y_val) > 0.7  # one-shot pruning left 0.1
    shrunk = kc.strip(pruned, shrink=True)
    assert _max_error(pruned, shrunk, x_val) < 1e-5
    assert _filters(shrunk) == {
        "stem": 8,
        "b0_conv1": 8,
        "b0_conv2": 8,
        "b1_conv1": 8,
        "b1_conv2": 8,
        "logits": 10,
    }
    assert shrunk.count_params() < 0.4 * fitted_resnet.count_params()


def test_strip_shrink_refuses_to_drop_int8_quantizers(digits):
    scheme = kc.Compose([kc.FilterPrune(density=0.5), kc.Quantize("int8")])
    pruned = scheme.apply(small_cnn())
    with pytest.raises(ValueError, match="keep_quantization=False"):
        kc.strip(pruned, shrink=True)
    shrunk = kc.strip(pruned, keep_quantization=False, shrink=True)
    assert _filters(shrunk)["conv2"] == 16
