"""`Operator`: the base of compression operators, and their coverage rules.

An operator selects layers (`include=` / `exclude=`, by name or class),
says which weights of a selected layer it masks, and computes masks. A scheme
is an operator or a `Compose` of operators; `scheme.apply(model)` returns a
new model whose covered layers are wrapped (see `keras_condensa.surgery`).
"""

import numbers

import numpy as np

from keras_condensa import prunable
from keras_condensa.schedules import PruningSchedule


def _as_selector(name, value):
    if value is None:
        return ()
    if isinstance(value, (str, type)):
        value = [value]
    items = tuple(value)
    for item in items:
        if not isinstance(item, (str, type)):
            raise TypeError(
                f"{name} takes layer names (str) or layer classes. Received: {name}={value!r}"
            )
    return items


def _matches(layer, selectors):
    """Whether a selector names `layer` (its name, or its Keras path for a nested layer) or its class."""
    names = (layer.name, getattr(layer, "path", None))
    return any(s in names if isinstance(s, str) else isinstance(layer, s) for s in selectors)


def is_real(value):
    """Whether `value` is a real number: Python's or NumPy's (`np.float32(0.5)`), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_density(density, name="density"):
    """Raises unless `density` is a real number (Python or NumPy) in (0, 1]."""
    if not is_real(density) or not 0 < density <= 1:
        raise ValueError(
            f"{name} is the fraction of weights to keep and must be in (0, 1]. "
            f"Received: {name}={density!r}"
        )


class Operator:
    """Base class of compression operators.

    Subclasses say which weights of a layer they touch (`paths`) and how the
    layer's wrapper is configured for them (`wrapper_arguments`); operators
    that prune (`prunes = True`) also compute masks (`compute_masks`).

    Args:
        include: layer names or classes to cover; `None` covers every layer
            the operator supports. Naming a layer the operator cannot handle
            is an error.
        exclude: layer names or classes to leave untouched.
    """

    def __init__(self, include=None, exclude=None):
        self.include = _as_selector("include", include)
        self.exclude = _as_selector("exclude", exclude)

    # -- coverage ---------------------------------------------------------
    def selects(self, layer):
        """Whether include/exclude select this layer (support aside)."""
        if _matches(layer, self.exclude):
            return False
        return not self.include or _matches(layer, self.include)

    def names_explicitly(self, layer):
        """Whether `include=` names this layer (by name or class)."""
        return _matches(layer, self.include)

    prunes = False

    def paths(self, layer, spec):
        """Weight paths this operator touches in `layer`; subclasses override."""
        raise NotImplementedError

    def wrapper_arguments(self, layer, spec):
        """`CompressionWrapper` arguments for a covered layer (pruning: the masked weights)."""
        return {"masked_weights": self.paths(layer, spec)}

    def reason_unsupported(self, layer, spec):
        """Why this operator cannot handle `layer`, or `None` if it can."""
        if spec is None:
            return prunable.unsupported_reason(layer)
        return None

    # -- scheme protocol --------------------------------------------------
    def operators(self):
        """The flat list of operators of this scheme."""
        return [self]

    def apply(self, model):
        """Returns a new model with the covered layers wrapped.

        Masks are computed now (one-shot, like Condensa), unless the operator
        has a schedule, in which case `kc.callbacks(scheme)` prunes during `fit`.
        The input model is not modified.

        Args:
            model: a built Sequential or functional Keras 3 model.

        Returns:
            A new `keras.Model`.
        """
        from keras_condensa import surgery

        return surgery.apply_scheme(self, model)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def get_config(self):
        return {"include": list(self.include) or None, "exclude": list(self.exclude) or None}


class PruningOperator(Operator):
    """Base of the pruning operators: a density, optionally reached by a schedule.

    Subclasses implement `paths` and `compute_masks`.

    Args:
        density: fraction of weights (or structures) to keep, in (0, 1].
        schedule: optional `kc.PolynomialDecay` / `kc.ConstantSparsity`; its
            final sparsity defaults to `1 - density`.
        include: see `Operator`.
        exclude: see `Operator`.
    """

    prunes = True

    def __init__(self, density, schedule=None, include=None, exclude=None):
        super().__init__(include=include, exclude=exclude)
        check_density(density)
        self.density = float(density)
        if schedule is not None:
            if not isinstance(schedule, PruningSchedule):
                raise TypeError(
                    "schedule must be a kc.PolynomialDecay or kc.ConstantSparsity. "
                    f"Received: schedule={schedule!r}"
                )
            target = 1.0 - self.density
            if schedule.final_sparsity is None:
                schedule = schedule.with_final_sparsity(target)
            elif abs(schedule.final_sparsity - target) > 1e-6:
                raise ValueError(
                    f"The schedule ends at sparsity {schedule.final_sparsity} but density="
                    f"{density} means sparsity {target:g}. Drop final_sparsity from the "
                    "schedule (the density sets it) or make them agree."
                )
        self.schedule = schedule

    def density_at(self, step):
        """Density to prune to at `step` (`None`: the final density)."""
        if self.schedule is None or step is None:
            return self.density
        return 1.0 - self.schedule.sparsity(step)

    def compute_masks(self, items, density):
        """Computes masks for the covered layers.

        Args:
            items: list of `(wrapper, spec, paths, values)`: values maps each
                path this operator masks to its current (masked) tensor.
            density: the density to prune to.

        Returns:
            A dict `{(id(wrapper), path): mask}`.
        """
        raise NotImplementedError

    def get_config(self):
        config = {"density": self.density, "schedule": self.schedule}
        config.update(super().get_config())
        return config
