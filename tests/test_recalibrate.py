"""`kc.recalibrate_batchnorm`: moving statistics that describe the compressed model."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier

import keras_condensa as kc
from keras_condensa.workflows.fine_tune import fine_tune


def _bn_cnn(digits):
    x, y = digits[0].reshape(-1, 8, 8, 1), digits[1]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same"),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.Conv2D(32, 3, padding="same"),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    compile_classifier(model, learning_rate=3e-3)
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    return model, x, y


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def test_statistics_become_the_average_of_the_batches_and_recover_accuracy(digits):
    model, x, y = _bn_cnn(digits)
    x_val, y_val = digits[2].reshape(-1, 8, 8, 1), digits[3]
    pruned = kc.strip(kc.FilterPrune(density=0.7).apply(model))
    before = _accuracy(pruned, x_val, y_val)
    momentum = pruned.layers[1].momentum
    assert kc.recalibrate_batchnorm(pruned, x, batch_size=128) == 2
    assert pruned.layers[1].momentum == momentum
    # The first BatchNorm's statistics are the batches' (11 of them, the last of 67
    # samples), weighted by their sizes.
    conv = keras.Model(pruned.inputs, pruned.layers[0].output).predict(x, verbose=0)
    batches = [conv[i : i + 128] for i in range(0, len(x), 128)]
    sizes = [len(b) for b in batches]
    means = np.average([b.mean(axis=(0, 1, 2)) for b in batches], axis=0, weights=sizes)
    variances = np.average([b.var(axis=(0, 1, 2)) for b in batches], axis=0, weights=sizes)
    bn = pruned.layers[1]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), means, atol=1e-4)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_variance), variances, rtol=1e-3, atol=1e-4
    )
    after = _accuracy(pruned, x_val, y_val)
    assert after > before + 0.2, (before, after)


def test_quantization_ranges_and_bad_arguments(digits):
    model, x, _ = _bn_cnn(digits)
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential(  # a BatchNorm before any kernel: QAT cannot fold it
        [
            keras.Input((64,)),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    wrapped = kc.Quantize("int8").apply(mlp)
    flat = digits[0]
    wrapped(flat[:64], training=True)  # the ranges track activations
    others = [
        (v.path, keras.ops.convert_to_numpy(v).copy())
        for v in wrapped.non_trainable_variables
        if "moving_" not in v.path
    ]
    assert any("range" in path for path, _ in others)
    assert kc.recalibrate_batchnorm(wrapped, flat[:300] * 3.0) == 1
    for path, value in others:
        variable = next(v for v in wrapped.non_trainable_variables if v.path == path)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value, err_msg=path)
    for bad in ({"batch_size": 0}, {"max_samples": 0}, {"batch_size": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            kc.recalibrate_batchnorm(model, x, **bad)
    with pytest.raises(ValueError, match="at least one sample"):
        kc.recalibrate_batchnorm(model, x[:0])


def test_frozen_batchnorms_keep_their_statistics(digits):
    model, x, _ = _bn_cnn(digits)
    frozen = kc.strip(kc.Prune(density=0.5).apply(model))
    frozen.layers[1].trainable = False
    kept = keras.ops.convert_to_numpy(frozen.layers[1].moving_mean).copy()
    assert kc.recalibrate_batchnorm(frozen, x[:64]) == 1
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(frozen.layers[1].moving_mean), kept)


def test_every_fine_tune_recalibrates_unless_told_not_to(digits):
    model, x, y = _bn_cnn(digits)
    x_val, y_val = digits[2].reshape(-1, 8, 8, 1), digits[3]
    scheme = kc.FilterPrune(density=0.7)
    stale = fine_tune(model, scheme, x, y, epochs=0, recalibrate=False).model
    one_shot = kc.strip(scheme.apply(model))
    np.testing.assert_array_equal(
        stale.predict(x_val, verbose=0), one_shot.predict(x_val, verbose=0)
    )
    fresh = fine_tune(model, scheme, x, y, epochs=0).model
    assert _accuracy(fresh, x_val, y_val) > _accuracy(stale, x_val, y_val) + 0.2
