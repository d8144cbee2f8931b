"""`InitialDesign`: the first trials, before the models have data.

With one ordered hyperparameter, bisection from the start: the middle of its
range, then the middle of the half the boundary is in (above when the middle
is infeasible, taking the feasible end to be feasible: the maximum, say
density 1, unless `monotone` declares the metric falling with it; below when
it is feasible). The feasible end itself is tried only when needed: while the
middle still runs. With several hyperparameters, the densest corner (every
hyperparameter at its maximum: is the bound reachable at all?), then the
centre, then scrambled Sobol points; or, when every hyperparameter is
ordered, bisection of the diagonal (the uniform setting) until the boundary
on it is bracketed.
"""

import numbers
import warnings

import numpy as np
from scipy.stats import qmc

from keras_condensa.search.monotone import feasible_end
from keras_condensa.search.strategies.base import Strategy

# The diagonal is bisected until the boundary on it is bracketed this narrowly.
_DIAGONAL_WIDTH = 0.15


class InitialDesign(Strategy):
    """The design's points until `num_initial_points` trials exist and two completed.

    Args:
        num_initial_points: how many trials the design places; defaults to 2
            for one hyperparameter (the middle of its range, then the middle
            of the half the boundary is in) and to `d + 1` for `d` of them
            (the maximum corner, the centre, then Sobol points). With several
            ordered hyperparameters and no `num_initial_points`, the corner
            and the centre, then bisection of the diagonal while the bracket
            around the boundary on it is wider than 0.15. A positive int, or
            None.

    Raises:
        ValueError: if `num_initial_points` is not a positive int or None.
    """

    def __init__(self, num_initial_points=None):
        if num_initial_points is not None and (
            isinstance(num_initial_points, bool)
            or not isinstance(num_initial_points, numbers.Integral)
            or num_initial_points < 1
        ):
            raise ValueError(
                "`num_initial_points` must be a positive integer (at least 1). "
                f"Received: num_initial_points={num_initial_points!r}."
            )
        self.num_initial_points = num_initial_points

    def propose(self, history, space, rng):
        """The design's next point; see `Strategy.propose`."""
        size = self.num_initial_points
        if size is None and space.dims > 1 and space.ordered.all() and history.num_trials >= 2:
            return _diagonal_point(history)
        if size is None:
            size = 2 if space.dims <= 1 else space.dims + 1
        if history.num_trials >= size and len(history.completed_x) >= 2:
            return None
        return _design_point(history, space)


def _design_point(history, space):
    """The `history.num_trials`-th point of the design in the unit cube."""
    index, dims = history.num_trials, space.dims
    end = feasible_end(history.monotone, history.bound, space)
    if end is not None and index < 2:
        # One ordered hyperparameter: bisection from the start. The middle
        # first, then the middle of the half the boundary is in (taking the
        # feasible end to be feasible); the end itself only when the middle's
        # result is not known yet.
        if index == 0:
            return np.full(1, 0.5)
        if len(history.completed_x) == 1:  # the middle, trial 0
            toward = end if not history.feasible[0] else 1.0 - end
            return np.full(1, 0.5 * (history.completed_x[0, 0] + toward))
        return np.full(1, end)
    if index == 0:
        return np.ones(dims)
    if index == 1:
        return np.full(dims, 0.5)
    sobol = qmc.Sobol(dims, scramble=True, seed=history.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # not a power of 2: fine here
        return sobol.random(index - 1)[-1]


def _diagonal_point(history):
    """The next bisection of the diagonal, or None once its bracket is narrow.

    With every hyperparameter ordered, the diagonal (the same coordinate for
    all: one density for every layer, say) is bisected like a single
    hyperparameter, from the centre toward the maximum corner (taken to be
    feasible), until the boundary on it is bracketed within `_DIAGONAL_WIDTH`:
    the uniform setting is a strong first answer, which the confirmation then
    improves on off the diagonal. None also while a diagonal trial runs.
    """
    x, pending = history.completed_x, history.pending_x
    on = np.all(np.isclose(x, x[:, :1]), axis=1)
    if not on.any() or np.any(np.all(np.isclose(pending, pending[:, :1]), axis=1)):
        return None
    t, feasible = x[on, 0], history.feasible[on]
    hi = t[feasible].min() if feasible.any() else 1.0
    below = t[~feasible & (t < hi)]
    lo = below.max() if len(below) else 0.0
    if hi - lo < _DIAGONAL_WIDTH:
        return None
    return np.full(x.shape[1], 0.5 * (lo + hi))
