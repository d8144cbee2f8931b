"""`compile_like`: compile a model the way another one was compiled.

L-C and distillation train a new model (a penalised copy, a `Distiller`) with
the user's own training set-up: the same optimizer class and configuration
(a fresh instance, so no slot state is shared), the same loss and the same
metrics.
"""


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
