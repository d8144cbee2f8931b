"""`LevelSetBracket`: locate the boundary of the feasible set along one hyperparameter.

With one ordered hyperparameter and a monotone constrained metric, the best
point is the lowest one on the boundary of the feasible set, Condensa's level
set. The strategy keeps a bracket around it (the highest infeasible trial
below the lowest feasible one) and splits it: bisection while it is wide;
once it is narrow, where a least-squares quadratic through the trials near it
(Brent's inverse-quadratic step when there are three, which follows the
curve's saturation where a secant would not; more average the noise out)
gives the best chance of a feasible trial times the cost it would save. An
infeasible trial whose reading is within the noise of the bound does not
close the bracket; it gets one near-replicate first. Once that expected
saving falls below `min_expected_saving` of the best cost, the boundary is
located as finely as the evaluation noise allows and the search stops (a
further trial would mostly pay a fine-tuning for a lucky reading just below
the boundary).
"""

import math
import numbers

import numpy as np

from keras_condensa.search import acquisition
from keras_condensa.search.monotone import consistent, feasibility_directions
from keras_condensa.search.strategies.base import Stop, Strategy
from keras_condensa.search.strategies.candidates import GRID_SIZE_1D, candidates, ranked
from keras_condensa.search.strategies.posterior import Posterior

# A local quadratic step once the bracket is narrower than this (before, three
# trials are too far apart to model the curve between them), handing over to
# the next strategy below _MIN_BRACKET.
_LOCAL_WIDTH = 0.15
# With a handful of trials the Gaussian process's fitted noise can collapse to
# zero; the local step assumes at least this share of the spread of the three
# values it interpolates (tuned on seeds 100-159 of the benchmark's recorded
# curve, reported on the held-out seeds 0-19).
_NOISE_SHARE = 0.2
_MIN_BRACKET = 4.0 / (GRID_SIZE_1D - 1)
# An infeasible trial closes the bracket only if the constraint's posterior
# gives a new evaluation there at most this probability of being feasible.
_AMBIGUOUS = 0.15
# Trials closer than this (unit interval) to an ambiguous one count as its replicate.
_REPLICATE_RADIUS = 3.0 / (GRID_SIZE_1D - 1)


