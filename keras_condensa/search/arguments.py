"""The search's arguments (the tuner's, the oracle's): checked before any work, with errors
that say the fix."""

import numbers

import keras
import keras_tuner
import numpy as np

from keras_condensa.compiling import check_finite_data
from keras_condensa.masking import is_graph_model


def check_arguments(model, scheme, oracle, max_trials, fine_tune_epochs, max_time, shrink):
    """Raises `ValueError`/`TypeError` for `CompressionTuner` arguments that cannot work."""
    if (
        isinstance(max_trials, bool)
        or not isinstance(max_trials, numbers.Integral)
        or (max_trials < 1)
    ):
        raise ValueError(
            f"`max_trials` must be a positive integer. Received: max_trials={max_trials!r}."
        )
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a `keras.Model`. Received: {type(model).__name__}.")
    if not callable(scheme):
        raise TypeError(
            "`scheme` must be a callable taking a `keras_tuner.HyperParameters` and "
            "returning a scheme, e.g. lambda hp: kc.Prune(density=hp.Float("
            f'"density", 0.01, 1.0, sampling="log")). Received: {scheme!r}.'
        )
    if oracle is not None and not isinstance(oracle, keras_tuner.Oracle):
        raise TypeError(
            "`oracle` must be a `keras_tuner.Oracle` (e.g. keras_tuner.oracles."
            f"RandomSearchOracle(...)) or None. Received: {type(oracle).__name__}."
        )
    if not isinstance(fine_tune_epochs, numbers.Integral) or fine_tune_epochs < 0:
        raise ValueError(
            f"`fine_tune_epochs` must be a non-negative integer. Received: {fine_tune_epochs!r}."
        )
    if max_time is not None and not (isinstance(max_time, numbers.Real) and max_time > 0):
        raise ValueError(
            f"`max_time` must be a positive number of seconds. Received: {max_time!r}."
        )
    if not isinstance(shrink, bool):
        raise TypeError(f"`shrink` must be True or False. Received: shrink={shrink!r}.")
    if shrink and not is_graph_model(model):
        raise ValueError(
            f"shrink=True removes channels by rebuilding the model from its layer graph, "
            f"which a subclassed model ({type(model).__name__}) does not expose. Rebuild it "
            "as a functional or Sequential model, or pass shrink=False."
        )


def unpack(name, data):
    """`(x, y)` as NumPy arrays of as many samples, finite; else `ValueError` naming `name`."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            f"`{name}` must be a tuple `(x, y)` of arrays. Received: {type(data).__name__}."
        )
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"`{name}` must hold as many samples in x as in y, at least one. "
            f"Received: {len(x)} and {len(y)}."
        )
    check_finite_data(f"`{name}` x", x)
    check_finite_data(f"`{name}` y", y)
    return x, y


def to_objective(objective, oracle):
    """The `keras_tuner.Objective` of a search: `oracle`'s, else `objective` (default bytes)."""
    if oracle is not None:
        own = oracle.objective
        if objective is not None and getattr(to_objective(objective, None), "name", None) != (
            own.name
        ):
            raise ValueError(
                f"`objective` ({objective!r}) differs from the oracle's ({own.name!r}); pass "
                "the objective to the oracle only."
            )
        return own
    if objective is None:
        objective = "tflite_bytes"
    if isinstance(objective, str):
        return keras_tuner.Objective(objective, "max" if objective == "val_accuracy" else "min")
    if isinstance(objective, keras_tuner.Objective):
        return objective
    raise ValueError(
        '`objective` must be a metric name (e.g. "tflite_bytes") or a '
        f"`keras_tuner.Objective`. Received: {objective!r}."
    )


def floor(dense_accuracy, max_accuracy_drop, accuracy_floor):
    """The accuracy floor: `accuracy_floor`, else the dense accuracy minus the drop."""
    if max_accuracy_drop is not None and accuracy_floor is not None:
        raise ValueError(
            "Pass either `max_accuracy_drop` or `accuracy_floor`, not both. Received: "
            f"max_accuracy_drop={max_accuracy_drop}, accuracy_floor={accuracy_floor}."
        )
    if accuracy_floor is None:
        drop = 0.01 if max_accuracy_drop is None else max_accuracy_drop
        if not isinstance(drop, numbers.Real) or not 0 <= drop <= 1:
            raise ValueError(f"`max_accuracy_drop` must be in [0, 1]. Received: {drop!r}.")
        return float(dense_accuracy - drop)
    if not isinstance(accuracy_floor, numbers.Real) or not 0 <= accuracy_floor <= 1:
        raise ValueError(f"`accuracy_floor` must be in [0, 1]. Received: {accuracy_floor!r}.")
    if accuracy_floor > dense_accuracy:
        raise ValueError(
            f"accuracy_floor={accuracy_floor:.4f} is above the dense model's own validation "
            f"accuracy ({dense_accuracy:.4f}): no compressed model is expected to meet it. "
            "Lower the floor, or train the dense model further."
        )
    return float(accuracy_floor)


def check_objective(objective):
    """Raises `ValueError` unless `objective` is one objective (the oracle's `objective=`)."""
    if objective is None:
        raise ValueError(
            "`objective` is required: the cost to minimise under the constraint, "
            'e.g. keras_tuner.Objective("tflite_bytes", "min"). Received: objective=None.'
        )
    if isinstance(objective, (list, tuple)) or hasattr(objective, "name_to_direction"):
        raise ValueError(
            "`objective` must be a single objective (one cost; the other metric goes "
            f"in `constraint=`). Received: objective={objective!r}."
        )


def check_positive_int(name, value):
    """Raises `ValueError` unless `value` is a positive integer (argument `name`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer (at least 1). Received: {name}={value!r}."
        )
