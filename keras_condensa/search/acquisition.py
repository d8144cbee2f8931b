"""Acquisition maths for constrained Bayesian optimisation: pure numpy functions.

Nothing here knows about trials or hyperparameters: inputs are posterior means
and standard deviations at candidate points (arrays), outputs are scores. The
oracle combines them as `log EI(objective) + log P(feasible)`, the usual
constrained expected improvement, computed in log space so that neither factor
underflows far from the data.
"""

import math

import numpy as np
from scipy import special
from sklearn.isotonic import isotonic_regression

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_TINY = 1e-12


def log_probability_of_feasibility(mean, std, lower=None, upper=None):
    """Log-probability that a Gaussian value lies in `[lower, upper]`.

    Args:
        mean: array of posterior means.
        std: array of posterior standard deviations (same shape, > 0).
        lower: optional lower bound (a floor).
        upper: optional upper bound (a ceiling).

    Returns:
        An array of log-probabilities (<= 0), finite even far in the tails.

    Example:

    >>> float(np.exp(log_probability_of_feasibility(np.array([0.0]), np.array([1.0]), 0.0))[0])
    0.5
    """
    mean = np.asarray(mean, dtype=float)
    std = np.maximum(np.asarray(std, dtype=float), _TINY)
    if lower is not None and upper is None:
        return special.log_ndtr((mean - lower) / std)
    if upper is not None and lower is None:
        return special.log_ndtr((upper - mean) / std)
    # Two-sided: P = Phi(b) - Phi(a) with a < b; subtract in log space.
    a = (lower - mean) / std
    b = (upper - mean) / std
    log_b = special.log_ndtr(b)
    log_a = special.log_ndtr(a)
    # Use the symmetric form in the upper tail, where Phi(b) ~ Phi(a) ~ 1.
    upper_tail = a > 0
    log_b_u = special.log_ndtr(-a)
    log_a_u = special.log_ndtr(-b)
    hi = np.where(upper_tail, log_b_u, log_b)
    lo = np.where(upper_tail, log_a_u, log_a)
    return hi + np.log1p(-np.exp(np.minimum(lo - hi, -_TINY)))


def log_expected_improvement(mean, std, best):
    """Log of the expected improvement below `best` (a minimisation).

    Stable in the far tail (the "LogEI" asymptote of Ament et al., 2023), so
    candidates whose improvement is astronomically unlikely still rank.

    Args:
        mean: array of posterior means of the (minimised) objective.
        std: array of posterior standard deviations.
        best: the best (lowest) feasible value seen so far.

    Returns:
        An array of log expected improvements.

    Example:

    >>> ei = np.exp(log_expected_improvement(np.array([0.0]), np.array([1.0]), 0.0))
    >>> round(float(ei[0]), 4)  # E[max(0, -Z)] for a standard normal Z
    0.3989
    """
    mean = np.asarray(mean, dtype=float)
    std = np.maximum(np.asarray(std, dtype=float), _TINY)
    z = (best - mean) / std
    out = np.empty_like(z)
    mid = z > -6.0
    zm = z[mid]
    h = zm * special.ndtr(zm) + np.exp(-0.5 * zm * zm - _LOG_SQRT_2PI)
    out[mid] = np.log(np.maximum(h, 1e-300))
    zt = z[~mid]
    # h(z) ~ phi(z) / z^2 for z -> -inf.
    out[~mid] = -0.5 * zt * zt - _LOG_SQRT_2PI - 2.0 * np.log(-zt)
    return out + np.log(std)