class LevelSetBracket(Strategy):
    """Splits the bracket around the lowest feasible point of one hyperparameter.

    Defers (returns None) with several hyperparameters, without a known
    order, with fewer than two completed trials, once the feasible end was
    tried and is infeasible, or once the bracket is narrower than the grid
    resolves; returns a `Stop` once the boundary is located.

    Args:
        min_expected_saving: the search stops when the next quadratic step is
            expected to save less than this share of the best feasible cost
            (the probability that the trial is feasible times the relative
            saving if it is). A number in `[0, 1)`; 0 never stops.

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
        target, probability = _split(posterior, directions, history.bound)
        if target is None:
            return None
        if probability is not None and self.min_expected_saving > 0:
            saving = probability * _relative_saving(history, target, posterior.best_cost)
            if saving < self.min_expected_saving:
                return Stop(
                    "the boundary is located: a further trial was expected to save less "
                    f"than {100 * self.min_expected_saving:g}% of the best "
                    f"{history.objective_name}"
                )
        grid = candidates(history, space, rng)
        return ranked(grid, -np.abs(grid[:, 0] - target), history)


def _split(posterior, directions, bound):
    """The next split of the bracket around the boundary.

    The bracket runs from the highest clearly infeasible trial below the
    lowest feasible one (or the end of the range) to that feasible trial;
    "clearly": a new evaluation there would be feasible with probability at
    most `_AMBIGUOUS` under the posterior, so one unlucky noisy trial does not
    shut the boundary out. It is bisected while wider than `_LOCAL_WIDTH`;
    then a least-squares quadratic through the trials that respect the order
    within `_LOCAL_WIDTH` of it (at least the three nearest its middle) models
    the metric inside it, and the split is where a trial is most likely
    feasible times the cost it would save (`acquisition.quadratic_level_step`).
    The quadratic follows the curve's saturation, which a secant between the
    ends (or a Gaussian process with a long length scale) overshoots; each
    trial past the third averages evaluation noise out of it. A quadratic that
    is not monotone over the bracket (noise) falls back to bisection.

    An ambiguous infeasible trial above the bracket's lower end leaves that
    end in doubt: the boundary is likely just above it, and splitting the
    whole bracket would mostly probe below it. The next trial is then its
    near-replicate (the closest untried value: Keras Tuner refuses identical
    ones), once; with two readings there the posterior either closes the
    bracket at it or finds it feasible.

    Before any trial is feasible, the feasible end (density 1) is taken to be
    feasible: the bracket runs from the highest trial to it, and the end
    itself is tried once that is narrower than `_LOCAL_WIDTH`.

    Args:
        posterior: the `Posterior` (one dimension).
        directions: `(1,)` nonzero direction of feasibility.
        bound: the `Constraint`.

    Returns:
        `(target, probability)`: the unit-interval coordinate to try next and,
        for a quadratic step, the model's probability that it is feasible
        (None for a bisection or a replicate). `(None, None)` when the
        feasible end was tried and is infeasible, or the bracket is already
        narrower than the candidate grid resolves.
    """
    x, values, feasible = posterior.x, posterior.metric, posterior.feasible
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
        return (1.0 - target if flip else target), None
    # An infeasible trial that a re-evaluation could well find feasible (the
    # metric is noisy) does not close the bracket.
    mean, std = gp.predict(x)
    log_pof = acquisition.log_probability_of_feasibility(
        mean, std, bound.min_value, bound.max_value
    )
    infeasible = ~feasible & (log_pof <= math.log(_AMBIGUOUS))
    lo, hi = _bracket(u, feasible, infeasible)
    width = hi - lo
    if width < _MIN_BRACKET:
        return None, None
    num_completed = posterior.num_completed
    doubtful = (~feasible & ~infeasible & (u < hi))[:num_completed]
    if doubtful.any():
        a = float(u[:num_completed][doubtful].max())
        if a > lo and np.sum(np.abs(u - a) < _REPLICATE_RADIUS) == 1:
            return (1.0 - a if flip else a), None
    target = probability = None
    if width < _LOCAL_WIDTH:
        # Oriented so that feasible means "at least the level".
        sign = float(bound.direction)
        level = bound.min_value if sign > 0 else bound.max_value
        usable = np.flatnonzero(consistent(x, feasible, directions))
        # The trials within the local width of the bracket; at least the three
        # nearest its middle.
        outside = np.maximum(lo - u[usable], u[usable] - hi)
        nearest = np.argsort(np.abs(u[usable] - 0.5 * (lo + hi)), kind="stable")
        near = usable[nearest[: max(3, int(np.sum(outside <= _LOCAL_WIDTH)))]]
        if len(np.unique(u[near])) >= 3:
            local = sign * values[near]
            noise = max(math.sqrt(gp.noise_variance()), _NOISE_SHARE * np.ptp(local))
            step = acquisition.quadratic_level_step(u[near], local, sign * level, lo, hi, noise)
            if step is not None:
                target, probability = step
    if target is None:
        target = 0.5 * (lo + hi)
    return (1.0 - target if flip else target), probability


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


def _relative_saving(history, point, best_cost):
    """How much less than `best_cost` the objective is at a 1-D `point`, as a share.

    The cost at `point` is interpolated between the completed trials (it is
    measured exactly, and monotone along the level-set hyperparameter).
    """
    order = np.argsort(history.completed_x[:, 0], kind="stable")
    cost = np.interp(point, history.completed_x[order, 0], history.objective[order])
    saving = best_cost - cost
    if history.log_cost:  # a difference of log costs: the ratio's complement
        return -math.expm1(-saving) if history.sign > 0 else math.expm1(saving)
    return saving / max(abs(best_cost), 1e-12)
