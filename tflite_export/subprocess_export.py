"""Export from a non-TensorFlow backend through a TensorFlow-backend subprocess.

The TFLite converter traces TensorFlow graphs, so a process running Keras on JAX
or PyTorch saves the model to a temporary `.keras` file and the calibration data
to a `.npz`, and runs `python -m tflite_export._worker` with
`KERAS_BACKEND=tensorflow`. The worker first imports the modules that define
the model's custom classes (`models.custom_object_modules`: the wrappers of a
compression library, a user's own layers), so the file loads there without
`tflite_export` naming any library. It writes the `.tflite` file itself
(atomically) and answers with a JSON file: the `ExportResult`, the warnings it
issued, or the error to raise here.
"""

import json
import os
import subprocess
import sys
import tempfile
import warnings

import keras
import numpy as np

from tflite_export import data, errors, models
from tflite_export.result import ExportResult

_ERRORS = {
    "ValueError": ValueError,
    "TypeError": TypeError,
    "FileNotFoundError": FileNotFoundError,
    "PermissionError": PermissionError,
    "InvalidTFLiteFileError": errors.InvalidTFLiteFileError,
    "ConversionError": errors.ConversionError,
}


def _environment():
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "tensorflow"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _raise(answer):
    kind, message = answer["error_type"], answer["message"]
    if kind == "UnsupportedOpsError":
        raise errors.UnsupportedOpsError(
            message, answer.get("select_tf_ops", ()), answer.get("custom_ops", ())
        )
    raise _ERRORS.get(kind, errors.ConversionError)(message)


def export_in_subprocess(
    model, path, quantize, representative_data, sparse, int8_io, allow_select_tf_ops, kernels
):
    """Runs `export` in a TensorFlow-backend subprocess; same arguments and result."""
    loaded = models.load_model(model)
    specs = data.input_specs(loaded)
    representative = None
    if representative_data is not None:
        representative = data.calibration_subset(
            data.as_input_list(representative_data, specs, "representative_data")
        )
    with tempfile.TemporaryDirectory(prefix="tflite_export_") as tmp:
        if isinstance(model, keras.Model):
            model_path = os.path.join(tmp, "model.keras")
            model.save(model_path)
        else:
            model_path = os.path.abspath(os.fspath(model))
        data_path = None
        if representative is not None:
            data_path = os.path.join(tmp, "representative.npz")
            np.savez(data_path, *representative)
        request = {
            "model": model_path,
            "modules": models.custom_object_modules(loaded),
            "path": path,
            "quantize": quantize,
            "representative_data": data_path,
            "sparse": sparse,
            "int8_io": int8_io,
            "allow_select_tf_ops": allow_select_tf_ops,
            "kernels": kernels,
            "answer": os.path.join(tmp, "answer.json"),
        }
        request_path = os.path.join(tmp, "request.json")
        with open(request_path, "w") as f:
            json.dump(request, f)
        process = subprocess.run(
            [sys.executable, "-m", "tflite_export._worker", request_path],
            env=_environment(),
            capture_output=True,
            text=True,
            check=False,
        )
        if not os.path.isfile(request["answer"]):
            tail = (process.stderr or process.stdout or "")[-3000:]
            raise errors.ConversionError(
                f"The TensorFlow-backend export subprocess exited with code "
                f"{process.returncode} and no answer. Its output ends with:\n{tail}"
            )
        with open(request["answer"]) as f:
            answer = json.load(f)
    if not answer["ok"]:
        _raise(answer)
    for message in answer["warnings"]:
        warnings.warn(message, errors.ExportWarning, stacklevel=3)
    return ExportResult(**answer["result"])
