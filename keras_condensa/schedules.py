"""Pruning schedules: pure functions of the training step.

The names and meaning follow tensorflow-model-optimization (`ConstantSparsity`,
`PolynomialDecay` after Zhu and Gupta, 2017) so tfmot users feel at home, with
two differences that save days on small data sets:

- `begin_step`, `end_step` and `frequency` may be given as fractions of the
  training run (floats in [0, 1]); `kc.callbacks` resolves them when `fit`
  starts, from its epochs and steps per epoch.
- A schedule always prunes at `end_step`, even when `end_step - begin_step`
  is not a multiple of `frequency`, so the final sparsity is always reached
  by a run that gets there; a run that stops earlier is reported.
"""

import keras
import numpy as np


def _number(value):
    """A NumPy scalar as the Python int or float it holds (`np.float32(0.5)` -> `0.5`)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, np.generic):
        return value
    if isinstance(value, np.integer):
        return int(value)
    return float(value) if isinstance(value, np.floating) else value


def _check_step(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be an int (steps) or a float in [0, 1] (fraction of the run). "
            f"Received: {name}={value!r}"
        )
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name} as a float is a fraction of the training run and must be in [0, 1]; "
            f"give an int for a step count. Received: {name}={value!r}"
        )
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} must be >= 0. Received: {name}={value!r}")


def _check_sparsity(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1). Received: {name}={value!r}")


def _resolve(value, total_steps, name):
    if isinstance(value, float):
        if total_steps is None:
            raise ValueError(
                f"{name}={value} is a fraction of the training run, but the number of steps "
                "of this fit is unknown (a dataset without a length?). Pass steps_per_epoch "
                f"to fit, or give {name} as an int step count."
            )
        # A fraction of the run: 0.0 is the first step and 1.0 the last one.
        span = total_steps if name == "frequency" else total_steps - 1
        return int(round(value * span))
    return value


class PruningSchedule:
    """Base class: maps a training step to (should_prune, target sparsity).

    Subclasses implement `sparsity(step)` on resolved (integer) steps.
    """

    def __init__(self, begin_step, end_step, frequency):
        begin_step, end_step, frequency = _number(begin_step), _number(end_step), _number(frequency)
        _check_step("begin_step", begin_step)
        _check_step("end_step", end_step, allow_none=True)
        _check_step("frequency", frequency)
        if isinstance(frequency, int) and frequency < 1:
            raise ValueError(f"frequency must be >= 1 step. Received: frequency={frequency}")
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency
        self.final_sparsity = None

    @property
    def in_fractions(self):
        """Whether any step argument is a fraction of the run."""
        return any(isinstance(v, float) for v in (self.begin_step, self.end_step, self.frequency))

    def resolve(self, total_steps):
        """Returns a copy with fractions turned into step counts."""
        config = self.get_config()
        for name in ("begin_step", "end_step", "frequency"):
            if config.get(name) is not None:
                config[name] = _resolve(config[name], total_steps, name)
        config["frequency"] = max(1, config["frequency"])
        return type(self).from_config(config)

    def with_final_sparsity(self, sparsity):
        """Returns a copy whose target is `sparsity` (from the scheme's density)."""
        config = self.get_config()
        config["final_sparsity"] = sparsity
        return type(self).from_config(config)

    def should_prune(self, step):
        """Whether masks update at `step` (resolved schedules only)."""
        if step < self.begin_step or (self.end_step is not None and step > self.end_step):
            return False
        return (step - self.begin_step) % self.frequency == 0 or step == self.end_step

    def __call__(self, step):
        """Returns `(should_prune, sparsity)` at an integer step."""
        return self.should_prune(step), self.sparsity(step)

    def sparsity(self, step):
        raise NotImplementedError

    def get_config(self):
        return {
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
            "final_sparsity": self.final_sparsity,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_condensa")
class ConstantSparsity(PruningSchedule):
    """Prunes to one sparsity from `begin_step`, re-pruning every `frequency` steps.

    Args:
        target_sparsity: sparsity to hold, in [0, 1). If omitted, the scheme's
            density sets it (`1 - density`).
        begin_step: first step that prunes (int) or fraction of the run (float).
        end_step: last step that prunes; `None` for the whole run.
        frequency: steps between mask updates (int) or fraction of the run.

    Example:

    >>> s = ConstantSparsity(0.9, begin_step=0, frequency=100)
    >>> s(0), s(50)
    ((True, 0.9), (False, 0.9))
    """

    def __init__(self, target_sparsity=None, begin_step=0, end_step=None, frequency=100, **kwargs):
        super().__init__(begin_step, end_step, frequency)
        target = _number(kwargs.pop("final_sparsity", target_sparsity))
        if kwargs:
            raise TypeError(f"Unexpected arguments: {sorted(kwargs)}")
        _check_sparsity("target_sparsity", target, allow_none=True)
        self.final_sparsity = target

    def sparsity(self, step):
        return self.final_sparsity if step >= self.begin_step else 0.0


@keras.saving.register_keras_serializable(package="keras_condensa")
class PolynomialDecay(PruningSchedule):
    """Gradual pruning of Zhu and Gupta: sparsity rises as a polynomial in the step.

    `s(t) = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_1 - t_0)) ** power` between
    `begin_step` (t_0) and `end_step` (t_1), and `s_f` after.

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity at `end_step`, in [0, 1). If omitted, the
            scheme's density sets it (`1 - density`).
        begin_step: int step, or float fraction of the training run.
        end_step: int step, or float fraction of the training run.
        power: exponent of the polynomial (3, as in the paper and tfmot).
        frequency: steps (int) or fraction of the run (float) between mask updates.

    Example:

    ```python
    scheme = kc.Prune(density=0.1, schedule=kc.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.9, begin_step=0, end_step=0.8, frequency=10))
    ```
    """

    def __init__(
        self,
        initial_sparsity=0.0,
        final_sparsity=None,
        begin_step=0,
        end_step=1.0,
        power=3,
        frequency=100,
    ):
        super().__init__(begin_step, end_step, frequency)
        initial_sparsity, final_sparsity = _number(initial_sparsity), _number(final_sparsity)
        begin_step, end_step = self.begin_step, self.end_step
        if end_step is None:
            raise ValueError(
                "PolynomialDecay needs an end_step (int steps or a fraction of the run)."
            )
        _check_sparsity("initial_sparsity", initial_sparsity)
        _check_sparsity("final_sparsity", final_sparsity, allow_none=True)
        if not self.in_fractions and end_step <= begin_step:
            raise ValueError(
                "end_step must be after begin_step. "
                f"Received: begin_step={begin_step}, end_step={end_step}"
            )
        self.initial_sparsity = initial_sparsity
        self.final_sparsity = final_sparsity
        self.power = power

    def sparsity(self, step):
        if step < self.begin_step:
            return 0.0
        span = max(1, self.end_step - self.begin_step)
        progress = min(1.0, (step - self.begin_step) / span)
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        return s_f + (s_i - s_f) * (1.0 - progress) ** self.power

    def get_config(self):
        config = super().get_config()
        config.update(initial_sparsity=self.initial_sparsity, power=self.power)
        return config
