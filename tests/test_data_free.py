"""`kc.data_free.synthesize`: inputs whose BatchNorm statistics match a trained model's."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier, slow_on_torch, small_cnn

import keras_condensa as kc
import keras_condensa.data_free as data_free


def bn_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    h = inputs
    for i, filters in enumerate((16, 32)):
        h = layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(h)
        h = layers.ReLU()(layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(h))
    h = layers.Flatten()(h)
    outputs = layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name="bn_cnn")


def accuracy(model, x, y):
    return float(
        np.mean(np.argmax(keras.ops.convert_to_numpy(model(x, training=False)), axis=-1) == y)
    )


@pytest.fixture(scope="module")
def images(digits):
    x_train, y_train, x_val, y_val = digits
    return x_train.reshape(-1, 8, 8, 1), y_train, x_val.reshape(-1, 8, 8, 1), y_val


@pytest.fixture(scope="module")
def trained(images):
    x_train, y_train, x_val, y_val = images
    model = compile_classifier(bn_cnn(), learning_rate=3e-3)
    model.fit(x_train, y_train, epochs=6, batch_size=32, verbose=0)
    assert accuracy(model, x_val, y_val) > 0.9
    return model


@pytest.fixture(scope="module")
def synthetic(trained):
    return data_free.synthesize(trained, n=128, steps=100, seed=0)


def statistics_gap(model, x):
    """Mean over BatchNorm layers and channels of the normalised squared mean and std gaps."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    taps = keras.Model(model.inputs[0], [bn.input for bn in bns])(x)
    gaps = []
    for bn, h in zip(bns, taps, strict=True):
        h = keras.ops.convert_to_numpy(h).reshape(-1, h.shape[-1])
        var = np.asarray(bn.moving_variance) + bn.epsilon
        mean_gap = (h.mean(0) - np.asarray(bn.moving_mean)) ** 2 / var
        std_gap = (np.sqrt(h.var(0) + bn.epsilon) - np.sqrt(var)) ** 2 / var
        gaps.append(np.mean(mean_gap + std_gap))
    return float(np.mean(gaps))


def test_synthetic_inputs_match_batchnorm_statistics_far_better_than_noise(trained, synthetic):
    rng = np.random.default_rng(1)
    gaussian = rng.standard_normal((128, 8, 8, 1)).astype("float32")
    uniform = rng.uniform(0, 1, (128, 8, 8, 1)).astype("float32")
    gaps = {
        name: statistics_gap(trained, x)
        for name, x in (
            ("synthetic", synthetic[:128]),
            ("gaussian", gaussian),
            ("uniform", uniform),
        )
    }
    assert gaps["synthetic"] < 0.1 * min(gaps["gaussian"], gaps["uniform"]), gaps


def test_shapes_dtype_and_labels(trained):
    x, labels = data_free.synthesize(
        trained, n=50, method="inception", steps=20, batch_size=32, seed=0, return_labels=True
    )
    assert x.shape == (50, 8, 8, 1) and x.dtype == np.float32
    assert labels.shape == (50,) and labels.dtype == np.int32
    assert np.bincount(labels, minlength=10).tolist() == [5] * 10  # targets spread evenly
    assert np.mean(np.argmax(keras.ops.convert_to_numpy(trained(x)), axis=-1) == labels) > 0.9
    x, predicted = data_free.synthesize(
        trained, n=20, steps=5, seed=0, input_range=(0, 1), return_labels=True
    )
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0.05
    assert np.array_equal(predicted, np.argmax(keras.ops.convert_to_numpy(trained(x)), axis=-1))


def test_same_seed_same_inputs(trained):
    def make(seed):
        return data_free.synthesize(trained, n=40, steps=10, batch_size=32, seed=seed)

    np.testing.assert_allclose(make(3), make(3), rtol=0, atol=1e-6)
    first, other = (data_free.synthesize(trained, n=8, method="gaussian", seed=s) for s in (3, 4))
    assert np.abs(first - other).mean() > 0.1