def monotone_envelope(log_p, x, log_p_ref, x_ref, directions):
    """Clips feasibility probabilities so that they respect a known monotonicity.

    If the constrained metric moves monotonically with some coordinates
    (accuracy rises with density), a point that is "less feasible" than a
    reference point in every coordinate cannot be more likely feasible than
    it, and vice versa. This turns each observed point into a bound for every
    comparable candidate.

    Args:
        log_p: `(n,)` log-probabilities of feasibility at the candidates.
        x: `(n, d)` candidate points.
        log_p_ref: `(m,)` log-probabilities of feasibility at reference points.
        x_ref: `(m, d)` reference points (e.g. observed trials).
        directions: `(d,)` array: +1 where feasibility grows with the
            coordinate, -1 where it shrinks, 0 where the coordinate has no
            known order (then points compare only when equal there).

    Returns:
        The clipped `(n,)` log-probabilities.
    """
    log_p = np.asarray(log_p, dtype=float)
    if len(x_ref) == 0:
        return log_p
    d = np.asarray(directions, dtype=float)
    # diff[i, j, k] > 0: candidate i is "more feasible" than reference j along k.
    diff = (x[:, None, :] - x_ref[None, :, :]) * d
    ordered = d != 0
    same_free = np.all(np.isclose(x[:, None, ~ordered], x_ref[None, :, ~ordered]), axis=-1)
    geq = np.all(diff[..., ordered] >= 0, axis=-1) & same_free  # candidate >= reference
    leq = np.all(diff[..., ordered] <= 0, axis=-1) & same_free  # candidate <= reference
    ref = np.broadcast_to(log_p_ref, geq.shape)
    lower = np.max(np.where(geq, ref, -np.inf), axis=1)
    upper = np.min(np.where(leq, ref, np.inf), axis=1)
    return np.minimum(np.maximum(log_p, lower), np.maximum(upper, lower))


def monotone_projection_1d(log_p, x, direction):
    """Projects probabilities on a 1-D grid onto monotone functions of `x`.

    The least-squares monotone fit (isotonic regression) of the probabilities,
    the 1-D counterpart of `monotone_envelope` that also uses the candidates'
    own order.

    Args:
        log_p: `(n,)` log-probabilities of feasibility.
        x: `(n,)` grid coordinates.
        direction: +1 if feasibility grows with `x`, -1 if it shrinks.

    Returns:
        `(n,)` log-probabilities, monotone in `x` in the given direction.
    """
    order = np.argsort(x, kind="stable")
    p = np.exp(np.asarray(log_p, dtype=float)[order])
    fitted = isotonic_regression(p, increasing=direction > 0)
    out = np.empty_like(fitted)
    out[order] = fitted
    # Keep the far tails' log values (isotonic fits in probability space).
    return np.where(out > 1e-250, np.log(np.maximum(out, 1e-300)), np.asarray(log_p))


def log_probability_of_confidence(mean, std, noise_std, level, quantile):
    """Log-probability that one more reading makes a point feasible with confidence.

    The noise-free metric at a point has the posterior `N(mean, std**2)`; a
    reading there, with noise `noise_std`, moves the posterior mean to
    `N(mean, std**4 / (std**2 + noise_std**2))` (the preposterior) and
    shrinks its deviation to `std * noise_std / sqrt(std**2 + noise_std**2)`.
    The point is then feasible with confidence when the new mean clears
    `level` by `quantile` new deviations. A one-step look-ahead in the spirit
    of the knowledge gradient.

    Args:
        mean: `(n,)` posterior means, oriented so that feasible is `>= level`.
        std: `(n,)` posterior deviations of the noise-free metric (> 0).
        noise_std: the deviation of one reading (> 0).
        level: the bound.
        quantile: how many deviations above `level` confidence needs (e.g.
            the 0.9 quantile of the estimate's distribution).

    Returns:
        An `(n,)` array of log-probabilities.

    Example:

    >>> mean, std = np.array([0.5, 0.7]), np.array([0.1, 0.1])
    >>> p = log_probability_of_confidence(mean, std, 0.1, 0.5, 1.28)
    >>> bool(np.exp(p[0]) < 0.2 < np.exp(p[1]) < 1.0)
    True
    """
    var = np.maximum(np.asarray(std, dtype=float), _TINY) ** 2
    total = var + noise_std**2
    after = np.sqrt(var * noise_std**2 / total)
    spread = var / np.sqrt(total)
    return special.log_ndtr((np.asarray(mean, dtype=float) - level - quantile * after) / spread)
