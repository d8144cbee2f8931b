"""`LevelSetBracket`: locate the boundary of the feasible set along one hyperparameter.

With one ordered hyperparameter and a monotone constrained metric, the best
point is the lowest one on the boundary of the feasible set, Condensa's level
set. The strategy keeps a bracket around it (the highest infeasible trial
below the lowest feasible one) and bisects it while it is wide. An
infeasible trial whose reading is within the noise of the bound does not
close the bracket; it is read again first. Once the bracket is narrow, the
search confirms (`confirmation.confirm` over a fine grid above the
bracket): it puts trials where the answer feasible *with confidence* is most
likely to get cheaper, replicates included, and stops once a further trial is
expected to save less than `min_expected_saving` of that answer's cost.
Probing just below the boundary would mostly pay a fine-tuning for a lucky
reading there, which confidence would not accept anyway.
"""

import math
import numbers

import numpy as np

from keras_condensa.search import acquisition
from keras_condensa.search.monotone import feasibility_directions
from keras_condensa.search.strategies import confirmation
from keras_condensa.search.strategies.base import Replicate, Strategy
from keras_condensa.search.strategies.candidates import GRID_SIZE_1D, candidates, ranked
from keras_condensa.search.strategies.posterior import Posterior

# Bisection while the bracket is wider than this; then confirmation.
_LOCAL_WIDTH = 0.15
# An infeasible trial closes the bracket only if the constraint's posterior
# gives a new evaluation there at most this probability of being feasible.
_AMBIGUOUS = 0.15
# Trials closer than this (unit interval) to an ambiguous one count as its replicate.
_REPLICATE_RADIUS = 3.0 / (GRID_SIZE_1D - 1)


class LevelSetBracket(Strategy):
    """Splits the bracket around the lowest feasible point of one hyperparameter.

    Defers (returns None) with several hyperparameters, without a known
    order, with fewer than two completed trials, or once the feasible end was
    tried and is infeasible; returns a `Replicate` to read a trial again, and
    a `Stop` once the boundary is located.

    Args:
        min_expected_saving: the search stops when the next trial is expected
            to save less than this share of the cost of the cheapest trial
            feasible with confidence (the probability that it makes a point
            feasible with confidence times the relative saving, per trial;
            see `confirmation.confirm`). A number in `[0, 1)`; 0 never stops.

    Raises:
        ValueError: if `min_expected_saving` is not in `[0, 1)`.
    """

    def __init__(self, min_expected_saving=0.04):
        if (
            isinstance(min_expected_saving, bool)
            or not isinstance(min_expected_saving, numbers.Real)
            or not 0.0 <= min_expected_saving < 1.0
        ):
            raise ValueError(
                "`min_expected_saving` must be a number in [0, 1): the least expected "
                "saving, as a share of the best cost, worth another trial (0 runs every "
                f"trial). Received: min_expected_saving={min_expected_saving!r}."
            )
        self.min_expected_saving = float(min_expected_saving)

    def propose(self, history, space, rng):
        """The grid points nearest the bracket's next split; see `Strategy.propose`."""
        directions = feasibility_directions(
            history.monotone, history.bound, space, history.completed_x, history.objective
        )
        one_ordered = space.dims == 1 and directions is not None and directions[0] != 0
        if not one_ordered or len(history.completed_x) < 2:
            return None
        posterior = Posterior(history, space, seed=int(rng.integers(2**31 - 1)))
        step, target = _split(posterior, directions, history.bound)
        if step == "confirm":
            return self._confirm(history, directions, target)
        if step == "replicate":
            return Replicate([target])
        if step is None:
            return None
        grid = candidates(history, space, rng)
        return ranked(grid, -np.abs(grid[:, 0] - target), history)

    def _confirm(self, history, directions, lo):
        """Once the bracket is narrow: `confirmation.confirm` over the grid above `lo`.

        The candidates are the grid points on the feasible side of the
        bracket's lower end `lo` (and the completed trials, to replicate);
        the cost between trials is interpolated. The search stops when the
        best expected saving is under `min_expected_saving`.
        """
        model = confirmation.model_of(history)
        if confirmation.unmeasured(history, model):
            replicate = confirmation.first_replicate(history)
            if replicate is not None:
                return replicate
        u = np.linspace(0.0, 1.0, GRID_SIZE_1D)
        u = u[u > lo]
        points = (1.0 - u if directions[0] < 0 else u)[:, None]
        cost = np.array([_cost(history, p) for p in points[:, 0]])
        return confirmation.confirm(
            history, model, points, cost, directions, self.min_expected_saving
        )


