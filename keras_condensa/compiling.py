"""The training set-up that L-C, distillation and the command line share.

`compile_like` compiles a new model (a penalised copy, a `Distiller`) with
the user's own training set-up: the same optimizer class and configuration
(a fresh instance, so no slot state is shared), the same loss and the same
metrics. `check_finite_data` and `check_finite_losses` are the checks every
training path makes, so that non-finite data or a diverged fit stops with an
error instead of producing a model of NaN weights.
"""

import math

import numpy as np


def compile_like(model, source, metrics=True):
    """Compiles `model` with a fresh copy of `source`'s optimizer, its loss and metrics.

    Args:
        model: the `keras.Model` to compile.
        source: a compiled `keras.Model` whose set-up is copied.
        metrics: also copy the metrics `source` was compiled with.

    Returns:
        `model`, compiled.

    Example:

    ```python
    distiller = compile_like(kc.Distiller(student, teacher), student)
    ```
    """
    optimizer = source.optimizer
    config = getattr(getattr(source, "_compile_config", None), "config", None) or {}
    model.compile(
        optimizer=optimizer.__class__.from_config(optimizer.get_config()),
        loss=source.loss,
        metrics=config.get("metrics") if metrics else None,
    )
    return model


def check_finite_data(name, array):
    """Raises unless a numeric array holds only finite values.

    Args:
        name: how the error names the array (e.g. `"x"`, `"x_train"`).
        array: the array (non-numeric arrays are not checked).

    Raises:
        ValueError: naming the array, how many values are NaN or infinite and
            the first sample that holds one.

    Example:

    >>> check_finite_data("x", np.array([[0.0, float("nan")]]))
    Traceback (most recent call last):
    ...
    ValueError: x holds 1 non-finite value (NaN or infinity), first in sample 0. ...
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return
    bad = ~np.isfinite(array)
    count = int(bad.sum())
    if count:
        first = int(np.argmax(bad.reshape(len(array), -1).any(axis=1))) if array.ndim else 0
        raise ValueError(
            f"{name} holds {count} non-finite value{'s' if count > 1 else ''} (NaN or "
            f"infinity), first in sample {first}. Training on it makes every weight NaN: drop "
            "or impute those samples first."
        )


def check_finite_losses(history, what="fine-tuning"):
    """Raises if a `fit` history has a non-finite loss.

    Args:
        history: the `keras.callbacks.History` that `fit` returned.
        what: how the error names the training.

    Raises:
        FloatingPointError: the loss became NaN or infinite; the message
            gives the epoch.
    """
    for epoch, value in enumerate(history.history.get("loss", [])):
        if not math.isfinite(float(value)):
            raise FloatingPointError(
                f"{what} diverged: the loss is {float(value)} at epoch {epoch + 1}. Check the "
                "data for NaN or infinite values, or lower the learning rate."
            )