def test_model_is_not_modified(trained):
    before = [np.array(w) for w in trained.weights]
    flags = [layer.trainable for layer in trained.layers]
    for method in ("batchnorm", "inception"):
        data_free.synthesize(trained, n=16, method=method, steps=2, seed=0)
    for old, new in zip(before, trained.weights, strict=True):
        np.testing.assert_array_equal(old, np.asarray(new))
    assert [layer.trainable for layer in trained.layers] == flags


def test_model_without_batchnorm_names_the_method_that_needs_none():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"no BatchNormalization.*method='inception'"):
        data_free.synthesize(model, n=8, steps=2)
    x, labels = data_free.synthesize(model, n=10, method="auto", steps=2, return_labels=True)
    assert x.shape == (10, 8, 8, 1)
    assert sorted(labels.tolist()) == list(range(10))  # "auto" fell back to inception targets


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"n": 0}, "n"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"method": "zeroq"}, "method"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"tv_weight": -1}, "tv_weight"),
        ({"input_range": (1, 0)}, "input_range"),
    ],
)
def test_bad_arguments_raise(trained, kwargs, word):
    with pytest.raises(ValueError, match=word):
        data_free.synthesize(trained, **kwargs)


def test_subclassed_model_takes_inception_and_explains_batchnorm(trained):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)
            self.bn = keras.layers.BatchNormalization(name="hidden_bn")
            self.head = keras.layers.Dense(10)

        def call(self, x):
            return self.head(keras.ops.mean(self.bn(self.conv(x)), axis=(1, 2)))

    net = Net()
    net(np.zeros((1, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match=r"'hidden_bn'.*method='inception'"):
        data_free.synthesize(net, n=4, steps=1)
    x, labels = data_free.synthesize(net, n=4, method="inception", steps=1, return_labels=True)
    assert x.shape == (4, 8, 8, 1) and labels.shape == (4,)


@slow_on_torch
def test_nested_model_batchnorms_are_matched(trained, images):
    outer_input = keras.Input((8, 8, 1))
    nested = keras.Model(outer_input, trained(outer_input), name="outer")
    x = data_free.synthesize(nested, n=128, steps=100, seed=0)
    noise = np.random.default_rng(1).standard_normal(x.shape).astype("float32")
    assert statistics_gap(trained, x) < 0.05 * statistics_gap(trained, noise)


@slow_on_torch
def test_distillation_on_synthetic_inputs_recovers_pruned_accuracy(trained, images):
    _, _, x_val, y_val = images
    x, labels = data_free.synthesize(trained, n=384, steps=60, seed=0, return_labels=True)
    scheme = kc.FilterPrune(density=0.25)
    pruned = scheme.apply(trained)
    before = accuracy(kc.strip(pruned), x_val, y_val)
    compile_classifier(pruned, learning_rate=3e-3)
    distiller = kc.distill(pruned, trained)
    distiller.fit(x, labels, epochs=5, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme))
    after = accuracy(kc.strip(distiller.student, shrink=True), x_val, y_val)
    assert after > before + 0.2 and after > 0.85, (before, after)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="LiteRT export in-process")
def test_int8_calibration_on_synthetic_inputs_is_close_to_real(
    trained, synthetic, images, tmp_path
):
    import tflite_export as te  # noqa: PLC0415

    x_train, _, x_val, y_val = images
    found = {}
    for name, x in (("real", x_train[:256]), ("synthetic", synthetic)):
        path = str(tmp_path / f"{name}.tflite")
        te.export(trained, path, quantize="int8", representative_data=x)
        found[name] = np.mean(np.argmax(te.predict(path, x_val[:200]), axis=-1) == y_val[:200])
    assert found["synthetic"] >= found["real"] - 0.02, found


def test_inception_judges_probability_outputs(digits):
    keras.utils.set_random_seed(0)
    logits = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    softmax = keras.Sequential([logits, keras.layers.Softmax()])
    noise = np.random.default_rng(0).standard_normal((8, 64)).astype("float32")
    assert data_free._outputs_logits(logits, noise)
    assert not data_free._outputs_logits(softmax, noise)
    x, targets = data_free.synthesize(
        softmax, n=20, method="inception", steps=30, seed=0, return_labels=True
    )
    assert np.mean(np.argmax(softmax.predict(x, verbose=0), axis=-1) == targets) > 0.9
