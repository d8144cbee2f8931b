"""Candidate points for the model-based strategies, and their ranking.

In one dimension the candidates are a fine grid; in several, scrambled Sobol
points plus perturbations of the trials so far (feasible ones preferred),
snapped to valid values. A strategy scores them; `ranked` drops those next to
a tried point and returns the best, for the oracle to take the first new one.
"""

import numpy as np
from scipy.stats import qmc

# The 1-D grid; its spacing is the finest the level-set phase resolves.
GRID_SIZE_1D = 1025
_NUM_SOBOL = 1024
_NUM_LOCAL = 512
# Candidates closer than this (unit-cube distance) to a tried point are skipped.
_MIN_DISTANCE = 1e-3
# At most this many ranked candidates (values that collide with a tried trial
# after rounding, e.g. of an Int, are skipped by the oracle).
_MAX_RANKED = 64


def candidates(history, space, rng):
    """Candidate points in the unit cube.

    Args:
        history: the `History`.
        space: the `encoding.Space`.
        rng: a `numpy.random.Generator` (unused in one dimension).

    Returns:
        An `(n, dims)` array.
    """
    if space.dims == 1:
        return np.linspace(0.0, 1.0, GRID_SIZE_1D)[:, None]
    x = history.completed_x
    sobol = qmc.Sobol(space.dims, scramble=True, seed=rng).random(_NUM_SOBOL)
    centres = x[history.feasible] if history.feasible.any() else x
    centres = np.vstack([centres, x])
    picks = centres[rng.integers(len(centres), size=_NUM_LOCAL)]
    scales = rng.choice([0.02, 0.1, 0.3], size=(_NUM_LOCAL, 1))
    local = np.clip(picks + scales * rng.standard_normal(picks.shape), 0.0, 1.0)
    return space.snap(np.vstack([sobol, local]))


def ranked(points, score, history):
    """The best-scoring points not next to a tried one, best first.

    Args:
        points: `(n, dims)` candidates.
        score: `(n,)` their scores (higher is better; -inf: never).
        history: the `History` (its tried points are excluded).

    Returns:
        A `(k, dims)` array of at most 64 points with finite scores, or None
        when there is none.
    """
    tried = history.tried_x
    if len(tried):
        distance = np.min(np.linalg.norm(points[:, None] - tried[None], axis=-1), axis=1)
        score = np.where(distance < _MIN_DISTANCE, -np.inf, score)
    order = np.argsort(-score, kind="stable")[:_MAX_RANKED]
    finite = np.isfinite(score[order])
    if not finite.all():
        order = order[: int(np.argmin(finite))]
    return points[order] if len(order) else None
