"""`InitialDesign`: the first trials, before the models have data.

With one ordered hyperparameter, bisection from the start: the middle of its
range, then the middle of the half the boundary is in (above when the middle
is infeasible, taking the feasible end to be feasible: the maximum, say
density 1, unless `monotone` declares the metric falling with it; below when
it is feasible). The feasible end itself is tried only when needed: while the
middle still runs. With several hyperparameters, the densest corner (every
hyperparameter at its maximum: is the bound reachable at all?), then the
centre, then scrambled Sobol points.
"""

import numbers
import warnings

import numpy as np
from scipy.stats import qmc

from keras_condensa.search.monotone import feasible_end
from keras_condensa.search.strategies.base import Strategy


class InitialDesign(Strategy):
    """The design's points until `num_initial_points` trials exist and two completed.

    Args:
        num_initial_points: how many trials the design places; defaults to 2
            for one hyperparameter (the middle of its range, then the middle
            of the half the boundary is in) and to `d + 1` for `d` of them
            (the maximum corner, the centre, then Sobol points). A positive
            int, or None.

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
