"""The training set-up that L-C, distillation and the command line share.

`compile_like` compiles a new model (a penalised copy, a `Distiller`) with
the user's own training set-up: the same optimizer class and configuration
(a fresh instance, so no slot state is shared), the same loss and the same
metrics. `check_finite_data` and `check_finite_losses` are the checks every
training path makes, so that non-finite data or a diverged fit stops with an
error instead of producing a model of NaN weights.
"""

import math

import keras
import numpy as np


def _fresh(metrics):
    """The same metrics, as new instances where they are `keras.metrics.Metric` objects.

    New instances share no state with the given ones.
    """

    def fresh(metric):
        if isinstance(metric, keras.metrics.Metric):
            return metric.__class__.from_config(metric.get_config())
        return metric

    return keras.tree.map_structure(fresh, metrics) if metrics is not None else None


def compile_like(model, source, metrics=True):
    """Compiles `model` with `source`'s training set-up: a fresh optimizer, its loss and the rest.

    The optimizer is a new instance of the same class and configuration (no
    slot state is shared), metric objects are new instances, and the loss,
    loss weights, `run_eagerly`, `steps_per_execution` and `jit_compile` are
    those `source` was compiled with.

    Args:
        model: the `keras.Model` to compile.
        source: a compiled `keras.Model` whose set-up is copied.
        metrics: also copy the metrics (and weighted metrics) `source` was compiled with.

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
        loss_weights=config.get("loss_weights"),
        metrics=_fresh(config.get("metrics")) if metrics else None,
        weighted_metrics=_fresh(config.get("weighted_metrics")) if metrics else None,
        run_eagerly=config.get("run_eagerly", False),
        steps_per_execution=config.get("steps_per_execution", 1),
        jit_compile=config.get("jit_compile", "auto"),
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
