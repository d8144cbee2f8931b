"""`export`: a Keras 3 model to a checked LiteRT (TFLite) file.

Conversion runs with the TensorFlow backend. Under another backend (JAX,
PyTorch) the model goes through a temporary `.keras` file to a subprocess with
`KERAS_BACKEND=tensorflow` (`python -m tflite_export._worker`), which returns
the same `ExportResult`.
"""

import contextlib
import gzip
import os
import tempfile
import warnings

import keras

from tflite_export import data, inspection, models, runtime
from tflite_export.errors import ConversionError, ExportWarning
from tflite_export.result import ExportResult

QUANTIZE_MODES = (None, "float16", "dynamic", "int8")


def gzip_size(content):
    """Bytes of `content` gzip-compressed at level 9 (deterministic header)."""
    return len(gzip.compress(content, compresslevel=9, mtime=0))


def _check_options(quantize, representative_data, sparse, int8_io, allow_select_tf_ops, kernels):
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"quantize must be one of {QUANTIZE_MODES}. Received: quantize={quantize!r}"
        )
    for name, value in (
        ("sparse", sparse),
        ("int8_io", int8_io),
        ("allow_select_tf_ops", allow_select_tf_ops),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False. Received: {name}={value!r}")
    runtime.check_kernels(kernels)
    if representative_data is not None and quantize != "int8":
        raise ValueError(
            "representative_data calibrates int8 activations; it is only used with "
            f"quantize='int8'. Received: quantize={quantize!r}"
        )
    if int8_io and quantize != "int8":
        raise ValueError(f"int8_io=True needs quantize='int8'. Received: quantize={quantize!r}")


def check_output_path(path):
    """Validates the output path before any work; returns it absolute.

    Raises:
        TypeError: not a path.
        ValueError: the path is a directory.
        FileNotFoundError: its directory does not exist.
        PermissionError: its directory is not writable.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike. Received: {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise ValueError(
            f"path is a directory; give a file name such as 'model.tflite'. Received: {path!r}"
        )
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"The directory of path {path!r} does not exist; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write to directory {parent!r} (for path {path!r}).")
    return path


def write_atomically(path, content):
    """Writes `content` to a temporary file beside `path`, then renames it over `path`.

    A failure leaves `path` as it was (absent, or the previous file).
    """
    parent, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _is_flex(op):
    return op.startswith("Flex")


def _checked_content(model, specs, quantize, representative, sparse, int8_io, flex, kernels):
    """Converts, then proves the default (or builtin) interpreter runs the file."""
    from tflite_export import converter

    def convert(sparse_encoding):
        return converter.convert(
            model, specs, quantize, representative, sparse_encoding, int8_io, flex
        )

    content, notes = convert(sparse)
    if any(_is_flex(op) for op in inspection.op_names(content)):
        warnings.warn(
            "The file contains Flex (Select TF) ops; the ai-edge-litert interpreter cannot run "
            "them, so export did not test-run it. Run it where the Flex delegate is linked.",
            ExportWarning,
            stacklevel=4,
        )
        return content, notes, kernels
    default_error = runtime.smoke_test(content, "default")
    if default_error is None:
        return content, notes, "default"
    sparse_count = sum(t.sparse for t in inspection.inspect_tflite(content))
    if kernels == "builtin" and runtime.smoke_test(content, "builtin") is None:
        notes.append(
            f"kept the file as converted ({sparse_count} sparse tensors) as kernels='builtin' "
            "asked: "
            f"the default LiteRT interpreter (XNNPACK) cannot load this file ({default_error}); "
            "run it with the built-in kernels (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)"
        )
        return content, notes, "builtin"
    if sparse and sparse_count:
        dense, dense_notes = convert(False)
        dense_error = runtime.smoke_test(dense, "default")
        if dense_error is None:
            notes = dense_notes
            notes.append(
                f"re-converted with dense weights (sparse=False): the default LiteRT interpreter "
                f"(XNNPACK) cannot load the sparse-encoded file ({default_error}); "
                f"{len(dense)} bytes instead of {len(content)}. Pass kernels='builtin' to keep "
                "the sparse file for LiteRT's built-in kernels"
            )
            return dense, notes, "default"
    raise ConversionError(
        f"The converted file does not run under LiteRT's default interpreter: {default_error}"
    )


def _export_here(model, path, quantize, representative_data, sparse, int8_io, flex, kernels):
    model = models.load_model(model)
    specs = data.input_specs(model)
    representative = None
    if representative_data is not None:
        representative = data.calibration_subset(
            data.as_input_list(representative_data, specs, "representative_data")
        )
    content, notes, used_kernels = _checked_content(
        model, specs, quantize, representative, sparse, int8_io, flex, kernels
    )
    fallback = "; ".join(notes) or None
    if fallback:
        warnings.warn(f"tflite_export.export: {fallback}", ExportWarning, stacklevel=4)
    inputs, outputs = inspection.io_dtypes(content)
    write_atomically(path, content)
    return ExportResult(
        path=path,
        bytes=len(content),
        gzip_bytes=gzip_size(content),
        ops=inspection.op_names(content),
        input_dtypes=inputs,
        output_dtypes=outputs,
        sparse_tensors=sum(t.sparse for t in inspection.inspect_tflite(content)),
        fallback=fallback,
        kernels=used_kernels,
    )


def export(
    model,
    path,
    quantize=None,
    representative_data=None,
    sparse=True,
    int8_io=False,
    allow_select_tf_ops=False,
    kernels="default",
):
    """Converts a Keras model to a LiteRT (TFLite) file and checks that it runs.

    The model is traced with batch-1 inputs. After conversion the file is loaded
    with LiteRT's default interpreter (XNNPACK delegate) and run once; if that
    fails for a sparse-encoded file (XNNPACK cannot prepare sparse int8 or
    dynamic-range FULLY_CONNECTED weights), it is re-converted with dense
    weights, or, with `kernels="builtin"`, kept as is. Either way `fallback`
    says so and a `UserWarning` is issued. The file is written atomically:
    a failure leaves nothing (or the previous file) at `path`.

    Args:
        model: a `keras.Model`, or a path to a `.keras` file (import the
            modules that register its custom layers first; under another
            backend the export worker imports the modules that define the
            model's custom classes).
        path: where to write the `.tflite` file.
        quantize: `None` (float32), `"float16"` (float16 weights),
            `"dynamic"` (int8 weights, float activations) or `"int8"` (full
            integer). `"int8"` takes activation ranges from
            `representative_data`, or, without it, from the fake-quant ops of a
            model fine-tuned with `kc.Quantize("int8")`.
        representative_data: calibration inputs for `"int8"`: an array with
            samples first (a list of arrays for several inputs). At most 500
            samples, evenly spaced, are fed one at a time.
        sparse: store weights that are mostly zero in LiteRT's sparse encoding
            (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`), so pruned models shrink.
        int8_io: with `"int8"`, int8 input and output tensors (for
            microcontrollers) instead of float ones.
        allow_select_tf_ops: allow TensorFlow ops without a LiteRT builtin as
            Flex ops (the runtime then needs the Flex delegate).
        kernels: `"default"`: the file must run on LiteRT's default interpreter;
            `"builtin"`: it may need the built-in kernels only.

    Returns:
        An `ExportResult`.

    Raises:
        TypeError: wrong argument types, or non-numeric representative data.
        ValueError: invalid options; int8 without ranges; representative data
            of the wrong shape; a model without fixed input shapes.
        UnsupportedOpsError: ops the converter cannot lower (a `ValueError`).
        FileNotFoundError: a missing model file or output directory.
        PermissionError: an unwritable output directory.
        ConversionError: the converter or the runtime check failed otherwise.

    Example:

    ```python
    import tflite_export as te

    result = te.export(model, "model.tflite", quantize="int8", representative_data=x_train[:300])
    print(result.bytes, result.sparse_tensors, result.fallback)
    ```
    """
    _check_options(quantize, representative_data, sparse, int8_io, allow_select_tf_ops, kernels)
    path = check_output_path(path)
    if not isinstance(model, keras.Model):
        models.check_model_path(model)
    args = (quantize, representative_data, sparse, int8_io, allow_select_tf_ops, kernels)
    if keras.backend.backend() == "tensorflow":
        return _export_here(model, path, *args)
    from tflite_export import subprocess_export

    return subprocess_export.export_in_subprocess(model, path, *args)
