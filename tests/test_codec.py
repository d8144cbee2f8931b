"""`kc.codec`: `.kcz` files round-trip bit-exact, code compressed models small, fail clearly."""

import os

import keras
import numpy as np
import pytest
from conftest import small_cnn
from keras import ops

import keras_condensa as kc
from keras_condensa import codec, masking
from keras_condensa.demo import lenet_300_100


def _numpy(x):
    return ops.convert_to_numpy(x)


def _same_bits(a, b):
    a, b = _numpy(a), _numpy(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _outputs(model, x):
    return _numpy(model(x, training=False))


def assert_round_trip(model, x, tmp_path, expected=None):
    """Saves and loads `model`; checks every variable bit for bit and the outputs exactly."""
    expected = model if expected is None else expected
    path = tmp_path / "model.kcz"
    size = codec.save(model, path)
    assert size == os.path.getsize(path) == codec.coded_bytes(model)
    loaded = codec.load(path)
    assert loaded is not expected
    assert [v.path for v in loaded.weights] == [v.path for v in expected.weights]
    for mine, theirs in zip(loaded.weights, expected.weights, strict=True):
        assert _same_bits(mine, theirs), mine.path
    assert np.array_equal(_outputs(loaded, x), _outputs(expected, x))
    return loaded


@keras.saving.register_keras_serializable(package="test_codec")
class Counters(keras.layers.Layer):
    """A pass-through layer holding bool, int32 and uint8 state (no float at all)."""

    def build(self, input_shape):
        def state(name, shape, dtype):
            return self.add_weight(
                name=name, shape=shape, dtype=dtype, initializer="zeros", trainable=False
            )

        self.flags = state("flags", (5,), "bool")
        self.steps = state("steps", (), "int32")
        self.codes = state("codes", (3, 4), "uint8")

    def call(self, x):
        return x


class Unregistered(keras.layers.Layer):
    def call(self, x):
        return x


def _round_to(model, density, values):
    """Magnitude-prunes each kernel to `density` and rounds the rest to `values` levels."""
    for variable in model.weights:
        if len(variable.shape) < 2:
            continue
        w = _numpy(variable)
        keep = np.abs(w) >= np.quantile(np.abs(w), 1 - density)
        levels = np.quantile(w[keep], np.linspace(0, 1, values)).astype("float32")
        nearest = levels[np.argmin(np.abs(w[..., None] - levels), axis=-1)]
        variable.assign(np.where(keep, nearest, 0).astype("float32"))


# -- bit-exact round trips --------------------------------------------------------------------
def test_pruned_and_stripped_lenet_round_trips_bit_exact(trained_lenet, digits, tmp_path):
    final = kc.strip(kc.Prune(0.1).apply(trained_lenet[0]))
    loaded = assert_round_trip(final, digits[2], tmp_path)
    kernel = _numpy(loaded.get_layer("fc1").kernel)
    assert np.mean(kernel == 0) > 0.85  # pruned zeros came back as zeros
    # Zero maps: smaller than the nonzero float32 values alone, positions included.
    nonzero = sum(int(np.count_nonzero(_numpy(v))) for v in final.weights)
    assert codec.coded_bytes(final) < 4 * nonzero


def test_functional_cnn_round_trips_and_dense_floats_are_stored_raw(digits, tmp_path):
    model = small_cnn()
    assert_round_trip(model, digits[2][:32].reshape(-1, 8, 8, 1), tmp_path)
    # Dense float weights have no few values to exploit: about their deflated size.
    assert codec.coded_bytes(model) < 4 * model.count_params()


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the codec is NumPy on every backend and JAX builds MobileNet slowly; the "
    "TensorFlow leg covers it to keep CI within its budget",
)
def test_batchnorm_statistics_and_keras_applications_round_trip(tmp_path):
    keras.utils.set_random_seed(1)
    model = keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=10, classifier_activation=None
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
    x = rng.uniform(size=(2, 32, 32, 3)).astype("float32")
    assert_round_trip(model, x, tmp_path)


def test_lstm_embedding_and_integer_bool_float16_variables_round_trip(tmp_path):
    keras.utils.set_random_seed(2)
    tokens = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(50, 8, name="embed")(tokens)
    h = keras.layers.LSTM(16, name="lstm")(h)
    h = keras.layers.Dense(16, name="int8_dense")(h)
    h = keras.layers.Dense(10, dtype="float16", name="half")(h)
    outputs = Counters(name="counters")(h)
    model = keras.Model(tokens, outputs)
    model.get_layer("int8_dense").quantize("int8")  # int8 kernel and float32 scales
    counters = model.get_layer("counters")
    counters.flags.assign(np.array([1, 0, 1, 1, 0], bool))
    counters.steps.assign(123456)
    counters.codes.assign(np.arange(12, dtype="uint8").reshape(3, 4) * 20)
    dtypes = {keras.backend.standardize_dtype(v.dtype) for v in model.weights}
    assert {"int8", "float16", "bool", "int32", "uint8", "float32"} <= dtypes
    x = np.random.default_rng(0).integers(0, 50, size=(4, 12)).astype("int32")
    assert_round_trip(model, x, tmp_path)


