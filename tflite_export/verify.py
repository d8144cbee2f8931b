"""`verify`: prove a LiteRT file computes what its Keras model computes."""

import dataclasses

import keras
import numpy as np

from tflite_export import data, models, runtime


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Agreement between a LiteRT file and its Keras model on the same inputs.

    Attributes:
        max_abs_error: largest absolute difference over all outputs and samples.
        mean_abs_error: mean absolute difference over all outputs and samples.
        top1_agreement: fraction of predictions (argmax of the last axis of the
            first output) that are equal.
        n: number of samples compared.
        kernels: the LiteRT kernels used (`"default"` or `"builtin"`).
    """

    max_abs_error: float
    mean_abs_error: float
    top1_agreement: float
    n: int
    kernels: str


def _keras_outputs(model, inputs, batch_size=64):
    """Runs the model eagerly in batches (no `predict` tracing: verification data is small)."""
    chunks = []
    for start in range(0, inputs[0].shape[0], batch_size):
        batch = [a[start : start + batch_size] for a in inputs]
        outputs = model(data.pack(model, batch), training=False)
        chunks.append([keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(outputs)])
    return [np.concatenate(parts).astype(np.float32) for parts in zip(*chunks, strict=True)]


def verify(tflite, keras_model, x, kernels="default"):
    """Runs a LiteRT file and a Keras model on the same inputs and compares outputs.

    Samples go through LiteRT one at a time (exported files have batch 1);
    int8 inputs are quantized and int8 outputs dequantized with each tensor's
    scale and zero point, so errors are in the model's float units.

    Args:
        tflite: path to a `.tflite` file, its bytes, or an `ExportResult`.
        keras_model: the reference `keras.Model`, or a path to a `.keras` file.
        x: inputs with samples first (a list of arrays for several inputs).
        kernels: `"default"` (XNNPACK delegate, as LiteRT applies it) or
            `"builtin"` (built-in kernels only; needed by files for which
            `ExportResult.kernels == "builtin"`).

    Returns:
        A `VerifyResult`.

    Raises:
        FileNotFoundError: the file does not exist.
        InvalidTFLiteFileError: it is not a LiteRT file.
        TypeError: `x` is not numeric or has the wrong dtype kind.
        ValueError: `x` does not match the model's inputs, or the file's
            inputs/outputs do not match the model's.

    Example:

    ```python
    check = te.verify("model.tflite", model, x_val[:200])
    assert check.top1_agreement >= 0.99
    ```
    """
    runtime.check_kernels(kernels)
    content = runtime.read_model(tflite)
    model = models.load_model(keras_model, "keras_model")
    inputs = data.as_input_list(x, data.input_specs(model), "x")
    runner = runtime.Runner(content, kernels)
    if len(runner.inputs) != len(inputs):
        raise ValueError(
            f"The LiteRT file has {len(runner.inputs)} inputs but the Keras model has "
            f"{len(inputs)}: pass the model the file was exported from."
        )
    expected = _keras_outputs(model, inputs)
    if len(runner.outputs) != len(expected):
        raise ValueError(
            f"The LiteRT file has {len(runner.outputs)} outputs but the Keras model has "
            f"{len(expected)}: pass the model the file was exported from."
        )
    n = inputs[0].shape[0]
    got = [np.empty_like(e) for e in expected]
    for i in range(n):
        outputs = runner.run([a[i : i + 1] for a in inputs])
        for store, value, ref in zip(got, outputs, expected, strict=True):
            if value.size != ref[i].size:
                raise ValueError(
                    f"Output shape {value.shape} of the LiteRT file differs from the Keras "
                    f"model's {ref.shape[1:]}: pass the model the file was exported from."
                )
            store[i] = value.reshape(ref.shape[1:])
    diffs = np.concatenate([np.abs(g - e).ravel() for g, e in zip(got, expected, strict=True)])
    top1 = float(np.mean(np.argmax(got[0], axis=-1) == np.argmax(expected[0], axis=-1)))
    return VerifyResult(
        max_abs_error=float(diffs.max()),
        mean_abs_error=float(diffs.mean()),
        top1_agreement=top1,
        n=int(n),
        kernels=kernels,
    )
