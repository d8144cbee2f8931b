"""`kc.recalibrate_batchnorm`: moving statistics that describe the compressed model."""

import keras
import numpy as np
from conftest import compile_classifier

import keras_condensa as kc


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
    assert kc.recalibrate_batchnorm(pruned, x, batch_size=128, max_samples=512) == 2
    assert pruned.layers[1].momentum == momentum
    # The first BatchNorm's moving mean is the mean of the four batches' means.
    conv = keras.Model(pruned.inputs, pruned.layers[0].output)
    starts = (0, 128, 256, 384)
    means = [np.mean(conv.predict(x[i : i + 128], verbose=0), axis=(0, 1, 2)) for i in starts]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(pruned.layers[1].moving_mean), np.mean(means, 0), atol=1e-4
    )
    after = _accuracy(pruned, x_val, y_val)
    assert after > before + 0.2, (before, after)


def test_frozen_batchnorms_keep_their_statistics(digits):
    model, x, _ = _bn_cnn(digits)
    frozen = kc.strip(kc.Prune(density=0.5).apply(model))
    frozen.layers[1].trainable = False
    kept = keras.ops.convert_to_numpy(frozen.layers[1].moving_mean).copy()
    assert kc.recalibrate_batchnorm(frozen, x[:64]) == 1
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(frozen.layers[1].moving_mean), kept)
