"""int8 QAT deploys like post-training int8: BatchNorm folded, one range per tensor, same file."""

import keras
import numpy as np
import pytest
from conftest import activation_places, compile_classifier

import keras_condensa as kc
from keras_condensa import batchnorm_fold, quantizers

te = pytest.importorskip("tflite_export")


def _mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(200, activation="relu", name="fc1")(inputs)
    h = keras.layers.Dense(100, activation="relu", name="fc2")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="mlp")


def _bn_cnn():
    """MobileNetV2-like: Conv-BN-ReLU6, depthwise, linear bottleneck, residual Add, GAP."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    h = layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    h = layers.ReLU(6.0)(layers.BatchNormalization(name="stem_bn")(h))
    skip = h
    h = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    h = layers.ReLU(6.0)(layers.BatchNormalization(name="dw_bn")(h))
    h = layers.Conv2D(16, 1, use_bias=False, name="project")(h)
    h = layers.Add()([skip, layers.BatchNormalization(name="project_bn")(h)])
    h = layers.Conv2D(32, 3, strides=2, padding="same", name="head")(h)
    h = layers.Activation("relu")(layers.BatchNormalization(name="head_bn")(h))
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, layers.Dense(10, name="logits")(h), name="bn_cnn")


def _qat_int8(model, x, y, epochs=2):
    scheme = kc.Compose([kc.Prune(0.1), kc.Quantize("int8")])
    qat = compile_classifier(scheme.apply(model))
    qat.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme))
    return kc.strip(qat)


def test_batchnorm_folds_into_conv_depthwise_and_dense_exactly():
    keras.utils.set_random_seed(1)
    model = _bn_cnn()
    for layer in model.layers:  # non-trivial statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights(
                [
                    rng.uniform(0.5, 2, n),
                    rng.normal(size=n),
                    rng.normal(size=n),
                    rng.uniform(0.1, 3, n),
                ]
            )
    folded, names = batchnorm_fold.fold_batchnorms(model)
    assert sorted(names) == ["dw_bn", "head_bn", "project_bn", "stem_bn"]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert folded.get_layer("stem").use_bias and not model.get_layer("stem").use_bias
    x = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)
    sequential = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4), keras.layers.BatchNormalization()]
    )
    bn_weights = [np.full(4, 2.0), np.ones(4), np.full(4, 0.5), np.full(4, 4.0)]
    sequential.layers[1].set_weights(bn_weights)
    folded, names = batchnorm_fold.fold_batchnorms(sequential)
    assert names == [sequential.layers[1].name]
    x = np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    expected = sequential.predict(x, verbose=0)
    np.testing.assert_allclose(folded.predict(x, verbose=0), expected, atol=1e-5)


def test_each_tensor_gets_one_range_where_the_converter_fuses(tmp_path):
    qat = kc.Compose([kc.Prune(0.5), kc.Quantize("int8")]).apply(_bn_cnn())
    x = np.random.default_rng(0).uniform(size=(8, 8, 8, 1)).astype("float32")
    qat(x, training=True)  # track ranges once
    qat.save(tmp_path / "qat.keras")
    loaded = keras.saving.load_model(tmp_path / "qat.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-6)
    wrappers = [w for w in qat.layers if isinstance(w, kc.CompressionWrapper)]
    ranges = {w.layer.name: activation_places(w) for w in wrappers}
    assert ranges["stem"] == ("input",)  # its ReLU6 holds the output range: fused in the file
    assert ranges["dw"] == () and ranges["head"] == ()
    assert ranges["project"] == ("output",)  # linear bottleneck: its own range, no input range
    relus = [n for n in ranges if n.startswith(("re_lu", "activation"))]
    assert len(relus) == 3 and all(ranges[n] == ("output",) for n in relus)
    merged = [ranges[n] for n in ranges if n.startswith(("add", "global_average"))]
    assert merged == [("output",)] * 2
    assert ranges["logits"] == ("output",)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in qat.layers)
    # Float16 (no activation ranges) leaves BatchNormalization alone.
    f16 = kc.Quantize("float16").apply(_bn_cnn())
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in f16.layers)


def test_an_all_zero_channel_keeps_a_range_its_int32_bias_fits_in():
    w = np.random.default_rng(0).normal(size=(3, 3, 4, 8)).astype("float32")
    w[..., 2] = 0.0
    limit = keras.ops.convert_to_numpy(quantizers.symmetric_max(w, (-1,)))
    assert limit[2] == 1.0
    np.testing.assert_allclose(np.delete(limit, 2), np.delete(np.abs(w).max((0, 1, 2)), 2))
    out = keras.ops.convert_to_numpy(quantizers.fake_quant_weight(w, "int8", (-1,)))
    assert np.all(out[..., 2] == 0.0)


def test_qat_int8_mlp_file_agrees_with_keras(tmp_path, digits):
    x_train, y_train, x_val, _ = digits
    dense = compile_classifier(_mlp())
    dense.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)
    final = _qat_int8(dense, x_train, y_train)
    result = te.export(final, tmp_path / "mlp.tflite", quantize="int8")
    check = te.verify(result, final, x_val)
    assert check.top1_agreement >= 0.995, check
    assert te.op_counts(result.path) == {"QUANTIZE": 1, "FULLY_CONNECTED": 3, "DEQUANTIZE": 1}


def test_qat_int8_batchnorm_cnn_file_matches_post_training_int8(tmp_path, digits):
    x_train, y_train, x_val, _ = digits
    x_train, x_val = x_train.reshape(-1, 8, 8, 1), x_val.reshape(-1, 8, 8, 1)
    dense = compile_classifier(_bn_cnn())
    dense.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0)
    final = _qat_int8(dense, x_train, y_train)
    qat = te.export(final, tmp_path / "qat.tflite", quantize="int8")
    check = te.verify(qat, final, x_val)
    # The file computes what Keras computes, to well under one int8 output step; the
    # logits are on the int8 grid, so two classes can tie there and a few predictions
    # flip on the tie (seen on PyTorch: 4 of 450 at a max error of 0.003).
    assert check.max_abs_error < 0.01 and check.top1_agreement >= 0.99, check
    ptq = te.export(
        dense, tmp_path / "ptq.tflite", quantize="int8", representative_data=x_train[:100]
    )
    counts = te.op_counts(qat.path)
    assert counts == te.op_counts(ptq.path)
    assert counts["QUANTIZE"] == counts["DEQUANTIZE"] == 1 and "MUL" not in counts
    assert counts["ADD"] == 1  # the residual Add, in int8
