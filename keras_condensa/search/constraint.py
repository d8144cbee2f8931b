"""A bound on one metric that every acceptable trial must meet.

The search minimises a cost (bytes, latency, nonzero parameters) *subject to*
a bound on another metric, usually an accuracy floor. A `Constraint` names the
metric and holds the bound; it is plain data (a JSON-friendly config), so it
can live in the chief's oracle while workers only report metric values.
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
