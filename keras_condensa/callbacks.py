"""Callbacks that prune during `fit`: mask updates on schedule, exact zeros."""

import warnings

import keras

from keras_condensa import masking
from keras_condensa.operators.base import Operator


class UpdateMasks(keras.callbacks.Callback):
    """Updates a scheme's masks on its schedules.

    On a step where an operator's schedule is due, its masks are recomputed at
    the schedule's sparsity, the newly pruned weights are zeroed, and so is
    the optimizer state (momentum, Adam moments) that would move them again:
    pruned weights get zero gradient, so they then stay exactly zero with no
    per-step work. It warns when a fit will not (or did not) reach a
    schedule's target.

    Args:
        scheme: the operator or `kc.Compose` that was applied to the model.
    """

    def __init__(self, scheme):
        super().__init__()
        if not isinstance(scheme, Operator):
            raise TypeError(f"UpdateMasks takes a keras_condensa scheme. Received: {scheme!r}")
        self.scheme = scheme
        self._scheduled = [op for op in scheme.operators() if op.schedule is not None]

    def on_train_begin(self, logs=None):
        model = self.model
        if not any(True for _ in masking.iter_wrappers(model)):
            raise ValueError(
                f"Model '{model.name}' has no pruned layers: fit the model returned by "
                "scheme.apply(model), not the original."
            )
        optimizer = getattr(model, "optimizer", None)
        self._start = int(optimizer.iterations.numpy()) if optimizer else 0
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        self._total = epochs * steps if epochs and steps else None
        self._resolved = {op: op.schedule.resolve(self._total) for op in self._scheduled}
        self._epoch_start = self._start
        self._step = self._start - 1
        self._reached = {op: 0.0 for op in self._scheduled}
        self._warned = set()
        if self._total is not None:
            last = self._total - 1
            for op, schedule in self._resolved.items():
                if schedule.end_step is not None and self._local(op, self._start + last) < schedule.end_step:
                    self._warn(op, schedule.sparsity(self._local(op, self._start + last)))

    def _local(self, op, step):
        """The step as the schedule counts it: within this fit for fractions."""
        return step - self._start if op.schedule.in_fractions else step

    def _warn(self, op, reached):
        self._warned.add(op)
        schedule = self._resolved[op]
        warnings.warn(
            f"{type(op).__name__} will reach sparsity {reached:.3f}, not its target "
            f"{schedule.final_sparsity:.3f}: the schedule ends at step {schedule.end_step} but "
            f"this fit runs {self._total} steps (from step {self._start}). Train longer, lower "
            "end_step, or give it as a fraction of the run (end_step=1.0).",
            stacklevel=2,
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._step + 1

    def on_train_batch_begin(self, batch, logs=None):
        self._step = self._epoch_start + batch
        densities = {}
        for op, schedule in self._resolved.items():
            local = self._local(op, self._step)
            if schedule.should_prune(local):
                sparsity = schedule.sparsity(local)
                densities[op] = 1.0 - sparsity
                self._reached[op] = sparsity
        if densities:
            for op in self.scheme.operators():
                if op.prunes:
                    densities.setdefault(op, None if op in self._resolved else op.density)
            for op in self._resolved:
                densities[op] = densities.get(op) or 1.0 - self._reached[op]
            masking.update_masks(self.scheme, self.model, densities)

    def on_train_end(self, logs=None):
        for op, schedule in self._resolved.items():
            if op not in self._warned and self._reached[op] < schedule.final_sparsity - 1e-6:
                self._warn(op, self._reached[op])


def callbacks(scheme):
    """Returns the callbacks that prune `scheme`'s model during `fit`.

    Args:
        scheme: the operator or `kc.Compose` that was applied.

    Returns:
        A list of `keras.callbacks.Callback`.

    Example:

    ```python
    pruned.fit(x, y, epochs=5, callbacks=kc.callbacks(scheme))
    ```
    """
    return [UpdateMasks(scheme)]
