"""A bound on one metric that every acceptable trial must meet, and how trials rank under it.

The search minimises a cost (bytes, latency, nonzero parameters) *subject to*
a bound on another metric, usually an accuracy floor. A `Constraint` names the
metric and holds the bound; it is plain data (a JSON-friendly config), so it
can live in the chief's oracle while workers only report metric values.
Its `best_step` and `pareto_front` rank trials under it (the answer itself
is ranked with confidence, `search.evidence`); `trial_metric`
reads a trial's metric.
"""

import math
import numbers

_REPR_FMT = "{:.6g}"


class Constraint:
    """A lower and/or upper bound on a metric that trials report.

    A trial is feasible when its value of `name` satisfies
    `min_value <= value <= max_value` (a missing bound is not checked).

    Args:
        name: name of the metric, as reported to `Oracle.update_trial`
            (e.g. `"val_accuracy"`).
        min_value: optional lower bound (inclusive), e.g. an accuracy floor.
        max_value: optional upper bound (inclusive), e.g. a latency budget.

    Raises:
        TypeError: if `name` is not a string or a bound is not a number.
        ValueError: if `name` is empty, neither bound is given, a bound is not
            finite, or `min_value > max_value`.

    Example:

    >>> c = Constraint("val_accuracy", min_value=0.97)
    >>> c.is_satisfied(0.975), c.violation(0.95)
    (True, 0.020000000000000018)
    >>> c.direction, round(c.slack(0.975), 6)
    (1, 0.005)
    >>> c
    Constraint('val_accuracy', min_value=0.97)
    """

    def __init__(self, name, min_value=None, max_value=None):
        if not isinstance(name, str):
            raise TypeError(
                "`Constraint(name=...)` must be the name of a metric as a string. "
                f"Received: name={name!r} of type {type(name).__name__}."
            )
        if not name:
            raise ValueError(
                "`Constraint(name=...)` must be a non-empty metric name, "
                'e.g. Constraint("val_accuracy", min_value=0.97). Received: name="".'
            )
        if min_value is None and max_value is None:
            raise ValueError(
                f"`Constraint({name!r})` needs at least one bound: pass "
                "`min_value=` (a floor, e.g. an accuracy) and/or `max_value=` "
                "(a ceiling, e.g. a latency budget). Received: min_value=None, "
                "max_value=None."
            )
        self.name = name
        self.min_value = _check_bound("min_value", min_value)
        self.max_value = _check_bound("max_value", max_value)
        if (
            self.min_value is not None
            and self.max_value is not None
            and self.min_value > self.max_value
        ):
            raise ValueError(
                f"`Constraint({name!r})` has an empty feasible set: min_value must "
                f"not exceed max_value. Received: min_value={min_value}, "
                f"max_value={max_value}."
            )

    @property
    def one_sided(self):
        """Whether exactly one bound is set (the feasible set is a half-line)."""
        return (self.min_value is None) != (self.max_value is None)

    @property
    def direction(self):
        """Which way the metric moves toward feasibility: +1, -1 or 0.

        +1 under a floor alone (higher values are nearer feasible), -1 under a
        ceiling alone, 0 with both bounds.
        """
        if not self.one_sided:
            return 0
        return 1 if self.min_value is not None else -1

    def slack(self, value):
        """How far inside the feasible set `value` is: the distance to the nearest bound.

        Args:
            value: the metric's value.

        Returns:
            A float, negative outside the feasible set.
        """
        slack = math.inf
        if self.min_value is not None:
            slack = min(slack, value - self.min_value)
        if self.max_value is not None:
            slack = min(slack, self.max_value - value)
        return slack

    def violation(self, value):
        """How far `value` is from the feasible set, 0.0 when it is inside.

        Args:
            value: the metric's value; `None` or NaN counts as infinitely far.

        Returns:
            A float >= 0.
        """
        if value is None or math.isnan(value):
            return math.inf
        below = self.min_value - value if self.min_value is not None else 0.0
        above = value - self.max_value if self.max_value is not None else 0.0
        return float(max(0.0, below, above))

    def is_satisfied(self, value):
        """Whether `value` meets every bound.

        Args:
            value: the metric's value; `None` or NaN is never feasible.

        Returns:
            A bool.
        """
        return self.violation(value) == 0.0

    def describe(self):
        """A short human-readable form, e.g. `"val_accuracy >= 0.97"`.

        Returns:
            A string.
        """
        lo = None if self.min_value is None else _REPR_FMT.format(self.min_value)
        hi = None if self.max_value is None else _REPR_FMT.format(self.max_value)
        if lo is not None and hi is not None:
            return f"{lo} <= {self.name} <= {hi}"
        if lo is not None:
            return f"{self.name} >= {lo}"
        return f"{self.name} <= {hi}"

    def best_step(self, objective, constrained, sign):
        """The step a trial is scored at: feasible steps by objective, then by violation.

        Among feasible steps, the best objective (ties: the most slack); without
        one, the step that misses the constraint least (ties: the objective).

        Args:
            objective: dict from step to the objective's value.
            constrained: dict from step to the constrained metric's value.
            sign: +1.0 when the objective is minimised, -1.0 when maximised.

        Returns:
            A step, or None when no step has both values (and a finite objective).
        """
        steps = [s for s in objective if s in constrained and not math.isnan(objective[s])]
        if not steps:
            return None

        def key(step):
            value = constrained[step]
            violation = self.violation(value)
            return (violation > 0, violation, sign * objective[step], -self.slack(value))

        return min(steps, key=key)

    def pareto_front(self, points):
        """The points not dominated on (constrained metric, cost).

        A point is dominated when another is at least as good on both (the
        constrained metric counts higher as better under a floor, lower under a
        ceiling only) and strictly better on one.

        Args:
            points: a list of `(item, cost, value)`: the cost oriented to be
                minimised, the constrained metric's value.

        Returns:
            The non-dominated items, lowest cost first.
        """
        metric_sign = -1.0 if self.min_value is not None else 1.0
        points = [(item, cost, metric_sign * value) for item, cost, value in points]
        front = [
            (item, cost)
            for item, cost, metric in points
            if not any(c <= cost and m <= metric and (c < cost or m < metric) for _, c, m in points)
        ]
        return [item for item, _ in sorted(front, key=lambda pair: pair[1])]

    def get_config(self):
        """The constructor arguments, as a JSON-friendly dict.

        Returns:
            A dict with keys `name`, `min_value`, `max_value`.
        """
        return {"name": self.name, "min_value": self.min_value, "max_value": self.max_value}

    @classmethod
    def from_config(cls, config):
        """Rebuilds a `Constraint` from `get_config()`'s output.

        Args:
            config: a dict with keys `name`, `min_value`, `max_value`.

        Returns:
            A `Constraint`.
        """
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, Constraint) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((self.name, self.min_value, self.max_value))

    def __repr__(self):
        args = [repr(self.name)]
        if self.min_value is not None:
            args.append(f"min_value={_REPR_FMT.format(self.min_value)}")
        if self.max_value is not None:
            args.append(f"max_value={_REPR_FMT.format(self.max_value)}")
        return f"Constraint({', '.join(args)})"


def _check_bound(arg, value):
    """Validates one bound: `None` or a finite real number, returned as float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`Constraint({arg}=...)` must be a number or None. "
            f"Received: {arg}={value!r} of type {type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(
            f"`Constraint({arg}=...)` must be finite; leave it as None for no bound. "
            f"Received: {arg}={value}."
        )
    return value


def trial_metric(trial, name, default=None):
    """A trial's value of metric `name` at its best step (else its last), or `default`.

    Args:
        trial: a `keras_tuner` `Trial`.
        name: the metric's name.
        default: what to return when the trial did not report it.

    Returns:
        A float, or `default`.
    """
    if not trial.metrics.exists(name):
        return default
    history = trial.metrics.get_history(name)
    if not history:
        return default
    for observation in history:
        if observation.step == trial.best_step:
            return float(observation.mean())
    return float(history[-1].mean())
