"""Schemes applied to real models: coverage, patterns, composition, accuracy."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier, lenet_300_100, small_cnn, weights_of
from keras import ops

import keras_condensa as kc
from keras_condensa import masking


def _wrapper(model, name):
    return next(w for w in masking.iter_wrappers(model) if w.layer.name == name)


def _value(wrapper, path="kernel"):
    return ops.convert_to_numpy(wrapper.weight(path))


def test_prune_lenet_to_density_0_1_keeps_accuracy(digits, trained_lenet):
    x_train, y_train, x_val, y_val = digits
    dense, dense_accuracy = trained_lenet
    before = weights_of(dense)
    scheme = kc.Prune(density=0.1, schedule=kc.PolynomialDecay(end_step=0.7, frequency=10))
    pruned = compile_classifier(scheme.apply(dense))
    pruned.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme))
    final = kc.strip(pruned)
    compile_classifier(final)
    accuracy = final.evaluate(x_val, y_val, verbose=0)[1]
    assert accuracy >= dense_accuracy - 0.02, (accuracy, dense_accuracy)
    summary = kc.summary(final, print_fn=None)
    masked = kc.summary(pruned, print_fn=None)
    assert abs(masked.masked_density - 0.1) < 0.005
    # Stripping bakes the zeros into plain Dense layers.
    assert summary.nonzeros == masked.nonzeros
    assert [type(layer) for layer in final.layers] == [keras.layers.Dense] * 3
    # The user's model is untouched.
    for a, b in zip(before, weights_of(dense), strict=True):
        np.testing.assert_array_equal(a, b)


def test_layer_scope_prunes_each_weight_to_the_density():
    pruned = kc.Prune(0.25, scope="layer").apply(lenet_300_100())
    for w in masking.iter_wrappers(pruned):
        kernel = _value(w)
        assert np.count_nonzero(kernel) == round(0.25 * kernel.size)


def test_global_scope_uses_one_threshold_with_a_layer_floor():
    model = lenet_300_100()
    plain = kc.Prune(0.05).apply(model)
    logits_plain = np.count_nonzero(_value(_wrapper(plain, "logits")))
    floored = kc.Prune(0.05, min_layer_density=0.045).apply(model)
    values = {w.layer.name: _value(w) for w in masking.iter_wrappers(floored)}
    total = sum(v.size for v in values.values())
    assert sum(np.count_nonzero(v) for v in values.values()) == round(0.05 * total)
    assert all(np.count_nonzero(v) >= round(0.045 * v.size) for v in values.values())
    # Without the floor, one global threshold: every kept weight beats every pruned one.
    kept, dropped = [], []
    for w in masking.iter_wrappers(plain):
        original = np.abs(ops.convert_to_numpy(model.get_layer(w.layer.name).kernel))
        kept.append(original[_value(w) != 0].min())
        dropped.append(original[_value(w) == 0].max())
    assert min(kept) >= max(dropped)
    assert logits_plain != np.count_nonzero(values["logits"]) or logits_plain >= 45


def test_structured_operators_remove_whole_neurons_and_filters():
    model = small_cnn()
    scheme = kc.Compose([kc.FilterPrune(0.5, align=4), kc.NeuronPrune(0.25, exclude=["logits"])])
    pruned = scheme.apply(model)
    conv2 = _wrapper(pruned, "conv2")
    per_filter = np.abs(_value(conv2)).reshape(-1, 32).sum(0)
    assert np.count_nonzero(per_filter) == 16
    bias = ops.convert_to_numpy(conv2.weight("bias"))
    assert np.all(bias[per_filter == 0] == 0)
    fc = _value(_wrapper(pruned, "fc"))
    assert np.count_nonzero(np.abs(fc).sum(0)) == 16
    assert "logits" not in [w.layer.name for w in masking.iter_wrappers(pruned)]


def test_structure_prune_ranks_neurons_and_filters_together():
    pruned = kc.StructurePrune(0.5, align=8).apply(small_cnn())
    kept = {
        w.layer.name: np.count_nonzero(np.abs(_value(w)).reshape(-1, _value(w).shape[-1]).sum(0))
        for w in masking.iter_wrappers(pruned)
    }
    assert all(k % 8 == 0 or k == n for k, n in zip(kept.values(), (16, 32, 64, 10), strict=True))
    assert sum(kept.values()) < 16 + 32 + 64 + 10


def test_block_and_nm_patterns_in_a_model():
    pruned = kc.Compose(
        [kc.BlockPrune(0.5, block_size=(4, 4), include=["fc1"]), kc.NMPrune(2, 4, include=["fc2"])]
    ).apply(lenet_300_100())
    fc1 = _value(_wrapper(pruned, "fc1"))
    tiles = np.abs(fc1[:64, :300]).reshape(16, 4, 75, 4).sum(axis=(1, 3))
    assert np.count_nonzero(tiles) == round(0.5 * tiles.size)
    fc2 = _value(_wrapper(pruned, "fc2"))
    assert (np.count_nonzero(fc2.reshape(75, 4, 100), axis=1) == 2).all()


def test_nested_models_are_wrapped_and_left_untouched():
    inner = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu", name="inner_fc")],
        name="block",
    )
    inputs = keras.Input((64,))
    outputs = keras.layers.Dense(10, name="head")(inner(inputs))
    model = keras.Model(inputs, outputs)
    before = weights_of(model)
    pruned = kc.Prune(0.2, scope="layer").apply(model)
    names = sorted(w.layer.name for w in masking.iter_wrappers(pruned))
    assert names == ["head", "inner_fc"]
    x = np.random.default_rng(0).random((4, 64)).astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(pruned(x)), ops.convert_to_numpy(kc.strip(pruned)(x)), atol=1e-5
    )
    for a, b in zip(before, weights_of(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not any(isinstance(layer, kc.CompressionWrapper) for layer in model.layers)


def test_unsupported_layers_are_skipped_and_listed():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Rescaling(1 / 16.0)(inputs)
    h = keras.layers.Conv2D(8, 3, name="conv")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(10, name="head")(h)
    model = keras.Model(inputs, outputs)
    pruned = kc.Prune(0.5, exclude=[keras.layers.Conv2D]).apply(model)
    assert [w.layer.name for w in masking.iter_wrappers(pruned)] == ["head"]
    summary = kc.summary(pruned, print_fn=None)
    assert "normalization" in summary.skipped["bn"]
    assert summary.skipped["conv"] == "not covered by the scheme"
    assert "left dense: bn" in str(summary)


def test_nm_skips_layers_whose_input_axis_does_not_tile():
    pruned = kc.NMPrune(2, 4).apply(small_cnn())  # conv1 has 1 input channel
    names = [w.layer.name for w in masking.iter_wrappers(pruned)]
    assert "conv1" not in names and "conv2" in names
    with pytest.raises(ValueError, match="conv1.*not multiples of m=4"):
        kc.NMPrune(2, 4, include=["conv1"]).apply(small_cnn())


def test_gradual_schedule_prunes_during_fit(digits):
    x_train, y_train, _, _ = digits
    scheme = kc.Prune(0.2, schedule=kc.PolynomialDecay(begin_step=0.2, end_step=0.6, frequency=3))
    pruned = compile_classifier(scheme.apply(lenet_300_100()))
    assert kc.summary(pruned, print_fn=None).masked_density == 1.0
    densities = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            densities.append(kc.summary(self.model, print_fn=None).masked_density)

    pruned.fit(x_train, y_train, epochs=5, batch_size=64, verbose=0,
               callbacks=kc.callbacks(scheme) + [Record()])
    assert densities[0] == 1.0
    assert densities[1] < 1.0 and densities == sorted(densities, reverse=True)
    assert abs(densities[-1] - 0.2) < 0.005
