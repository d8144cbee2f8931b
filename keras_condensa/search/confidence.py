"""How sure the search is that a trial meets the constraint.

A single reading of a trial's metric is noisy: two fine-tunings of the same
density differ by a few tenths of a point. Among trials probed near the
boundary of the feasible set, the one whose reading happens to land just
above the floor is often, in truth, below it (the winner's curse). So the
search answers with the cheapest trial that is feasible *with confidence*:

- the **noise** of one evaluation is measured from replicates (trials with
  the same hyperparameter values, e.g. repeated fine-tunings with other
  seeds), pooled; or given by the user;
- a Gaussian process with that noise fixed models the metric's noise-free
  value over the space, so each trial's estimate averages its own readings
  with its neighbours';
- a trial's probability of meeting the constraint is that of the estimate's
  Student-t posterior (the degrees of freedom of the noise estimate: one
  replicate pair is weak evidence of the noise level, and the tails say so).

Without replicates and without a given noise, the process's own fitted
noise stands in, with one degree of freedom. A reading may also carry its
own standard error (the tuner's `val_accuracy_std`: an accuracy measured on a
few hundred validation samples), which adds to the noise at that reading.
"""

import dataclasses
import math
import numbers

import numpy as np
from scipy import stats

from keras_condensa.search.surrogate import Surrogate

# The search's default confidence. On the benchmark's curves (benchmarks/search_efficiency.py,
# held-out seeds) the returned model truly meets the floor in 90-100% of searches at 0.8, but in
# 55% on a curve with a plateau just below the floor (85% at 0.9); 0.8 is within 1.5x of the
# optimum's cost more often elsewhere, and at 0.9 `make demo` (450 validation samples, a dense
# end only half a point above the floor) never gets sure and returns a near-dense model. Raise
# it where the floor is far below what the noise can blur.
DEFAULT_CONFIDENCE = 0.8
# The noise the Gaussian process fits stands in for a measured one with this many
# degrees of freedom (Student-t tails: a Cauchy).
_MODEL_DOF = 1
# Readings closer than this (unit cube) are replicates of one point.
_SAME_POINT = 1e-9


@dataclasses.dataclass(frozen=True)
class Noise:
    """The evaluation noise of the constrained metric.

    Attributes:
        std: the standard deviation of one reading.
        dof: its degrees of freedom (`math.inf` when given).
        source: `"replicates"`, `"given"` or `"model"` (only the Gaussian
            process's fitted noise: nothing was replicated).
    """

    std: float
    dof: float
    source: str


@dataclasses.dataclass(frozen=True)
class Feasibility:
    """The evidence that one trial meets the constraint.

    Attributes:
        mean: the estimated noise-free value of the constrained metric at
            the trial's hyperparameters.
        std: the estimate's standard deviation.
        probability: the probability that the noise-free value meets the
            constraint.
        low: the lower end of the central interval at the search's
            confidence.
        high: its upper end.
        readings: how many completed trials share these hyperparameters.
    """

    mean: float
    std: float
    probability: float
    low: float
    high: float
    readings: int

    def confident(self, confidence):
        """Whether the probability reaches `confidence`."""
        return self.probability >= confidence


def replicate_groups(x):
    """Indices of rows of `x` that are the same point, one array per point.

    Args:
        x: an `(n, dims)` array.

    Returns:
        A list of index arrays, in order of first appearance.
    """
    x = np.asarray(x, dtype=float)
    groups = []
    for i, row in enumerate(x):
        for group in groups:
            if np.max(np.abs(x[group[0]] - row), initial=0.0) <= _SAME_POINT:
                group.append(i)
                break
        else:
            groups.append([i])
    return [np.array(g) for g in groups]


def replicate_squares(x, y):
    """The sum of squared deviations of replicated readings from their point's mean.

    Args:
        x: `(n, dims)` points.
        y: `(n,)` readings.

    Returns:
        `(squares, dof)`: the sum, and its degrees of freedom (readings
        minus distinct points); `(0.0, 0)` when no point was read twice.
    """
    y = np.asarray(y, dtype=float)
    squares, dof = 0.0, 0
    for group in replicate_groups(x):
        if len(group) > 1:
            values = y[group]
            squares += float(np.sum((values - values.mean()) ** 2))
            dof += len(group) - 1
    return squares, dof


