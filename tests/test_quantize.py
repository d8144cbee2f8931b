"""Quantize: symmetric fake quantization, composed with pruning, trained, stripped."""

import keras
import numpy as np
import pytest
from conftest import (
    activation_places,
    activation_state,
    compile_classifier,
    lenet_300_100,
    quantized_weights,
    small_cnn,
    weights_of,
)
from keras import ops

import keras_condensa as kc
from keras_condensa import masking, quantizers


def _reference(w, per_channel, bits=8):
    """Symmetric narrow-range quantization: codes in [-L, L], scale max|w| / L."""
    levels = 2 ** (bits - 1) - 1
    m = np.abs(w).reshape(-1, w.shape[-1]).max(0) if per_channel else np.abs(w).max()
    m = np.maximum(m, np.float32(1e-8))  # an all-zero channel keeps a non-empty range
    scale = (np.float32(2) * m.astype("float32")) / np.float32(2 * levels)
    codes = np.clip(np.floor(w / scale + np.float32(0.5)), -levels, levels)
    return (codes * scale).astype("float32"), codes, scale


@pytest.mark.parametrize(
    "shape, axes",
    [((3, 3, 4, 16), (-1,)), ((64, 30), ())],
    ids=["conv_per_channel", "dense_per_tensor"],
)
def test_int8_fake_quant_matches_numpy_reference(shape, axes):
    w = np.random.default_rng(0).standard_normal(shape).astype("float32")
    w[..., 3] = 0.0  # a pruned filter (or column) must stay exactly zero
    out = ops.convert_to_numpy(quantizers.fake_quant_weight(ops.convert_to_tensor(w), "int8", axes))
    expected, codes, scale = _reference(w, per_channel=bool(axes))
    # The integer codes match bit for bit on every backend.
    np.testing.assert_array_equal(np.round(out / scale), codes)
    assert np.all(out[..., 3] == 0.0)
    if keras.backend.backend() == "tensorflow":
        # The TensorFlow op (what the converter sees) matches the values bit for bit too.
        np.testing.assert_array_equal(out, expected)
    else:
        # Keras's keras.ops implementation rounds the dequantized value within two ulps.
        np.testing.assert_array_max_ulp(out, expected, maxulp=2)


def test_int4_and_float16_weights():
    w = np.random.default_rng(1).standard_normal((3, 3, 8, 6)).astype("float32")
    int4 = ops.convert_to_numpy(
        quantizers.fake_quant_weight(ops.convert_to_tensor(w), "int4", (-1,))
    )
    for c in range(6):
        assert len(np.unique(int4[..., c])) <= 15
    f16 = ops.convert_to_numpy(quantizers.fake_quant_weight(ops.convert_to_tensor(w), "float16"))
    np.testing.assert_array_equal(f16, w.astype("float16").astype("float32"))


def _fine_tune(model, scheme, digits, epochs):
    x_train, y_train, x_val, y_val = digits
    compressed = compile_classifier(scheme.apply(model))
    compressed.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0,
                   callbacks=kc.callbacks(scheme))
    return compressed, compressed.evaluate(x_val, y_val, verbose=0)[1]


def _assert_pruned_zeros_survive_quantization(model):
    for w in masking.iter_wrappers(model):
        for path in w.masked_weights:
            mask = ops.convert_to_numpy(w.masks[path])
            effective = ops.convert_to_numpy(w.effective_value(path))
            assert (mask == 0).any() and np.all(effective[mask == 0] == 0.0), (w.name, path)


def test_prune_then_int8_qat_keeps_lenet_accuracy(digits, trained_lenet):
    dense, dense_accuracy = trained_lenet
    scheme = kc.Compose([kc.Prune(0.1, schedule=kc.PolynomialDecay(end_step=0.6, frequency=10)),
                         kc.Quantize("int8")])
    qat, accuracy = _fine_tune(dense, scheme, digits, epochs=8)
    assert accuracy >= dense_accuracy - 0.02, (accuracy, dense_accuracy)
    _assert_pruned_zeros_survive_quantization(qat)
    wrapper = next(masking.iter_wrappers(qat))
    low, high = ops.convert_to_numpy(activation_state(wrapper)["output_range"])
    assert low <= 0.0 < high  # ranges were tracked during training


def test_prune_then_int8_qat_keeps_cnn_accuracy(digits):
    x_train, y_train, x_val, y_val = digits
    images = (x_train.reshape(-1, 8, 8, 1), y_train, x_val.reshape(-1, 8, 8, 1), y_val)
    dense = compile_classifier(small_cnn())
    dense.fit(images[0], y_train, epochs=12, batch_size=32, verbose=0)
    dense_accuracy = dense.evaluate(images[2], y_val, verbose=0)[1]
    scheme = kc.Compose([kc.Prune(0.1, schedule=kc.PolynomialDecay(end_step=0.6, frequency=10)),
                         kc.Quantize("int8")])
    qat, accuracy = _fine_tune(dense, scheme, images, epochs=8)
    assert accuracy >= dense_accuracy - 0.02, (accuracy, dense_accuracy)
    _assert_pruned_zeros_survive_quantization(qat)
    conv = next(w for w in masking.iter_wrappers(qat) if w.layer.name == "conv2")
    assert quantized_weights(conv) == {"kernel": (-1,)}  # per output channel
    fc = next(w for w in masking.iter_wrappers(qat) if w.layer.name == "fc")
    assert quantized_weights(fc) == {"kernel": ()}  # per tensor


