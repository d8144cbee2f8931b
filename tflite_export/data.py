"""Input specifications of a Keras model and validation of data against them.

Shared by `export` (representative data) and `verify` (inputs). Needs no
TensorFlow: it reads `model.inputs`, which every backend provides.
"""

import dataclasses

import numpy as np

MAX_CALIBRATION_SAMPLES = 500


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape without the batch axis, and dtype name."""

    name: str
    shape: tuple
    dtype: str

    @property
    def is_float(self):
        return np.issubdtype(np.dtype(self.dtype), np.floating)


def input_specs(model):
    """Reads the input specifications of a Keras model.

    Args:
        model: a built `keras.Model`.

    Returns:
        A list of `InputSpec`, in the order of `model.inputs`.

    Raises:
        ValueError: the model has no defined inputs, or an input has unknown
            dimensions besides the batch.
    """
    try:
        inputs = list(model.inputs or ())
    except (AttributeError, ValueError):
        inputs = []
    if not inputs:
        raise ValueError(
            f"The model {getattr(model, 'name', model)!r} has no defined inputs. Export needs "
            "a Functional or Sequential model built with `keras.Input(shape=...)`."
        )
    specs = []
    for tensor in inputs:
        shape = tuple(tensor.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(
                f"Input {tensor.name!r} has unknown dimensions: shape {tuple(tensor.shape)}. "
                "LiteRT export needs fixed shapes besides the batch: rebuild the model "
                "with `keras.Input(shape=...)` giving every dimension."
            )
        specs.append(InputSpec(tensor.name, tuple(int(d) for d in shape), str(tensor.dtype)))
    return specs


def as_input_list(x, specs, what="x"):
    """Checks data against input specifications and returns one array per input.

    Args:
        x: an array (one input), or a list/tuple of arrays (one per input), with
            a leading sample axis.
        specs: the model's `InputSpec` list.
        what: the argument name used in error messages.

    Returns:
        A list of NumPy arrays with the inputs' dtypes, all with the same number
        of samples.

    Raises:
        TypeError: the data is not numeric, or floats are given for an integer input.
        ValueError: wrong number of inputs, wrong shapes, or no samples.
    """
    if isinstance(x, dict):
        missing = [s.name for s in specs if s.name not in x]
        if missing:
            raise ValueError(f"{what} lacks inputs {missing}. Received keys: {sorted(x)}")
        arrays = [x[s.name] for s in specs]
    elif isinstance(x, (list, tuple)) and (
        len(specs) > 1 or (len(x) == 1 and hasattr(x[0], "shape"))
    ):
        arrays = list(x)
    else:
        arrays = [x]
    if len(arrays) != len(specs):
        raise ValueError(
            f"{what} must hold one array per model input ({len(specs)}: "
            f"{[s.name for s in specs]}). Received {len(arrays)} arrays."
        )
    result = []
    for spec, value in zip(specs, arrays, strict=True):
        try:
            array = np.asarray(value)
        except Exception as error:  # noqa: BLE001 - ragged lists and friends
            raise TypeError(f"{what} for input {spec.name!r} is not an array: {error}") from None
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"{what} for input {spec.name!r} must be numeric; the input expects "
                f"{spec.dtype}. Received dtype {array.dtype}."
            )
        if not spec.is_float and array.dtype.kind == "f":
            raise TypeError(
                f"{what} for input {spec.name!r} holds floats ({array.dtype}) but the input "
                f"expects {spec.dtype} (ids): pass integer data."
            )
        expected = (None, *spec.shape)
        if array.shape[1:] != spec.shape:
            raise ValueError(
                f"{what} for input {spec.name!r} must have shape {expected} "
                f"(samples first). Received shape {array.shape}."
            )
        if array.shape[0] == 0:
            raise ValueError(f"{what} for input {spec.name!r} has no samples.")
        result.append(array.astype(spec.dtype, copy=False))
    counts = {a.shape[0] for a in result}
    if len(counts) > 1:
        raise ValueError(f"{what} inputs have different numbers of samples: {sorted(counts)}")
    return result


def calibration_subset(arrays, limit=MAX_CALIBRATION_SAMPLES):
    """At most `limit` samples, evenly spaced, so that sorted data stays representative."""
    n = arrays[0].shape[0]
    if n <= limit:
        return arrays
    index = np.linspace(0, n - 1, limit).round().astype(int)
    return [a[index] for a in arrays]
