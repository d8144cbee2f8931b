"""Subprocess entry point: `python -m tflite_export._worker REQUEST.json`.

Run by `subprocess_export` with `KERAS_BACKEND=tensorflow`; see there.
"""

import dataclasses
import json
import sys
import warnings


def main(request_path):
    """Runs one export request and writes the JSON answer; returns an exit code."""
    with open(request_path) as f:
        request = json.load(f)
    answer = {"ok": False}
    try:
        import keras
        import numpy as np

        from tflite_export import models
        from tflite_export.convert import export
        from tflite_export.errors import ExportWarning

        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"the export worker needs KERAS_BACKEND=tensorflow, got {keras.backend.backend()}"
            )
        models.import_modules(request["modules"])
        representative = None
        if request["representative_data"]:
            with np.load(request["representative_data"]) as arrays:
                representative = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = export(
                request["model"],
                request["path"],
                quantize=request["quantize"],
                representative_data=representative,
                sparse=request["sparse"],
                int8_io=request["int8_io"],
                allow_select_tf_ops=request["allow_select_tf_ops"],
                kernels=request["kernels"],
            )
        answer = {
            "ok": True,
            "result": dataclasses.asdict(result),
            "warnings": [str(w.message) for w in caught if issubclass(w.category, ExportWarning)],
        }
    except Exception as error:  # noqa: BLE001 - every error goes back to the caller
        answer = {
            "ok": False,
            "error_type": type(error).__name__,
            "message": str(error),
            "select_tf_ops": list(getattr(error, "select_tf_ops", ())),
            "custom_ops": list(getattr(error, "custom_ops", ())),
        }
    with open(request["answer"], "w") as f:
        json.dump(answer, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
