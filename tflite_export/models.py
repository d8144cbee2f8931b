"""Accept a Keras model or a `.keras` file wherever a model is expected."""

import importlib
import os

import keras


def register_custom_layers():
    """Imports `keras_condensa`, if installed, so its wrapper classes deserialize.

    Silent when it is absent: `tflite_export` works on any Keras model.
    """
    try:
        importlib.import_module("keras_condensa")
    except ImportError:
        pass


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
    register_custom_layers()
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - load_model raises many types
        raise ValueError(
            f"Cannot load {what} from {path!r}: {error}. Custom layers must be registered "
            "with keras.saving.register_keras_serializable and imported before export."
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
