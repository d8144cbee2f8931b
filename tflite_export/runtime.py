"""Load and run LiteRT files with the `ai_edge_litert` interpreter.

`kernels="default"` is what LiteRT does out of the box: its built-in kernels with
the XNNPACK delegate applied to what XNNPACK supports. `kernels="builtin"` runs
only the built-in kernels (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`).
"""

import os
import re

import numpy as np

from tflite_export.errors import InvalidTFLiteFileError, missing_dependency

KERNELS = ("default", "builtin")
_IDENTIFIER = b"TFL3"


def check_kernels(kernels):
    """Raises `ValueError` unless `kernels` is one of `KERNELS`."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}. Received: kernels={kernels!r}")


def invalid_file(reason, where=None):
    """Builds the error for content that is not a loadable LiteRT file."""
    source = f" {where!r}" if where else ""
    return InvalidTFLiteFileError(
        f"Not a loadable LiteRT (TFLite) file{source}: {reason}. Pass the path of a "
        "`.tflite` file written by `tflite_export.export` or another TFLite converter."
    )


def read_model(tflite):
    """Returns the bytes of a LiteRT model.

    Args:
        tflite: a path (`str` or `os.PathLike`), the file's bytes, or an object
            with a `path` attribute (an `ExportResult`).

    Returns:
        The flatbuffer as `bytes`.

    Raises:
        TypeError: `tflite` is none of the above.
        FileNotFoundError: the path does not exist.
        InvalidTFLiteFileError: the content lacks the TFLite file identifier.
    """
    where = None
    if hasattr(tflite, "path") and not isinstance(tflite, (str, bytes, os.PathLike)):
        tflite = tflite.path
    if isinstance(tflite, (str, os.PathLike)):
        where = os.fspath(tflite)
        if not os.path.isfile(where):
            raise FileNotFoundError(
                f"No LiteRT file at {where!r}. Pass the path returned in ExportResult.path."
            )
        with open(where, "rb") as f:
            content = f.read()
    elif isinstance(tflite, (bytes, bytearray, memoryview)):
        content = bytes(tflite)
    else:
        raise TypeError(
            "Expected a path to a .tflite file, its bytes, or an ExportResult. "
            f"Received: {type(tflite).__name__}"
        )
    if len(content) < 8 or content[4:8] != _IDENTIFIER:
        raise invalid_file(f"{len(content)} bytes without the 'TFL3' file identifier", where)
    return content


def load(content, kernels="default", num_threads=None):
    """Creates an interpreter and allocates its tensors.

    Args:
        content: the flatbuffer bytes.
        kernels: `"default"` (XNNPACK delegate as LiteRT applies it) or
            `"builtin"` (built-in kernels only).
        num_threads: CPU threads for the interpreter; `None` lets LiteRT choose.

    Returns:
        An allocated `ai_edge_litert.interpreter.Interpreter`.

    Raises:
        InvalidTFLiteFileError: the runtime cannot read the model.
        RuntimeError: the runtime reads it but cannot prepare it with these kernels.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as error:
        raise missing_dependency("ai-edge-litert", "the LiteRT interpreter", error) from error

    check_kernels(kernels)
    resolver = (
        OpResolverType.AUTO
        if kernels == "default"
        else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    try:
        interpreter = Interpreter(
            model_content=content,
            num_threads=num_threads,
            experimental_op_resolver_type=resolver,
        )
    except ValueError as error:
        raise invalid_file(str(error).strip()) from None
    interpreter.allocate_tensors()
    return interpreter


def _numbered(details, pattern):
    """Orders tensor details by the number in their name, where all names match."""
    keys = []
    for d in details:
        m = re.fullmatch(pattern, d["name"])
        if not m:
            return list(details)
        keys.append(int(m.group(1) or 0))
    return [d for _, d in sorted(zip(keys, details, strict=True), key=lambda p: p[0])]


def _quant(detail):
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", ()), dtype=np.float64)
    zeros = np.asarray(params.get("zero_points", ()), dtype=np.float64)
    if scales.size == 0 or not np.any(scales):
        return None
    return scales, zeros


class Runner:
    """Runs one sample at a time through a LiteRT file with float inputs and outputs.

    Inputs are matched to the model's inputs by order (`input_0`, `input_1`, ...
    for files written by `export`). Integer-quantized inputs are quantized and
    integer-quantized outputs dequantized with the tensor's scale and zero point.

    Args:
        content: the flatbuffer bytes.
        kernels: `"default"` or `"builtin"`.
        num_threads: CPU threads for the interpreter.
    """

    def __init__(self, content, kernels="default", num_threads=None):
        self.kernels = kernels
        self.interpreter = load(content, kernels, num_threads)
        self.inputs = _numbered(
            self.interpreter.get_input_details(), r"(?:serving_default_)?input_(\d+)(?::0)?"
        )
        self.outputs = _numbered(
            self.interpreter.get_output_details(),
            r"(?:StatefulPartitioned)?Identity(?:_(\d+))?(?::0)?",
        )

    def set_inputs(self, sample):
        """Sets each input from a float (or integer-id) array with the input's shape."""
        for detail, value in zip(self.inputs, sample, strict=True):
            value = np.asarray(value)
            q = _quant(detail)
            dtype = detail["dtype"]
            if q is not None and np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                value = np.round(value / q[0] + q[1])
                value = np.clip(value, info.min, info.max)
            self.interpreter.set_tensor(
                detail["index"], value.astype(dtype).reshape(detail["shape"])
            )

    def get_outputs(self):
        """Returns the outputs as float32 arrays (dequantized where integer-quantized)."""
        results = []
        for detail in self.outputs:
            value = self.interpreter.get_tensor(detail["index"])
            q = _quant(detail)
            if q is not None and np.issubdtype(value.dtype, np.integer):
                value = (value.astype(np.float64) - q[1]) * q[0]
            results.append(np.asarray(value, dtype=np.float32))
        return results

    def run(self, sample):
        """Runs one sample (a list with one array per input); returns the outputs."""
        self.set_inputs(sample)
        self.interpreter.invoke()
        return self.get_outputs()

    def example_inputs(self, seed=0):
        """Inputs for timing and smoke runs: random normal floats, zeros for integer ids."""
        rng = np.random.default_rng(seed)
        sample = []
        for detail in self.inputs:
            shape = tuple(detail["shape"])
            if _quant(detail) is not None or np.issubdtype(detail["dtype"], np.floating):
                sample.append(rng.standard_normal(shape).astype(np.float32))
            else:
                sample.append(np.zeros(shape, detail["dtype"]))
        return sample


def smoke_test(content, kernels="default"):
    """Loads a file and runs one inference.

    Args:
        content: the flatbuffer bytes.
        kernels: `"default"` or `"builtin"`.

    Returns:
        `None` if it ran, else the runtime's error message.
    """
    try:
        runner = Runner(content, kernels)
        runner.run(runner.example_inputs())
    except (RuntimeError, ValueError) as error:
        message = " ".join(str(error).split())
        return re.sub(r"(?<=\S)(failed to delegate|Node number)", r"; \1", message)
    return None


def predict(tflite, x, kernels="default"):
    """Runs a LiteRT file on a batch of inputs, one sample at a time.

    Float inputs are quantized for int8-input files and int8 outputs are
    dequantized, so the results are in the model's float units.

    Args:
        tflite: path to a `.tflite` file, its bytes, or an `ExportResult`.
        x: inputs with samples first (a list of arrays for several inputs).
        kernels: `"default"` (XNNPACK delegate) or `"builtin"`.

    Returns:
        One float32 array (samples first) per output; a single array if the
        model has one output.

    Raises:
        FileNotFoundError: the file does not exist.
        InvalidTFLiteFileError: it is not a LiteRT file.
        ValueError: `x` does not match the file's inputs.

    Example:

    ```python
    logits = te.predict("model.tflite", x_val)
    accuracy = (logits.argmax(-1) == y_val).mean()
    ```
    """
    check_kernels(kernels)
    runner = Runner(read_model(tflite), kernels)
    listed = isinstance(x, (list, tuple))
    several = listed and (len(runner.inputs) > 1 or (len(x) == 1 and hasattr(x[0], "shape")))
    arrays = list(x) if several else [x]
    arrays = [np.asarray(a) for a in arrays]
    if len(arrays) != len(runner.inputs):
        raise ValueError(f"The file has {len(runner.inputs)} inputs; x holds {len(arrays)} arrays.")
    for detail, array in zip(runner.inputs, arrays, strict=True):
        expected = tuple(int(d) for d in detail["shape"][1:])
        if array.shape[1:] != expected or array.shape[0] != arrays[0].shape[0]:
            raise ValueError(
                f"Input {detail['name']!r} expects samples of shape {expected}. "
                f"Received shape {array.shape}."
            )
    results = None
    for i in range(arrays[0].shape[0]):
        outputs = runner.run([a[i : i + 1] for a in arrays])
        if results is None:
            results = [np.empty((arrays[0].shape[0], *o.shape[1:]), np.float32) for o in outputs]
        for store, value in zip(results, outputs, strict=True):
            store[i] = value[0]
    return results[0] if len(results) == 1 else results
