"""tflite_export on the models users bring: dict, list and multi-output structures, recurrent int8.

Every test goes through `te.export`, so under KERAS_BACKEND=jax it exercises the
TensorFlow-backend subprocess (the model travels as a `.keras` file).
"""

import warnings

import keras
import numpy as np
import pytest

import tflite_export as te

LOGITS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def export_quiet(model, path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return te.export(model, path, **kwargs)


def dict_model():
    """Token ids (int32) and float features in a dict; two outputs in a dict."""
    keras.utils.set_random_seed(0)
    inputs = {
        "tokens": keras.Input((12,), dtype="int32", name="tokens"),
        "features": keras.Input((5,), name="features"),
    }
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(inputs["tokens"]))
    joined = keras.layers.Concatenate()([pooled, inputs["features"]])
    hidden = keras.layers.Dense(16, activation="relu")(joined)
    outputs = {"logits": keras.layers.Dense(3)(hidden), "score": keras.layers.Dense(1)(hidden)}
    return keras.Model(inputs, outputs)


def dict_data(n=48):
    rng = np.random.default_rng(0)
    return {
        "tokens": rng.integers(0, 50, (n, 12)).astype("int32"),
        "features": rng.standard_normal((n, 5)).astype("float32"),
    }


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_dict_inputs_and_outputs_export_verify_and_benchmark(quantize, tmp_path):
    model, x = dict_model(), dict_data()
    options = {"quantize": "int8", "representative_data": x} if quantize else {}
    result = export_quiet(model, tmp_path / "m.tflite", **options)
    # Inputs in model.inputs order (dict keys sorted); token ids stay int32 in int8.
    assert result.input_dtypes == ["float32", "int32"]
    assert len(result.output_dtypes) == 2
    check = te.verify(result, model, x)
    assert check.n == 48
    assert check.max_abs_error < (0.1 if quantize else 1e-5)
    assert check.top1_agreement >= (0.9 if quantize else 1.0)
    assert te.benchmark(result, runs=5, warmup=1).p50_ms > 0


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_list_inputs_and_list_outputs_compare_every_output(quantize, tmp_path):
    keras.utils.set_random_seed(1)
    a, b = keras.Input((4,), name="a"), keras.Input((6,), name="b")
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], [keras.layers.Dense(2)(h), keras.layers.Dense(5)(b)])
    rng = np.random.default_rng(1)
    x = [rng.standard_normal((32, 4)).astype("float32"), rng.standard_normal((32, 6))]
    options = {"quantize": "int8", "representative_data": x} if quantize else {}
    result = export_quiet(model, tmp_path / "m.tflite", **options)
    check = te.verify(result, model, x)
    assert check.max_abs_error < (0.1 if quantize else 1e-5)
    first, second = te.predict(result, x)
    assert first.shape == (32, 2) and second.shape == (32, 5)
    assert np.abs(second - model.predict(x, verbose=0)[1]).max() < (0.1 if quantize else 1e-5)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda x: {"features": x["features"]}, ValueError, "lacks input 'tokens'"),
        (
            lambda x: {**x, "tokens": x["tokens"][:, :10]},
            ValueError,
            r"'tokens' must have shape \(None, 12\)",
        ),
        (lambda x: {**x, "tokens": x["tokens"] * 0.5}, TypeError, "'tokens' holds floats"),
        (lambda x: x["features"], TypeError, "must be a dict with key"),
    ],
)
def test_representative_data_not_matching_the_dict_names_the_input(change, error, match, tmp_path):
    with pytest.raises(error, match=match):
        te.export(
            dict_model(),
            tmp_path / "m.tflite",
            quantize="int8",
            representative_data=change(dict_data(8)),
        )
    assert list(tmp_path.iterdir()) == []


def test_verify_data_missing_a_key_names_it(tmp_path):
    model = dict_model()
    result = export_quiet(model, tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="lacks input 'features'"):
        te.verify(result, model, {"tokens": dict_data(4)["tokens"]})


def test_dynamic_sequence_length_is_a_clear_error_naming_the_input(tmp_path):
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(tokens))
    model = keras.Model({"token_ids": tokens}, keras.layers.Dense(2)(pooled))
    with pytest.raises(
        ValueError, match=r"Input 'token_ids' has unknown dimensions.*shape=\(16,\)"
    ):
        te.export(model, tmp_path / "m.tflite")


RECURRENT = {
    "lstm": lambda: keras.layers.LSTM(16, name="recurrent"),
    "gru": lambda: keras.layers.GRU(16, name="recurrent"),
    "bidirectional_lstm": lambda: keras.layers.Bidirectional(
        keras.layers.LSTM(16), name="recurrent"
    ),
    "bidirectional_gru": lambda: keras.layers.Bidirectional(keras.layers.GRU(16), name="recurrent"),
}


@pytest.mark.parametrize("rnn", sorted(RECURRENT))
def test_recurrent_qat_int8_agrees_with_keras_and_is_smaller_than_float(rnn, tmp_path):
    if rnn != "lstm" and keras.backend.backend() != "tensorflow":
        pytest.skip("the other recurrent layers take the LSTM's path; the TensorFlow leg runs them")
    import keras_condensa as kc

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((20,), dtype="int32"),
            keras.layers.Embedding(100, 16, name="embedding"),
            RECURRENT[rnn](),
            keras.layers.Dense(3),
        ]
    )
    x = np.random.default_rng(0).integers(0, 100, (300, 20)).astype("int32")
    y = x[:, -1] // 34
    scheme = kc.Compose([kc.Prune(0.2), kc.Quantize("int8")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = scheme.apply(model)
        qat.compile(keras.optimizers.Adam(1e-2), LOGITS)
        qat.fit(x, y, epochs=2, batch_size=50, verbose=0, callbacks=kc.callbacks(scheme))
        final = kc.strip(qat)
    floats = export_quiet(final, tmp_path / "float.tflite")
    with pytest.warns(te.ExportWarning, match="recurrent layers .*recurrent.* keep float"):
        ints = te.export(
            final, tmp_path / "int8.tflite", quantize="int8", representative_data=x[:100]
        )
    assert ints.bytes < floats.bytes
    check = te.verify(ints, final, x[200:])
    assert check.top1_agreement >= 0.99
    assert te.benchmark(ints, runs=5, warmup=1).p50_ms > 0
