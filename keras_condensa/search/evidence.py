"""`Evidence`: how sure a search is that each of its trials meets the constraint.

The Keras Tuner side of `search.confidence`: it reads the completed trials
of any oracle (their hyperparameters, encoded in its space, their readings
of the constrained metric and, when reported, each reading's own standard
error, the metric named `<name>_std`) and caches their `Feasibility` until
a trial changes. `ConstrainedBayesianOracle` ranks its answer with it; the
tuner reports with it for any other oracle.
"""

import math

import numpy as np

from keras_condensa.search import confidence as confidence_module
from keras_condensa.search.constraint import trial_metric
from keras_condensa.search.encoding import Space

_COMPLETED = "COMPLETED"


def error_name(name):
    """The metric a trial may report as the standard error of its `name` reading."""
    return f"{name}_std"


class Evidence:
    """Each completed trial's `search.confidence.Feasibility` (cached).

    Args:
        constraint: the `Constraint`.
        confidence: the level of the intervals, in `[0.5, 1)`.
        noise: optional known standard deviation of one reading.
        seed: the Gaussian processes' seed (None for 0).

    Example:

    ```python
    evidence = Evidence(Constraint("val_accuracy", min_value=0.97), 0.9)
    by_id, noise = evidence(oracle.trials, oracle.hyperparameters)
    ```
    """

    def __init__(self, constraint, confidence, noise=None, seed=None):
        self.constraint = constraint
        self.confidence = float(confidence)
        self.noise = noise
        self.seed = seed or 0
        self._cache = (None, {}, None)

    def __call__(self, trials, hyperparameters):
        """The estimates of the completed trials.

        Args:
            trials: dict from trial id to `Trial` (an oracle's `trials`).
            hyperparameters: the oracle's `keras_tuner.HyperParameters`.

        Returns:
            `({trial_id: Feasibility}, Noise or None)`: every completed
            trial with a finite reading, and the noise used.
        """
        done, values, errors = [], [], []
        for _, trial in sorted(trials.items()):
            value = trial_metric(trial, self.constraint.name, math.nan)
            if trial.status == _COMPLETED and math.isfinite(value):
                done.append(trial)
                values.append(value)
                errors.append(trial_metric(trial, error_name(self.constraint.name), 0.0))
        key = (tuple(t.trial_id for t in done), tuple(values), tuple(errors))
        if self._cache[0] != key:
            found, noise = confidence_module.estimate(
                Space(hyperparameters).encode(done),
                values,
                self.constraint,
                self.confidence,
                noise=self.noise,
                seed=self.seed,
                errors=np.array(errors, dtype=float),
            )
            self._cache = (key, {t.trial_id: e for t, e in zip(done, found, strict=True)}, noise)
        return self._cache[1], self._cache[2]

    def ranked(self, trials, hyperparameters, cost):
        """The completed trials with a reading, the search's answer first.

        First those feasible with confidence, cheapest first (ties: the
        reading furthest inside the bound); then the others, most likely
        feasible first (ties: cheapest), so that with no answer the first is
        the one closest to feasibility.

        Args:
            trials: dict from trial id to `Trial`.
            hyperparameters: the oracle's `keras_tuner.HyperParameters`.
            cost: `trial -> float`, the objective oriented to be minimised.

        Returns:
            A list of `Trial`s.
        """
        estimates, _ = self(trials, hyperparameters)

        def key(trial):
            estimate = estimates[trial.trial_id]
            if estimate.confident(self.confidence):
                reading = trial_metric(trial, self.constraint.name)
                return (0, cost(trial), -self.constraint.slack(reading))
            return (1, -estimate.probability, cost(trial))

        return sorted((t for _, t in sorted(trials.items()) if t.trial_id in estimates), key=key)


def replicate_seed(seed, trial, trials):
    """The fine-tuning seed of `trial`: `seed + k` when k earlier trials had its values.

    A replicate (a trial repeating earlier hyperparameter values, which the
    oracle proposes to measure the noise) must be an independent
    fine-tuning, or it would measure no noise at all.

    Args:
        seed: the tuner's seed (None stays None).
        trial: the `Trial` about to run.
        trials: the oracle's trials by id, or None where they are not
            visible (a distributed worker: then `seed + trial number`, a
            seed of its own for every trial).

    Returns:
        An int or None.
    """
    if seed is None:
        return None
    if trials is None:
        return seed + int(trial.trial_id)
    values = trial.hyperparameters.values
    earlier = [t for i, t in sorted(trials.items()) if int(i) < int(trial.trial_id)]
    return seed + sum(1 for t in earlier if t.hyperparameters.values == values)