def test_wrapped_qat_model_codes_its_strip_with_quantized_kernels(digits, tmp_path):
    x_val = digits[2]
    scheme = kc.Compose([kc.Prune(0.2), kc.Quantize("int8")])
    wrapped = scheme.apply(lenet_300_100())
    wrapped(x_val[:256], training=True)  # sets the activation ranges
    stripped = kc.strip(wrapped)
    loaded = codec.decode(codec.encode(wrapped))
    assert np.array_equal(_outputs(loaded, x_val), _outputs(stripped, x_val))
    assert np.array_equal(_outputs(loaded, x_val), _outputs(wrapped, x_val))
    quantized = {}
    for wrapper in masking.iter_wrappers(stripped):
        for path in wrapper.chains:
            quantized[wrapper.weight(path).path] = _numpy(wrapper.effective_value(path))
    assert len(quantized) == 3
    for mine, theirs in zip(loaded.weights, stripped.weights, strict=True):
        # Kernels are stored as the forward pass uses them (fake-quantized), the rest as is.
        assert _same_bits(mine, quantized.get(theirs.path, theirs)), theirs.path
    assert len(np.unique(_numpy(loaded.get_layer("fc1_compressed").layer.kernel))) <= 255
    # The kernels code as palettes of at most 255 values: a few bits per weight.
    assert codec.coded_bytes(wrapped) < 4 * wrapped.count_params() / 8


# -- sizes ------------------------------------------------------------------------------------
def test_pruned_clustered_lenet_codes_in_a_few_bits_per_weight(trained_lenet):
    model = keras.models.clone_model(trained_lenet[0])
    model.set_weights(trained_lenet[0].get_weights())
    _round_to(model, density=0.05, values=16)
    size = codec.coded_bytes(model)
    float_bytes = 4 * model.count_params()
    assert size < float_bytes / 8
    # The indices cost their empirical entropy; all the rest (architecture,
    # palettes, counts, framing) is a few hundred bytes.
    entropy = 0.0
    for variable in model.weights:
        if len(variable.shape) == 2:
            _, counts = np.unique(_numpy(variable), return_counts=True)
            entropy -= np.sum(counts * np.log2(counts / counts.sum())) / 8
    biases = sum(4 * v.shape[0] for v in model.weights if len(v.shape) == 1)
    assert size - entropy - biases < 450, (size, entropy, biases)


# -- errors -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_file():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    return codec.encode(model)


def test_many_small_palettes_round_trip():
    # The coder's last word is shortened when that still decodes: every case must round-trip.
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    for _ in range(60):
        values = [
            rng.choice(rng.normal(size=rng.integers(2, 6)), size=w.shape).astype("float32")
            * (rng.random(w.shape) < rng.random())
            for w in model.get_weights()
        ]
        model.set_weights(values)
        for got, want in zip(codec.decode(codec.encode(model)).get_weights(), values, strict=True):
            np.testing.assert_array_equal(got, want)


def test_not_a_kcz_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.kcz"
    path.write_bytes(b"PK\x03\x04 a zip, say a .keras file")
    with pytest.raises(codec.CodecError, match="is not a .kcz file"):
        codec.load(path)


def test_truncated_file_is_a_clear_error(tiny_file, tmp_path):
    for cut in (len(tiny_file) - 1, len(tiny_file) // 2, 6, 2, 0):
        path = tmp_path / "model.kcz"
        path.write_bytes(tiny_file[:cut])
        with pytest.raises(codec.CodecError, match="is truncated"):
            codec.load(path)


def test_corrupt_file_is_a_clear_error(tiny_file):
    damaged = bytearray(tiny_file)
    damaged[len(damaged) // 2] ^= 0x10
    with pytest.raises(codec.CodecError, match="corrupt: its CRC32"):
        codec.decode(bytes(damaged))
    with pytest.raises(codec.CodecError, match="corrupt"):
        codec.decode(tiny_file + b"\0")


def test_newer_format_asks_to_upgrade(tiny_file):
    newer = bytearray(tiny_file)
    newer[4] = codec.FORMAT_VERSION + 1
    with pytest.raises(codec.CodecError, match="newer keras-condensa .format 2.*upgrade"):
        codec.decode(bytes(newer))


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "absent.kcz"
    with pytest.raises(FileNotFoundError, match="absent.kcz"):
        codec.load(path)


def test_failed_save_leaves_no_file_and_keeps_the_old_one(tiny_file, tmp_path):
    model = keras.Sequential(
        [keras.Input((4,)), Unregistered(name="mystery"), keras.layers.Dense(2)]
    )
    with pytest.raises(ValueError, match="'mystery'.*register_keras_serializable"):
        codec.save(model, tmp_path / "model.kcz")
    assert os.listdir(tmp_path) == []
    old = tmp_path / "old.kcz"
    old.write_bytes(tiny_file)
    with pytest.raises(ValueError, match="register_keras_serializable"):
        codec.save(model, old)
    assert old.read_bytes() == tiny_file and os.listdir(tmp_path) == ["old.kcz"]
    with pytest.raises(ValueError, match="must end in '.kcz'"):
        codec.save(model, tmp_path / "model.keras")