def test_ranges_freeze_at_inference_and_round_trip(tmp_path, digits):
    x_train, y_train, x_val, _ = digits
    scheme = kc.Quantize("int8")
    qat = compile_classifier(scheme.apply(lenet_300_100()))
    qat.fit(x_train, y_train, epochs=1, verbose=0)
    wrapper = next(masking.iter_wrappers(qat))
    before = ops.convert_to_numpy(activation_state(wrapper)["input_range"]).copy()
    qat.predict(x_val * 5.0, verbose=0)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(activation_state(wrapper)["input_range"]), before
    )
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x_val, verbose=0), qat.predict(x_val, verbose=0), atol=1e-6
    )


def test_strip_keeps_int8_quantizers_and_bakes_the_rest(digits):
    x_train, y_train, x_val, _ = digits
    scheme = kc.Compose([kc.Prune(0.2), kc.Quantize("int8", include=["fc1", "fc2"]),
                         kc.Quantize("float16", include=["logits"])])
    model = compile_classifier(scheme.apply(lenet_300_100()))
    model.fit(x_train, y_train, epochs=1, verbose=0)
    final = kc.strip(model)
    kinds = {layer.name: type(layer).__name__ for layer in final.layers}
    assert kinds["fc1_compressed"] == "CompressionWrapper" and kinds["logits"] == "Dense"
    assert not next(masking.iter_wrappers(final)).masks  # masks baked in
    np.testing.assert_allclose(
        final.predict(x_val, verbose=0), model.predict(x_val, verbose=0), atol=1e-5
    )
    logits = ops.convert_to_numpy(final.get_layer("logits").kernel)
    np.testing.assert_array_equal(logits, logits.astype("float16").astype("float32"))
    plain = kc.strip(model, keep_quantization=False)
    assert all(type(layer) is keras.layers.Dense for layer in plain.layers)
    fc1 = ops.convert_to_numpy(plain.get_layer("fc1").kernel)
    assert len(np.unique(fc1)) <= 255 and kc.summary(plain, print_fn=None).density < 0.25


def test_quantize_before_prune_is_reordered_with_a_warning():
    with pytest.warns(UserWarning, match="quantization before pruning"):
        scheme = kc.Compose([kc.Quantize("int8"), kc.Prune(0.5)])
    assert [type(op).__name__ for op in scheme.operators()] == ["Prune", "Quantize"]


def test_post_training_quantization_goes_through_keras(digits, trained_lenet):
    _, _, x_val, y_val = digits
    dense, dense_accuracy = trained_lenet
    before = weights_of(dense)
    quantized = kc.Quantize("int8", mode="post_training").apply(
        kc.strip(kc.Prune(0.5).apply(dense))
    )
    assert quantized.get_layer("fc1").quantization_mode == "int8"
    compile_classifier(quantized)
    assert quantized.evaluate(x_val, y_val, verbose=0)[1] >= dense_accuracy - 0.05
    for a, b in zip(before, weights_of(dense), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_quantization_input():
    with pytest.raises(
        ValueError,
        match=r"dtype must be one of \('float16', 'int8', 'int4'\). " r"Received: dtype='int3'",
    ):
        kc.Quantize("int3")
    with pytest.raises(ValueError, match="mode must be one of"):
        kc.Quantize("int8", mode="later")
    inputs = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(20, 4, name="emb")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.Flatten()(h)))
    before = weights_of(model)
    # A layer with integer inputs (token ids) quantizes its weights and its float output only.
    embedded = kc.Quantize("int8").apply(model)
    emb = next(w for w in masking.iter_wrappers(embedded) if w.layer.name == "emb")
    assert list(quantized_weights(emb)) == ["embeddings"] and "input" not in activation_places(emb)
    weights_only = kc.Quantize("int8", activations=False, include=["emb"]).apply(model)
    assert [w.layer.name for w in masking.iter_wrappers(weights_only)] == ["emb"]
    with pytest.raises(ValueError, match="strip the compressed model first"):
        kc.Quantize("int8", mode="post_training").apply(kc.Prune(0.5).apply(model))
    with pytest.raises(ValueError, match="quantized twice"):
        kc.Compose([kc.Quantize("int8"), kc.Quantize("float16")]).apply(model)
    for a, b in zip(before, weights_of(model), strict=True):
        np.testing.assert_array_equal(a, b)
