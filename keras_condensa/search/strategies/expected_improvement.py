"""`ConstrainedExpectedImprovement`: the general model-based step.

Expected improvement of the objective over the best feasible trial times the
probability of feasibility, in log space (`acquisition`), over candidate
points (a grid in one dimension, Sobol points plus local perturbations in
several). Before any trial is feasible, it looks where a first feasible one
is most likely under an optimistic (wider) posterior. Under a known order
(`search.monotone`), each trial bounds the probability of feasibility at
every comparable point.
"""

import numpy as np

from keras_condensa.search import acquisition
from keras_condensa.search.monotone import consistent, feasibility_directions
from keras_condensa.search.strategies.base import Strategy
from keras_condensa.search.strategies.candidates import candidates, ranked
from keras_condensa.search.strategies.posterior import Posterior

# Before any trial is feasible, the search looks where feasibility is likely
# under a posterior this many times wider (an upper-confidence search).
_OPTIMISM = 3.0


class ConstrainedExpectedImprovement(Strategy):
    """Constrained expected improvement over candidate points.

    Answers whenever two or more trials completed (defers before), so it
    ends the default list of strategies. Points already tried are never
    proposed again.
    """

    def propose(self, history, space, rng):
        """The candidates by constrained expected improvement; see `Strategy.propose`."""
        if len(history.completed_x) < 2:
            return None
        gp_seed = int(rng.integers(2**31 - 1))
        points = candidates(history, space, rng)
        posterior = Posterior(history, space, gp_seed)
        bound = history.bound
        if posterior.best_cost is None:
            # Nothing feasible yet: where a first feasible point is most likely,
            # optimistic about the model's uncertainty (and not trusting the
            # monotone order, which the data has not confirmed yet).
            mean, std = posterior.constraint_gp.predict(points)
            score = acquisition.log_probability_of_feasibility(
                mean, _OPTIMISM * std, bound.min_value, bound.max_value
            )
        else:
            directions = feasibility_directions(
                history.monotone, bound, space, history.completed_x, history.objective
            )
            log_pof = _log_pof(posterior, points, directions, bound)
            mean, std = posterior.objective_gp().predict(points, include_noise=False)
            score = log_pof + acquisition.log_expected_improvement(mean, std, posterior.best_cost)
        return ranked(points, score, history)


def _log_pof(posterior, points, directions, bound):
    """Log-probability of feasibility at the points, monotone-corrected.

    Each trial point that does not contradict the order bounds the probability
    at every comparable point (`acquisition.monotone_envelope`); in one
    dimension the curve below the lowest feasible trial is also projected onto
    monotone functions.
    """
    gp, x, feasible = posterior.constraint_gp, posterior.x, posterior.feasible
    lo, hi = bound.min_value, bound.max_value
    mean, std = gp.predict(points)
    log_pof = acquisition.log_probability_of_feasibility(mean, std, lo, hi)
    if directions is None:
        return log_pof
    ref_x = x[consistent(x, feasible, directions)]
    ref_mean, ref_std = gp.predict(ref_x)
    ref = acquisition.log_probability_of_feasibility(ref_mean, ref_std, lo, hi)
    log_pof = acquisition.monotone_envelope(log_pof, points, ref, ref_x, directions)
    if x.shape[1] == 1 and feasible.any():
        # Project onto monotone curves below the lowest feasible trial, where
        # the boundary is; above it nothing improves the objective anyway.
        u = points[:, 0] * directions[0]
        top = np.min(x[feasible, 0] * directions[0])
        below = u <= top
        if below.sum() > 1:
            log_pof[below] = acquisition.monotone_projection_1d(
                log_pof[below], points[below, 0], directions[0]
            )
    return log_pof
