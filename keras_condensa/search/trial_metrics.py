"""What one `CompressionTuner` trial reports, measured on its fine-tuned model.

Accuracy from predictions, sizes and latency as measured: the model is saved
(`model.keras`) and, when the tuner exports, written and timed as a LiteRT
file (`model.tflite`) in the trial's directory.
"""

import json
import os

import numpy as np
from keras_tuner import errors as kt_errors

from keras_condensa import codec
from keras_condensa.bench import keras_latency_ms
from keras_condensa.files import save_model_atomically, write_json_atomically
from keras_condensa.flops import flops
from keras_condensa.summary import summary as model_summary
from keras_condensa.workflows.deploy import export_measured
from keras_condensa.workflows.measure import accuracy_error, correct

# Metrics every trial reports.
BASE_METRICS = (
    "val_accuracy",
    "val_accuracy_std",
    "nonzero_params",
    "params",
    "density",
    "keras_latency_ms",
    "coded_bytes",
    "flops",
    "fine_tune_epochs",
)
# Metrics reported only when the trial exports a LiteRT file.
EXPORT_METRICS = ("tflite_bytes", "tflite_gzip_bytes", "litert_latency_ms")

MODEL_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
# Where each latency was measured (`bench.device_name()` for Keras; LiteRT's CPU interpreter).
DEVICE_FILE = "measured_on.json"


def measured_on(trial_dir):
    """The device a trial's `keras_latency_ms` was timed on; None for an older or failed trial."""
    try:
        with open(os.path.join(trial_dir, DEVICE_FILE)) as f:
            return json.load(f).get("keras_latency_ms")
    except (OSError, ValueError):
        return None


def measure(tuner, trial, tuned):
    """Measures a trial's fine-tuned model and saves it in the trial's directory.

    Args:
        tuner: the `CompressionTuner` (its validation data, dense model's
            readings, export settings).
        trial: the `Trial`.
        tuned: the `workflows.fine_tune.FineTuned` of the trial.

    Returns:
        A dict of metric name to value: `BASE_METRICS`, and `EXPORT_METRICS`
        when the tuner exports (see `CompressionTuner`). The device
        `keras_latency_ms` was timed on (`tuner.device`) goes to the trial's
        `DEVICE_FILE` (metrics are numbers).

    Raises:
        keras_tuner.errors.FailedTrialError: the model's outputs are not finite.
    """
    final = tuned.model
    outputs = tuner._predict(final)
    if not np.all(np.isfinite(outputs)):
        raise kt_errors.FailedTrialError(
            f"Trial {trial.trial_id} ({trial.hyperparameters.values}): the model's outputs are "
            "not finite."
        )
    stats = model_summary(final, print_fn=None)
    right = correct(outputs, tuner.y_val)
    relative = tuner.max_accuracy_drop is not None
    metrics = {
        "val_accuracy": float(np.mean(right)),
        # The reading's own error on this many samples (paired with the
        # dense model's when the floor is relative to it).
        "val_accuracy_std": accuracy_error(right, tuner._dense_right if relative else None),
        "nonzero_params": float(stats.nonzeros),
        "params": float(stats.params),
        "density": float(stats.nonzeros) / max(float(stats.params), 1.0),
        "keras_latency_ms": keras_latency_ms(final, tuner.x_val, runs=15, warmup=3)["p50_ms"],
        "coded_bytes": float(codec.coded_bytes(final)),
        "flops": float(flops(final)),
        "fine_tune_epochs": float(tuned.epochs_run),
    }
    trial_dir = tuner.get_trial_dir(trial.trial_id)
    save_model_atomically(final, os.path.join(trial_dir, MODEL_FILE))
    # Each process measures on its own device (a worker's may differ from the chief's).
    write_json_atomically(os.path.join(trial_dir, DEVICE_FILE), {"keras_latency_ms": tuner.device})
    if tuner.export:
        info = export_measured(
            final,
            os.path.join(trial_dir, TFLITE_FILE),
            quantize=tuner.quantize,
            representative_data=tuner.x_train if tuner.quantize == "int8" else None,
        )
        metrics.update(
            tflite_bytes=float(info["bytes"]),
            tflite_gzip_bytes=float(info["gzip_bytes"]),
            litert_latency_ms=float(info["p50_ms"]),
        )
    return metrics
