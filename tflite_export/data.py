"""Input specifications of a Keras model and validation of data against them.

Shared by `export` (representative data) and `verify` (inputs). Needs no
TensorFlow: it reads `model.inputs`, which every backend provides.
"""

import dataclasses

import keras
import numpy as np

MAX_CALIBRATION_SAMPLES = 500


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape without the batch axis, and dtype name.

    `path` is where the input sits in the structure the model takes (`("token_ids",)`
    for a dict input, `(1,)` for the second of a list); `name` is the dict key path
    (`"token_ids"`) for inputs taken in a dict, else the input tensor's name.
    """

    name: str
    shape: tuple
    dtype: str
    path: tuple = ()

    @property
    def is_float(self):
        return np.issubdtype(np.dtype(self.dtype), np.floating)


def input_structure(model):
    """The model's inputs in the structure it takes them.

    Args:
        model: a built `keras.Model`.

    Returns:
        A `KerasTensor`, or a list, tuple or dict (possibly nested) of them, as
        the model is called: `model(pack(model, flat_inputs))`.
    """
    try:
        structure = model.input
    except (AttributeError, ValueError):
        structure = None
    if structure is None:
        inputs = list(getattr(model, "inputs", None) or ())
        return inputs[0] if len(inputs) == 1 else inputs
    return structure


def pack(model, flat):
    """Arranges one array per input (in `input_specs` order) as the model takes them."""
    return keras.tree.pack_sequence_as(input_structure(model), list(flat))


def _spec_name(path, tensor):
    if any(isinstance(p, str) for p in path):
        return "/".join(str(p) for p in path)
    return tensor.name


def input_specs(model):
    """Reads the input specifications of a Keras model.

    Args:
        model: a built `keras.Model`.

    Returns:
        A list of `InputSpec`, in the order of `model.inputs` (the flattened
        input structure: dict keys sorted).

    Raises:
        ValueError: the model has no defined inputs, or an input has unknown
            dimensions besides the batch.
    """
    try:
        flat = keras.tree.flatten_with_path(input_structure(model))
    except (AttributeError, ValueError):
        flat = []
    if not flat:
        raise ValueError(
            f"The model {getattr(model, 'name', model)!r} has no defined inputs. Export needs "
            "a Functional or Sequential model built with `keras.Input(shape=...)`."
        )
    specs = []
    for path, tensor in flat:
        name = _spec_name(path, tensor)
        shape = tuple(tensor.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(
                f"Input {name!r} has unknown dimensions: shape {tuple(tensor.shape)}. LiteRT "
                "export traces fixed shapes besides the batch (the converter's integer "
                "calibration and XNNPACK need them): build the model on inputs that give every "
                "dimension, e.g. `keras.Input(shape=(16,), dtype='int32', name="
                f"{name.split('/')[-1]!r})` for sequences padded to 16 tokens, and call the "
                "layer (or backbone) on them."
            )
        specs.append(InputSpec(name, tuple(int(d) for d in shape), str(tensor.dtype), tuple(path)))
    return specs


def _lookup(x, spec, what):
    value = x
    for depth, key in enumerate(spec.path):
        if isinstance(key, str):
            if not isinstance(value, dict):
                raise TypeError(
                    f"{what} must be a dict with key {key!r} (input {spec.name!r}), in the "
                    f"structure the model takes. Received: {type(value).__name__}"
                )
            if key not in value:
                where = "/".join(str(p) for p in spec.path[:depth]) or "the top level"
                raise ValueError(
                    f"{what} lacks input {spec.name!r}: no key {key!r} at {where}. "
                    f"Received keys: {sorted(map(str, value))}. Pass one array per model "
                    "input, keyed as the model's inputs are."
                )
        elif not isinstance(value, (list, tuple)) or key >= len(value):
            raise ValueError(
                f"{what} lacks input {spec.name!r}: expected a list or tuple with an item at "
                f"index {key}, in the structure the model takes. Received: "
                f"{type(value).__name__}"
            )
        value = value[key]
    return value


def _flat_arrays(x, specs, what):
    if any(isinstance(p, str) for s in specs for p in s.path):
        return [_lookup(x, s, what) for s in specs]
    if isinstance(x, dict):
        missing = [s.name for s in specs if s.name not in x]
        if missing:
            raise ValueError(
                f"{what} lacks inputs {missing}. Received keys: {sorted(map(str, x))}. Pass "
                "one array per model input, keyed by input name, or a list in input order."
            )
        return [x[s.name] for s in specs]
    if isinstance(x, (list, tuple)) and (
        len(specs) > 1 or (len(x) == 1 and hasattr(x[0], "shape"))
    ):
        return list(x)
    return [x]


def as_input_list(x, specs, what="x"):
    """Checks data against input specifications and returns one array per input.

    Args:
        x: the inputs with a leading sample axis, in the structure the model
            takes them: an array (one input), a list/tuple of arrays (one per
            input), or a dict of arrays keyed as the model's inputs. A model
            taking a dict also accepts the flat list in `specs` order.
        specs: the model's `InputSpec` list.
        what: the argument name used in error messages.

    Returns:
        A list of NumPy arrays with the inputs' dtypes, all with the same number
        of samples.

    Raises:
        TypeError: the data is not numeric, or floats are given for an integer input.
        ValueError: wrong number of inputs, a missing input, wrong shapes, or no samples.
    """
    if (
        isinstance(x, (list, tuple))
        and len(x) == len(specs)
        and not any(isinstance(a, (dict, list, tuple)) for a in x)
        and (len(specs) > 1 or hasattr(x[0], "shape"))
    ):
        arrays = list(x)  # the flat list, in `specs` order, whatever the structure
    else:
        arrays = _flat_arrays(x, specs, what)
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
