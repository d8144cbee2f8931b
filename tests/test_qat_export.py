"""A model fine-tuned with Quantize("int8") or ("int4") exports to int8 LiteRT.

The export uses the model's own ranges.
"""

import keras
import numpy as np
import pytest
from conftest import compile_classifier, small_cnn

import keras_condensa as kc

te = pytest.importorskip("tflite_export")
Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter


def _qat(model, train, epochs, dtype):
    scheme = kc.Compose([kc.Prune(0.1, schedule=kc.PolynomialDecay(end_step=0.6, frequency=10)),
                         kc.Quantize(dtype)])
    qat = compile_classifier(scheme.apply(model))
    qat.fit(*train, epochs=epochs, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme))
    return kc.strip(qat)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="one backend is enough: export converts under TensorFlow",
)
@pytest.mark.parametrize("dtype", ["int8", "int4"])
@pytest.mark.parametrize("arch", ["lenet", "cnn"])
def test_int8_export_of_a_qat_model_agrees_with_keras(tmp_path, digits, trained_lenet, arch, dtype):
    x_train, y_train, x_val, _ = digits
    if arch == "lenet":
        dense, _ = trained_lenet
    else:
        x_train, x_val = x_train.reshape(-1, 8, 8, 1), x_val.reshape(-1, 8, 8, 1)
        dense = compile_classifier(small_cnn())
        dense.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    final = _qat(dense, (x_train, y_train), epochs=4, dtype=dtype)
    # No representative data: the ranges learned during fine-tuning are used. int4 keeps the
    # default sparse=True, which used to abort the process inside the converter.
    result = te.export(final, tmp_path / "qat.tflite", quantize="int8", sparse=dtype == "int4")
    if dtype == "int4":
        assert "sparse encoding skipped" in result.fallback
    assert "FULLY_CONNECTED" in result.ops
    weights = [
        t for t in te.inspect_tflite(result.path) if t.dtype in ("int8", "int4") and t.bytes > 0
        and len(t.shape) >= 2
    ]
    assert weights, "weights were not stored as integers"
    if dtype == "int8":
        assert {t.dtype for t in weights} == {"int8"}
    else:
        # 4-bit weights: packed int4 tensors, or int8 codes in [-7, 7] (the converter's choice).
        interpreter = Interpreter(str(result.path))
        interpreter.allocate_tensors()
        for tensor in (t for t in weights if t.dtype == "int8"):
            codes = interpreter.get_tensor(tensor.index)
            assert codes.min() >= -7 and codes.max() <= 7, (tensor.name, codes.min(), codes.max())
    check = te.verify(result, final, x_val)
    assert check.top1_agreement >= 0.99, check
    # Pruned zeros survive integer quantization in the file.
    dense_file = te.export(kc.strip(dense), tmp_path / "dense.tflite")
    assert result.gzip_bytes * 8 < dense_file.gzip_bytes
    assert np.isfinite(check.max_abs_error)
