"""Callbacks that run a scheme's updates during `fit`: masks on schedule, exact zeros."""

import warnings

import keras

from keras_condensa import masking
from keras_condensa.operators.base import Operator
from keras_condensa.operators.compose import Compose
from keras_condensa.tensorboard_logs import CompressionSummaries


def scheme_of(model):
    """The scheme a wrapped model runs, rebuilt from its wrappers.

    Also works after loading a `.keras` file.

    Args:
        model: a model returned by `scheme.apply` (or loaded from its `.keras` file).

    Returns:
        The operator, or a `kc.Compose` of the operators.

    Raises:
        ValueError: the model has no `kc.CompressionWrapper`.

    Example:

    ```python
    loaded = keras.saving.load_model("pruned.keras")
    kc.scheme_of(loaded)      # e.g. Prune(density=0.1, ...)
    loaded.fit(x, y, callbacks=kc.callbacks(loaded))
    ```
    """
    operators = masking.operators_of(model)
    if not operators:
        raise ValueError(
            f"Model '{model.name}' has no compressed layers: pass the model scheme.apply(model) "
            "returned (or loaded from its .keras file), not the original."
        )
    return operators[0] if len(operators) == 1 else Compose(operators)


class UpdateMasks(keras.callbacks.Callback):
    """Updates a scheme's masks on its schedules.

    On a step where an operator's schedule is due, its masks are recomputed at
    the schedule's sparsity, the newly pruned weights are zeroed, and so is
    the optimizer state (momentum, Adam moments) that would move them again:
    pruned weights get zero gradient, so they then stay exactly zero with no
    per-step work. It warns when a fit will not (or did not) reach a
    schedule's target.

    Args:
        scheme: the operator or `kc.Compose` that was applied to the model,
            or the wrapped model itself (its scheme is read from its
            wrappers, so a model loaded from `.keras` continues training).
        total_steps: the steps of the whole run when it is split over
            several `fit` calls that share this callback (`None`: each fit
            is a run of its own). Schedules given as fractions are spread over
            the whole run, and the first fit's step starts it.
    """

    def __init__(self, scheme, total_steps=None):
        super().__init__()
        if total_steps is not None and (
            isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
        ):
            raise ValueError(
                f"total_steps must be a positive int or None. Received: total_steps={total_steps!r}"
            )
        self.total_steps = total_steps
        self._run_start = None
        if isinstance(scheme, keras.Model):
            scheme = scheme_of(scheme)
        if not isinstance(scheme, Operator):
            raise TypeError(
                f"UpdateMasks takes a keras_condensa scheme or the model it was applied to. "
                f"Received: {scheme!r}"
            )
        self.scheme = scheme
        self._scheduled = {
            index: op for index, op in enumerate(scheme.operators()) if op.schedule is not None
        }

    def on_train_begin(self, logs=None):
        model = self.model
        if not any(True for _ in masking.iter_wrappers(model)):
            raise ValueError(
                f"Model '{model.name}' has no pruned layers: fit the model returned by "
                "scheme.apply(model), not the original."
            )
        count = len(masking.operators_of(model))
        if count != len(self.scheme.operators()):
            raise ValueError(
                f"Model '{model.name}' runs {count} operators but the scheme given to the "
                f"callbacks has {len(self.scheme.operators())}: {self.scheme!r}. Pass the scheme "
                "that was applied, or the model itself: kc.callbacks(model)."
            )
        optimizer = getattr(model, "optimizer", None)
        now = int(optimizer.iterations.numpy()) if optimizer else 0
        if self._run_start is None or self.total_steps is None:
            self._run_start = now
            self._reached = dict.fromkeys(self._scheduled, 0.0)
            self._warned = set()
        self._start = self._run_start
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        self._total = self.total_steps or (epochs * steps if epochs and steps else None)
        self._resolved = {
            index: op.schedule.resolve(self._total) for index, op in self._scheduled.items()
        }
        self._epoch_start = now
        self._step = now - 1
        if self._total is not None and now == self._start:
            last = self._total - 1
            for index, schedule in self._resolved.items():
                local = self._local(index, self._start + last)
                if schedule.end_step is not None and local < schedule.end_step:
                    self._warn(index, schedule.sparsity(local))

    def _local(self, index, step):
        """The step as the schedule counts it: within this fit for fractions."""
        return step - self._start if self._scheduled[index].schedule.in_fractions else step

    def _warn(self, index, reached):
        self._warned.add(index)
        schedule = self._resolved[index]
        warnings.warn(
            f"{type(self._scheduled[index]).__name__} will reach sparsity {reached:.3f}, "
            "not its target "
            f"{schedule.final_sparsity:.3f}: the schedule ends at step {schedule.end_step} but "
            f"this fit runs {self._total} steps (from step {self._start}). Train longer, lower "
            "end_step, or give it as a fraction of the run (end_step=1.0).",
            stacklevel=2,
        )

    def target_sparsity(self):
        """`{operator index: sparsity}` each schedule asks for at the last batch's step.

        Read during `fit` (by `CompressionSummaries`); an operator's index is
        its place in `scheme.operators()`.
        """
        return {
            index: float(schedule.sparsity(self._local(index, self._step)))
            for index, schedule in self._resolved.items()
        }

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._step + 1

    def on_train_batch_begin(self, batch, logs=None):
        self._step = self._epoch_start + batch
        due = {}
        for index, schedule in self._resolved.items():
            local = self._local(index, self._step)
            if schedule.should_prune(local):
                due[index] = (local, schedule)
                self._reached[index] = schedule.sparsity(local)
        if due:
            masking.update(self.model, due)

    def on_train_end(self, logs=None):
        if self.total_steps is not None and self._step < self._start + self.total_steps - 1:
            return  # the run goes on in the next fit
        for index, schedule in self._resolved.items():
            if index not in self._warned and self._reached[index] < schedule.final_sparsity - 1e-6:
                self._warn(index, self._reached[index])


def callbacks(scheme, total_steps=None, log_dir=None, update_freq="epoch"):
    """Returns the callbacks that run `scheme`'s updates (pruning schedules) during `fit`.

    With `log_dir`, they also write TensorBoard scalars (tfmot's
    `PruningSummaries`): each wrapped layer's density, the model's, and the
    sparsity each schedule asks for, into `log_dir/compression` (see
    `keras_condensa.tensorboard_logs.CompressionSummaries`). Only the
    `tensorboard` package is needed, not TensorFlow, so this works on every
    backend; pass the same `log_dir` to `keras.callbacks.TensorBoard` (on
    TensorFlow) to see the losses beside them.

    Args:
        scheme: the operator or `kc.Compose` that was applied, or the
            wrapped model (its scheme is read from its wrappers).
        total_steps: the steps of the whole run when one run is split over
            several `fit` calls given these same callbacks (see `UpdateMasks`).
        log_dir: optional directory for TensorBoard event files.
        update_freq: with `log_dir`: `"epoch"` (default) or a number of
            batches between writes.

    Returns:
        A list of `keras.callbacks.Callback`.

    Raises:
        ImportError: `log_dir` is given and the `tensorboard` package is
            missing (`pip install tensorboard`).
        ValueError: a bad `total_steps` or `update_freq`.

    Example:

    ```python
    pruned.fit(x, y, epochs=5, callbacks=kc.callbacks(scheme, log_dir="logs/pruning"))
    # tensorboard --logdir logs
    ```
    """
    updates = UpdateMasks(scheme, total_steps=total_steps)
    if log_dir is None:
        return [updates]
    return [updates, CompressionSummaries(updates, log_dir, update_freq=update_freq)]
