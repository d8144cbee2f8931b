"""Accept a Keras model or a `.keras` file wherever a model is expected."""

import importlib
import os

import keras


def custom_object_modules(model):
    """Modules that define the model's custom serializable classes (not Keras's own).

    A process that loads the model's `.keras` file (the TensorFlow-backend
    export worker) imports them first, so that the classes are registered.
    `tflite_export` names no library: the model says where its classes live.
    Classes defined in `__main__` are left out (no other process can import them).

    Args:
        model: a `keras.Model`.

    Returns:
        A sorted list of module names.
    """
    found = set()
    pending = [keras.saving.serialize_keras_object(model)]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            module = item.get("module")
            if (
                item.get("registered_name")
                and isinstance(module, str)
                and module.split(".")[0] not in ("keras", "builtins", "__main__")
            ):
                found.add(module)
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return sorted(found)


def import_modules(names):
    """Imports `names` (from `custom_object_modules`) so their classes deserialize.

    Raises:
        ValueError: a module cannot be imported here.
    """
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ValueError(
                f"The model's custom classes come from module {name!r}, which cannot be "
                f"imported here ({error}). Make it importable (installed, or on PYTHONPATH) "
                "or export under KERAS_BACKEND=tensorflow."
            ) from None


def load_model(model, what="model"):
    """Returns a `keras.Model`, loading it first if given a `.keras` path.

    Args:
        model: a `keras.Model`, or a path (`str`/`os.PathLike`) to a `.keras` file.
        what: the argument name used in error messages.

    Returns:
        The `keras.Model`.

    Raises:
        TypeError: `model` is neither.
        FileNotFoundError: the path does not exist.
        ValueError: the path is not a `.keras` file, or does not load.
    """
    if isinstance(model, keras.Model):
        return model
    path = check_model_path(model, what)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - load_model raises many types
        raise ValueError(
            f"Cannot load {what} from {path!r}: {error}. Custom layers must be registered "
            "with keras.saving.register_keras_serializable, and the module that registers "
            "them imported, before loading."
        ) from None


def check_model_path(model, what="model"):
    """Validates a `.keras` path; returns it as `str`."""
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"{what} must be a keras.Model or a path to a .keras file. "
            f"Received: {type(model).__name__}"
        )
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}. Save one with model.save(path).")
    if not path.endswith(".keras"):
        raise ValueError(
            f"{what} path must be a Keras v3 `.keras` file (model.save('model.keras')). "
            f"Received: {path!r}"
        )
    return path
