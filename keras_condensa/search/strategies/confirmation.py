"""Confirmation: trials that make a cheaper point feasible with confidence.

The search answers with the cheapest trial that meets the constraint with
the oracle's confidence (`search.confidence`). Once a feasible trial exists,
where the next trial goes is judged by that answer: each candidate (a new
point, or a completed trial to read again) is scored by the probability that
it becomes feasible with confidence after one, two or three readings
(`acquisition.log_probability_of_confidence`), times the share of the cost
it would save below the current answer, per reading. While no trial is
feasible with confidence, the probability alone decides (cost breaks near
ties): an unsure model would otherwise send every trial to the cheapest end. The first such trial,
unless the noise is given, replicates the cheapest feasible one: the noise
is measured near the boundary before anything rests on it. Before the search
ends (its last trial, or when nothing is worth another), an answer read only
once is read again: a single lucky reading is what confidence most often
mistakes. It never stops early without an answer feasible with confidence.

`confirm` does this for any candidates; `ConfidentImprovement` is the
strategy for several hyperparameters (`LevelSetBracket` calls `confirm`
with its own grid once the bracket around the boundary is narrow).
"""

import math

import numpy as np

from keras_condensa.search import acquisition, confidence
from keras_condensa.search.monotone import consistent, feasibility_directions
from keras_condensa.search.strategies.base import Replicate, Stop, Strategy
from keras_condensa.search.strategies.candidates import candidates, ranked
from keras_condensa.search.strategies.posterior import Posterior

# A point's confidence is looked ahead over up to this many readings of it.
_LOOKAHEAD = 3


def model_of(history):
    """The `confidence.Model` of a history's constrained metric."""
    return confidence.Model(
        history.completed_x,
        history.constraint,
        history.bound,
        noise=history.noise,
        seed=history.seed or 0,
        errors=history.errors,
    )


def unmeasured(history, model):
    """Whether the noise is neither given nor measured from replicates yet."""
    return history.noise is None and model.noise.source == "model"


def first_replicate(history):
    """A replicate of the cheapest feasible trial (to measure the noise).

    None when one is running already (a parallel tuner's): the next trial
    goes elsewhere.
    """
    feasible = np.flatnonzero(history.feasible)
    point = history.completed_x[feasible[np.argmin(history.objective[feasible])]]
    return None if _running(history, point) else Replicate(point)


def _running(history, point):
    """Whether a trial at `point` is running."""
    return bool(np.any(np.all(history.pending_x == point, axis=1)))


def confirm(history, model, points, cost, directions=None, min_expected_saving=0.0):
    """The next trial of the confirmation phase.

    Under a known order (`directions`), a candidate's probability is bounded
    by that of each completed trial it compares with
    (`acquisition.monotone_envelope`): below an infeasible trial, say, a new
    point cannot become feasible with confidence, however unsure the model
    is far from the data.

    Args:
        history: the `History` (with a feasible trial).
        model: its `confidence.Model`.
        points: `(m, dims)` candidate new points.
        cost: `(m,)` their oriented objective (as `history.objective`).
        directions: optional `(dims,)` directions of feasibility
            (`monotone.feasibility_directions`).
        min_expected_saving: stop when the best score is below this, once a
            trial is feasible with confidence (0: never stop).

    Returns:
        A `Replicate`, the ranked new points, or a `Stop`.
    """
    done = history.completed_x
    points = np.vstack([points, done])
    cost = np.concatenate([cost, history.objective])
    sign = float(history.bound.direction)
    level = history.bound.min_value if sign > 0 else history.bound.max_value
    mean, std = model.predict(points)
    quantile = model.distribution.ppf(history.confidence)
    known = np.array(
        [
            confidence.probability(history.bound, m, s, model.distribution) >= history.confidence
            for m, s in zip(mean[-len(done) :], std[-len(done) :], strict=True)
        ]
    )
    if known.any():
        saving = np.maximum(_relative(history, history.objective[known].min(), cost), 0.0)
    else:
        # No answer yet: first make one point sure (the cheaper the better, a
        # little), rather than chase savings the model is too unsure to promise.
        saving = 1.0 - 0.1 * np.maximum(_relative(history, cost.max(), cost), 0.0)
    new = len(points) - len(done)
    reference = np.ones(len(done), dtype=bool)
    if directions is not None:
        reference = consistent(done, history.feasible, directions)
    score = np.zeros(len(points))
    for readings in range(1, _LOOKAHEAD + 1):
        log_q = acquisition.log_probability_of_confidence(
            sign * mean, std, model.reading_std / math.sqrt(readings), sign * level, quantile
        )
        if directions is not None:
            log_q[:new] = acquisition.monotone_envelope(
                log_q[:new], points[:new], log_q[new:][reference], done[reference], directions
            )
        score = np.maximum(score, np.exp(log_q) * saving / readings)
    best = int(np.argmax(score))
    worth = min_expected_saving == 0 or score[best] >= min_expected_saving
    last = history.max_trials is not None and history.num_trials + 1 >= history.max_trials
    if known.any() and (last or not worth):
        answer = done[np.flatnonzero(known)[np.argmin(history.objective[known])]]
        if np.sum(np.all(done == answer, axis=1)) == 1 and not _running(history, answer):
            return Replicate(answer)
    if not worth and known.any():
        return Stop(
            "the boundary is located: a further trial was expected to save less than "
            f"{100 * min_expected_saving:g}% of the {history.objective_name} of the "
            "cheapest trial feasible with confidence"
        )
    if best >= new and not _running(history, done[best - new]):
        return Replicate(done[best - new])
    return ranked(points[:new], score[:new], history)


def _relative(history, reference, cost):
    """How much less than `reference` each oriented objective in `cost` is, as a share."""
    saving = reference - cost
    if history.log_cost:  # differences of log costs: the ratio's complement
        return -np.expm1(-saving) if history.sign > 0 else np.expm1(saving)
    return saving / max(abs(float(reference)), 1e-12)


class ConfidentImprovement(Strategy):
    """Where the answer feasible with confidence is most likely to get cheaper.

    Defers (returns None) before two trials completed, or while no trial
    but the dearest is feasible (`ConstrainedExpectedImprovement` looks for
    a cheaper feasible one first). Candidates are those of `ConstrainedExpectedImprovement` plus the
    completed trials (replicates); the cost at a new point is the objective's
    Gaussian-process mean. See the module docstring.
    """

    def propose(self, history, space, rng):
        """The candidates by expected confident saving; see `Strategy.propose`."""
        if len(history.completed_x) < 2 or not history.feasible.any():
            return None
        model = model_of(history)
        if unmeasured(history, model):
            cheapest = history.objective[history.feasible].min()
            if cheapest >= history.objective.max():
                return None  # only the dearest trial is feasible: explore first
            replicate = first_replicate(history)
            if replicate is not None:
                return replicate
        points = candidates(history, space, rng)
        posterior = Posterior(history, space, int(rng.integers(2**31 - 1)))
        cost, _ = posterior.objective_gp().predict(points, include_noise=False)
        directions = feasibility_directions(
            history.monotone, history.bound, space, history.completed_x, history.objective
        )
        return confirm(history, model, points, cost, directions)
