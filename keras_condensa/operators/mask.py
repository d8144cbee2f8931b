"""`MaskOperator` and `PruningOperator`: pruning as operators with a 0/1 mask per weight.

A mask operator keeps one non-trainable mask per weight it covers (its state
`{"mask": variable}`), multiplies the weight by it in the forward pass (a
select, so a pruned entry is exactly zero and gets exactly zero gradient),
and recomputes the masks of all the weights it covers together in `update`
(a global threshold ranks every layer at once).
"""

import keras
from keras import ops

from keras_condensa.operators.base import Operator, check_density
from keras_condensa.schedules import PruningSchedule


class MaskOperator(Operator):
    """Base of the operators that zero weights through a 0/1 mask.

    Subclasses implement `paths`, `compute_masks` and `density_at`.
    """

    prunes = True
    # Whether `compute_masks` takes the model's channel dependency graph (`graph=`).
    coupled_channels = False

    def build(self, wrapper, path, variable):
        name = f"{path.replace('.', '_')}_mask"
        if any(name == v.name for v in wrapper.weights):
            name = f"{name}_{len(wrapper.weights)}"  # a second mask operator on this weight
        mask = wrapper.add_weight(
            name=name,
            shape=variable.shape,
            dtype=variable.dtype,
            initializer="ones",
            trainable=False,
        )
        return {"mask": mask}

    def transform(self, state, value, training):
        kept = ops.not_equal(state["mask"], 0)
        return ops.where(kept, value, ops.zeros((), value.dtype))

    def density_at(self, step, schedule=None):
        """The density to prune to at `step` of `schedule` (`None`: the final density)."""
        if schedule is None or step is None:
            return self.density
        return 1.0 - schedule.sparsity(step)

    def update(self, items, context):
        """Recomputes the masks of `items` at the density the schedule gives now."""
        density = self.density_at(context.step, context.schedule)
        extra = {"graph": context.graph} if self.coupled_channels else {}
        new = self.compute_masks(items, density, **extra)
        for item in items:
            for path in item.paths:
                mask = new.get((id(item.wrapper), path))
                if mask is not None:
                    context.assign(item.states[path]["mask"], mask)

    def compute_masks(self, items, density):
        """Computes masks for the covered weights.

        Args:
            items: a list of `kc.operators.Item`: `values[path]` is the weight
                as the operators before this one leave it.
            density: the density to prune to.

        Returns:
            A dict `{(id(wrapper), path): mask}` (NumPy arrays).
        """
        raise NotImplementedError


def check_schedule(schedule, density):
    """Validates a pruning schedule for `density`; returns it with its final sparsity set.

    Args:
        schedule: `None`, or a `kc.PolynomialDecay` / `kc.ConstantSparsity`.
        density: the operator's final density.

    Returns:
        `None`, or the schedule ending at sparsity `1 - density`.

    Raises:
        TypeError: `schedule` is not a `kc.PruningSchedule`.
        ValueError: its final sparsity disagrees with `density`.
    """
    if schedule is None:
        return None
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(
            "schedule must be a kc.PolynomialDecay or kc.ConstantSparsity. "
            f"Received: schedule={schedule!r}"
        )
    target = 1.0 - density
    if schedule.final_sparsity is None:
        return schedule.with_final_sparsity(target)
    if abs(schedule.final_sparsity - target) > 1e-6:
        raise ValueError(
            f"The schedule ends at sparsity {schedule.final_sparsity} but density="
            f"{density} means sparsity {target:g}. Drop final_sparsity from the "
            "schedule (the density sets it) or make them agree."
        )
    return schedule


class PruningOperator(MaskOperator):
    """Base of the pruning operators: a density, optionally reached by a schedule.

    Subclasses implement `paths` and `compute_masks`.

    Args:
        density: fraction of weights (or structures) to keep, in (0, 1].
        schedule: optional `kc.PolynomialDecay` / `kc.ConstantSparsity`; its
            final sparsity defaults to `1 - density`.
        include: see `kc.Operator`.
        exclude: see `kc.Operator`.
    """

    def __init__(self, density, schedule=None, include=None, exclude=None):
        super().__init__(include=include, exclude=exclude)
        check_density(density)
        self.density = float(density)
        schedule = check_schedule(schedule, self.density)
        self.schedule = schedule

    def get_config(self):
        config = {
            "density": self.density,
            "schedule": (
                None
                if self.schedule is None
                else keras.saving.serialize_keras_object(self.schedule)
            ),
        }
        config.update(super().get_config())
        return config