def _split(posterior, directions, bound):
    """The next step around the boundary.

    The bracket runs from the highest clearly infeasible trial below the
    lowest feasible one (or the end of the range) to that feasible trial;
    "clearly": a new evaluation there would be feasible with probability at
    most `_AMBIGUOUS` under the posterior, so one unlucky noisy trial does not
    shut the boundary out. It is bisected while wider than `_LOCAL_WIDTH`;
    then the search confirms.

    An ambiguous infeasible trial above the bracket's lower end leaves that
    end in doubt: the boundary is likely just above it, and splitting the
    whole bracket would mostly probe below it. The next trial then reads it
    again, once; with two readings there, their mean decides (`History.
    feasible`): it closes the bracket or is its feasible end.

    Before any trial is feasible, the feasible end (density 1) is taken to be
    feasible: the bracket runs from the highest trial to it, and the end
    itself is tried once that is narrower than `_LOCAL_WIDTH`.

    Args:
        posterior: the `Posterior` (one dimension).
        directions: `(1,)` nonzero direction of feasibility.
        bound: the `Constraint`.

    Returns:
        `(step, value)`: `("bisect", coordinate)` to try next,
        `("replicate", coordinate)` of a trial to read again, `("confirm",
        lo)` with the bracket's lower end (oriented toward feasibility), or
        `(None, None)` when the feasible end was tried and is infeasible.
    """
    x, feasible = posterior.x, posterior.feasible
    gp = posterior.constraint_gp
    flip = directions[0] < 0
    u = 1.0 - x[:, 0] if flip else x[:, 0]
    if not feasible.any():
        # Nothing feasible yet: the feasible end is taken to be feasible;
        # bisect toward it, and try the end itself once the gap is narrow.
        top = float(u.max())
        if np.isclose(top, 1.0):
            return None, None  # the end is infeasible too
        target = 1.0 if 1.0 - top < _LOCAL_WIDTH else 0.5 * (top + 1.0)
        return "bisect", (1.0 - target if flip else target)
    # An infeasible trial that a re-evaluation could well find feasible (the
    # metric is noisy) does not close the bracket.
    mean, std = gp.predict(x)
    log_pof = acquisition.log_probability_of_feasibility(
        mean, std, bound.min_value, bound.max_value
    )
    # Read twice (replicated, or next to another trial), its mean decides.
    read_twice = np.sum(np.abs(u[:, None] - u[None, :]) < _REPLICATE_RADIUS, axis=1) >= 2
    infeasible = ~feasible & ((log_pof <= math.log(_AMBIGUOUS)) | read_twice)
    lo, hi = _bracket(u, feasible, infeasible)
    width = hi - lo
    num_completed = posterior.num_completed
    doubtful = (~feasible & ~infeasible & (u < hi))[:num_completed]
    if doubtful.any():
        a = float(u[:num_completed][doubtful].max())
        if a > lo and np.sum(np.abs(u - a) < _REPLICATE_RADIUS) == 1:
            return "replicate", (1.0 - a if flip else a)
    if width < _LOCAL_WIDTH:
        return "confirm", lo
    target = 0.5 * (lo + hi)
    return "bisect", (1.0 - target if flip else target)


def _bracket(u, feasible, infeasible):
    """(lo, hi): the highest `infeasible` point below the lowest feasible one, and that one.

    `u` grows toward feasibility; without a feasible point the bracket is the
    whole interval, without an infeasible one below it starts at 0.
    """
    if not feasible.any():
        return 0.0, 1.0
    hi = float(u[feasible].min())
    below = u[infeasible & (u < hi)]
    lo = float(below.max()) if len(below) else 0.0
    return lo, hi


def _cost(history, point):
    """The oriented objective at a 1-D `point`, interpolated between the completed trials.

    It is measured exactly, and monotone along the level-set hyperparameter;
    past the trials it is extended along the nearest segment's line.
    """
    order = np.argsort(history.completed_x[:, 0], kind="stable")
    x, y = history.completed_x[order, 0], history.objective[order]
    x, first = np.unique(x, return_index=True)
    y = y[first]
    if len(x) < 2:
        return float(y[0])
    if point < x[0] or point > x[-1]:
        i = 0 if point < x[0] else len(x) - 2
        slope = (y[i + 1] - y[i]) / (x[i + 1] - x[i])
        return float(y[i] + slope * (point - x[i]))
    return float(np.interp(point, x, y))
