"""The one export -> verify -> benchmark: a model to a measured LiteRT file.

`tflite_export` is imported inside the function, so `import keras_condensa`
never loads TensorFlow: only exporting does.
"""

import os

from keras_condensa import masking


def export_measured(
    model,
    path,
    *,
    quantize=None,
    representative_data=None,
    sparse=True,
    kernels="default",
    verify_data=None,
    benchmark=True,
    num_threads=1,
):
    """Exports `model` to `path` with `tflite_export`, then verifies and times the file.

    The file is written atomically by `tflite_export.export`. Every number is
    measured: bytes of the file on disk, LiteRT latency of batch-1 runs,
    agreement of LiteRT's predictions with Keras's.

    Args:
        model: a plain (stripped) `keras.Model`.
        path: the `.tflite` file to write.
        quantize: `None`, `"float16"`, `"dynamic"` or `"int8"`.
        representative_data: calibration inputs for `"int8"` (up to 300 are
            used). Ignored for a model that carries its own activation ranges
            (trained with an integer `kc.Quantize`, still in the stripped graph):
            calibrating would override them and quantize the layers its
            scheme left in float (`kc.search.mixed_precision_scheme`).
        sparse: encode zeros sparsely.
        kernels: `"default"` or `"builtin"` (LiteRT's built-in kernels).
        verify_data: optional inputs on which LiteRT is compared with Keras.
        benchmark: whether to time the file.
        num_threads: LiteRT threads of the benchmark.

    Returns:
        A dict: `path`, `bytes`, `gzip_bytes`, `sparse_tensors`, `fallback`,
        `ops`, `kernels`; with `benchmark`, `p50_ms`, `p90_ms`, `p99_ms`; with
        `verify_data`, `top1_agreement` and `max_abs_error`.

    Raises:
        ImportError: TensorFlow (the `[export]` extra) is not installed.
        tflite_export.ConversionError, tflite_export.UnsupportedOpsError:
            the model does not convert.

    Example:

    ```python
    info = export_measured(final, "small.tflite", quantize="int8",
                           representative_data=x_train, verify_data=x_val)
    info["bytes"], info["p50_ms"], info["top1_agreement"]
    ```
    """
    import tflite_export as te  # noqa: PLC0415 - TensorFlow only when exporting

    if _quantization_aware(model):
        representative_data = None
    if representative_data is not None:
        representative_data = representative_data[:300]
    result = te.export(
        model,
        path,
        quantize=quantize,
        representative_data=representative_data,
        sparse=sparse,
        kernels=kernels,
    )
    info = {
        "path": path,
        "bytes": int(os.path.getsize(path)),
        "gzip_bytes": int(result.gzip_bytes),
        "sparse_tensors": int(result.sparse_tensors),
        "fallback": result.fallback,
        "ops": list(result.ops),
        "kernels": kernels,
    }
    if benchmark:
        timing = te.benchmark(path, num_threads=num_threads, kernels=kernels)
        info.update(
            p50_ms=float(timing.p50_ms),
            p90_ms=float(timing.p90_ms),
            p99_ms=float(timing.p99_ms),
            kernels=timing.kernels,
        )
    if verify_data is not None:
        check = te.verify(path, model, verify_data[:300], kernels=kernels)
        info.update(
            top1_agreement=float(check.top1_agreement), max_abs_error=float(check.max_abs_error)
        )
    return info


def _quantization_aware(model):
    """Whether `model` kept activation ranges of integer quantizers through `strip`."""
    return any(
        op.kept_by_strip and getattr(op, "quantizes_activations", False)
        for w in masking.iter_wrappers(model)
        for op in w.operators
    )