class Model:
    """The constrained metric's noise-free value over the space, with its measured noise.

    The noise is `noise` when given. Otherwise it is measured: the pooled
    variance of replicated readings, with the variance a Gaussian process
    fits to all readings counted as one more degree of freedom (so that two
    replicates that happen to agree do not claim a noiseless metric); with no
    replicate, that fitted variance alone, at one degree of freedom. A
    Gaussian process with the noise fixed then models the noise-free value.

    Readings far on the wrong side of the bound are clipped before the
    process sees them (`_clipped`). A reading's own standard error
    (`errors`, e.g. of an accuracy measured on a few hundred samples) adds
    to the noise there: the noise measured from replicates is that of
    fine-tuning, the error that of measuring one model.

    Args:
        x: `(n, dims)` points of the completed trials (unit cube), `n >= 1`.
        y: `(n,)` their readings of the constrained metric.
        bound: the `Constraint`.
        noise: optional known standard deviation of one reading.
        seed: the Gaussian processes' seed.
        errors: optional `(n,)` standard errors of the readings themselves
            (e.g. from the finite validation set), added in quadrature to
            the noise at each reading.

    Attributes:
        x: the points.
        readings: the readings (not clipped).
        groups: `replicate_groups(x)`.
        errors: the readings' own standard errors (zeros by default).
        noise: the `Noise`.
        distribution: the standardised error of an estimate, a frozen
            `scipy.stats` Student-t (normal when the noise is given).
    """

    def __init__(self, x, y, bound, noise=None, seed=0, errors=None):
        y = np.asarray(y, dtype=float)
        x = np.asarray(x, dtype=float).reshape(len(y), -1)
        self.x, self.readings = x, y
        self.errors = np.zeros(len(y)) if errors is None else np.asarray(errors, dtype=float)
        self.groups = replicate_groups(x)
        squares, dof = replicate_squares(x, y)
        y = _clipped(y, bound)
        fit = len(self.groups) > 1 and np.ptp(y) > 0.0
        if noise is not None:
            self.noise = Noise(float(noise), math.inf, "given")
        else:
            fitted = Surrogate(x.shape[1], seed=seed).fit(x, y).noise_variance() if fit else 0.0
            variance = (squares + fitted) / (dof + _MODEL_DOF)
            source = "replicates" if dof else "model"
            self.noise = Noise(math.sqrt(variance), float(dof + _MODEL_DOF), source)
        self._gp = None
        if fit and (self.noise.std > 0.0 or self.errors.any()):
            self._gp = Surrogate(x.shape[1], seed=seed, noise=self.noise.std)
            self._gp.fit(x, y, errors=self.errors)
        self.distribution = (
            stats.t(df=self.noise.dof) if math.isfinite(self.noise.dof) else stats.norm()
        )

    @property
    def reading_std(self):
        """The deviation of one new reading: the noise and a typical reading's own error."""
        typical = float(np.median(self.errors)) if len(self.errors) else 0.0
        return math.hypot(self.noise.std, typical)

    def predict(self, points):
        """The noise-free value's posterior mean and standard deviation at `points`.

        Args:
            points: `(m, dims)` points.

        Returns:
            `(mean, std)`, two `(m,)` arrays; `std` is infinite where
            nothing is known (a single point read, its noise not measured).
        """
        points = np.asarray(points, dtype=float)
        if self._gp is not None:
            mean, std = self._gp.predict(points, include_noise=False)
            return mean, np.maximum(std, 1e-12)
        # Nothing to model: the readings at a point stand for themselves.
        mean = np.full(len(points), self.readings.mean())
        std = np.full(len(points), math.inf)
        for group in self.groups:
            at = np.max(np.abs(points - self.x[group[0]]), axis=1) <= _SAME_POINT
            mean[at] = self.readings[group].mean()
            known = self.noise.std > 0.0 or self.noise.source != "model"
            if known or self.errors[group].any():
                std[at] = max(self._std_of_mean(group), 1e-12)
        return mean, std

    def _std_of_mean(self, group):
        """The deviation of the mean of a point's readings."""
        variance = self.noise.std**2 + np.mean(self.errors[group] ** 2)
        return math.sqrt(variance / len(group))


def _clipped(y, bound):
    """Readings far on the wrong side of a one-sided bound, clipped (what the model fits).

    "Far": further from the bound than twice the furthest reading on the
    feasible side, or than twice the median distance of all readings (a
    reading that barely clears the bound does not flatten the rest). The
    model is about the boundary: a trial that missed an accuracy floor by
    fifty points says only that it is infeasible, and its cliff would make
    the Gaussian process rough where it matters.
    """
    if not bound.one_sided:
        return y
    slack = np.array([bound.slack(v) for v in y])
    reach = slack.max()
    if reach <= 0.0:
        return y
    far = 2.0 * max(reach, float(np.median(np.abs(slack))))
    return y + np.maximum(-far - slack, 0.0) * bound.direction


def estimate(x, y, bound, confidence, noise=None, seed=0, errors=None):
    """Each point's estimated metric and probability of meeting `bound` (see `Model`).

    Args:
        x: `(n, dims)` points of the completed trials (unit cube).
        y: `(n,)` their readings of the constrained metric.
        bound: the `Constraint`.
        confidence: the level of the intervals, in `(0, 1)`.
        noise: optional known standard deviation of one reading.
        seed: the Gaussian processes' seed.
        errors: optional `(n,)` standard errors of the readings themselves
            (e.g. from the finite validation set), added in quadrature to
            the noise at each reading.

    Returns:
        `(estimates, noise)`: a list of `Feasibility`, one per point, and the
        `Noise` used (None when `x` is empty).
    """
    if len(y) == 0:
        return [], None
    y = np.asarray(y, dtype=float)
    model = Model(x, y, bound, noise=noise, seed=seed, errors=errors)
    mean, std = model.predict(model.x)
    clipped = _clipped(y, bound)
    counts = np.zeros(len(mean), dtype=int)
    for group in model.groups:
        counts[group] = len(group)
        if not np.array_equal(clipped[group], y[group]):
            # Far past the bound: the model saw it clipped; its readings speak.
            mean[group] = np.mean(y[group])
            known = model.noise.std or model.errors[group].any()
            std[group] = model._std_of_mean(group) if known else math.inf
    half = model.distribution.ppf(0.5 + 0.5 * confidence)
    return [
        Feasibility(
            mean=float(m),
            std=float(s),
            probability=probability(bound, m, s, model.distribution),
            low=float(m - half * s),
            high=float(m + half * s),
            readings=int(count),
        )
        for m, s, count in zip(mean, std, counts, strict=True)
    ], model.noise


def probability(bound, mean, std, distribution):
    """The probability that a value estimated as `mean` +- `std` meets `bound`.

    Args:
        bound: the `Constraint`.
        mean: the estimate.
        std: its standard deviation (> 0).
        distribution: a frozen standard `scipy.stats` distribution (normal
            or Student-t) of the estimate's error in units of `std`.

    Returns:
        A float in `[0, 1]`.
    """
    upper = 1.0 if bound.max_value is None else distribution.cdf((bound.max_value - mean) / std)
    lower = 0.0 if bound.min_value is None else distribution.cdf((bound.min_value - mean) / std)
    return float(max(0.0, upper - lower))


def check_confidence(confidence, noise=None):
    """Validates a search's `confidence=` and `noise=` arguments.

    Raises:
        ValueError: if `confidence` is not in `[0.5, 1)` or `noise` is not
            None or a positive number.
    """
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, numbers.Real)
        or not 0.5 <= confidence < 1.0
    ):
        raise ValueError(
            "`confidence` must be a probability in [0.5, 1): how sure the search must be "
            "that the trial it returns meets the constraint (0.8 by default; 0.5 trusts "
            f"the estimated value itself). Received: confidence={confidence!r}."
        )
    if noise is not None and (
        isinstance(noise, bool)
        or not isinstance(noise, numbers.Real)
        or not math.isfinite(noise)
        or noise <= 0
    ):
        raise ValueError(
            "`noise` must be a positive number, the standard deviation of one reading of "
            "the constrained metric (e.g. 0.003 for accuracies that vary by a few tenths "
            "of a point between fine-tunings), or None to measure it from replicates. "
            f"Received: noise={noise!r}."
        )
