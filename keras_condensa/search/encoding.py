"""Trials as points of the unit cube, and points back as hyperparameter values.

The search works on Keras Tuner's own scale: each tuned hyperparameter is one
coordinate in `[0, 1]` (`value_to_prob`: a log-sampled density's logarithm,
scaled; a choice's index, centred in its cell). `Fixed` hyperparameters are
not coordinates; an inactive conditional one counts at its default.
`encode_history` turns the oracle's trials into the `History` its strategies
see.
"""

import keras_tuner
import numpy as np
from keras_tuner.engine import hyperparameters as hp_types
from keras_tuner.engine import trial as trial_module

from keras_condensa.search.confidence import DEFAULT_CONFIDENCE, replicate_groups
from keras_condensa.search.constraint import trial_metric
from keras_condensa.search.strategies.base import History

_Status = trial_module.TrialStatus


class Space:
    """The tuned hyperparameters of a search, as coordinates of the unit cube.

    Args:
        hyperparameters: the oracle's `keras_tuner.HyperParameters`.

    Example:

    >>> hp = keras_tuner.HyperParameters()
    >>> _ = hp.Float("density", 0.01, 1.0, sampling="log")
    >>> space = Space(hp)
    >>> space.decode([0.5])["density"]
    0.1
    """

    def __init__(self, hyperparameters):
        self.all_hyperparameters = hyperparameters
        self.hyperparameters = [
            hp for hp in hyperparameters.space if not isinstance(hp, hp_types.Fixed)
        ]

    @property
    def dims(self):
        """The number of coordinates (tuned hyperparameters)."""
        return len(self.hyperparameters)

    @property
    def ordered(self):
        """A `(dims,)` bool array: whether each coordinate's values are ordered."""
        return np.array([is_ordered(hp) for hp in self.hyperparameters], dtype=bool)

    def encode(self, trials):
        """The trials' hyperparameter values as points.

        Args:
            trials: a list of `keras_tuner` `Trial`s.

        Returns:
            A `(len(trials), dims)` float array in `[0, 1]`.
        """
        rows = []
        for trial in trials:
            hps = trial.hyperparameters
            row = []
            for hp in self.hyperparameters:
                active = hps.is_active(hp) and hp.name in hps.values
                value = hps.values[hp.name] if active else hp.default
                row.append(hp.value_to_prob(value))
            rows.append(row)
        return np.clip(np.array(rows, dtype=float).reshape(len(trials), self.dims), 0.0, 1.0)

    def decode(self, point):
        """The hyperparameter values at a point (`Fixed` ones at their value).

        Args:
            point: a `(dims,)` sequence of coordinates (clipped to `[0, 1]`).

        Returns:
            A dict from name to value of the active hyperparameters.
        """
        hps = keras_tuner.HyperParameters()
        index = 0
        for hp in self.all_hyperparameters.space:
            hps.merge([hp])
            if isinstance(hp, hp_types.Fixed):
                value = hp.value
            else:
                value = hp.prob_to_value(float(np.clip(point[index], 0.0, 1.0)))
                index += 1
                if isinstance(hp, hp_types.Float):
                    value = float(min(max(value, hp.min_value), hp.max_value))
            if hps.is_active(hp):
                hps.values[hp.name] = value
        return hps.values

    def snap(self, points):
        """Moves each coordinate of a discrete hyperparameter to its value's centre.

        Args:
            points: an `(n, dims)` array.

        Returns:
            A new `(n, dims)` array; continuous coordinates are unchanged.
        """
        points = points.copy()
        for k, hp in enumerate(self.hyperparameters):
            if isinstance(hp, hp_types.Float) and hp.step is None:
                continue
            column = points[:, k]
            snapped = {p: hp.value_to_prob(hp.prob_to_value(p)) for p in np.unique(column)}
            points[:, k] = [snapped[p] for p in column]
        return points


def is_ordered(hp):
    """Whether a hyperparameter's values are ordered (Float, Int, ordered Choice).

    Args:
        hp: a `keras_tuner` hyperparameter.

    Returns:
        A bool.
    """
    if isinstance(hp, hp_types.Boolean):
        return False
    if isinstance(hp, hp_types.Choice):
        return bool(getattr(hp, "ordered", False))
    return isinstance(hp, (hp_types.Float, hp_types.Int))


def encode_history(
    trials,
    running,
    space,
    constraint,
    objective,
    monotone,
    seed,
    confidence=DEFAULT_CONFIDENCE,
    noise=None,
    max_trials=None,
):
    """The trials as a `strategies.History`, in trial-id order (independent of file order).

    Completed trials whose objective (their score) or constrained metric is
    not finite are left out; running and invalid ones are pending.

    Args:
        trials: dict from trial id to `Trial` (the oracle's `trials`).
        running: ids of trials running or queued for a retry.
        space: the `Space`.
        constraint: the `Constraint`.
        objective: the `keras_tuner.Objective`.
        monotone: the oracle's `monotone` option.
        seed: the search's seed.
        confidence: the oracle's `confidence`.
        noise: the oracle's `noise` (None: measured).
        max_trials: the oracle's `max_trials`.

    Returns:
        A `History`.
    """
    completed, failed, pending = [], [], []
    for trial_id, trial in sorted(trials.items()):
        if trial_id in running or trial.status in (_Status.RUNNING, _Status.INVALID):
            pending.append(trial)
        elif trial.status == _Status.COMPLETED:
            completed.append(trial)
        elif trial.status == _Status.FAILED:
            failed.append(trial)
    values = np.array([trial_metric(t, constraint.name) for t in completed], dtype=float)
    cost = np.array([t.score for t in completed], dtype=float)
    usable = np.isfinite(values) & np.isfinite(cost)
    completed = [t for t, ok in zip(completed, usable, strict=True) if ok]
    values, cost = values[usable], cost[usable]
    errors = np.array(
        [trial_metric(t, f"{constraint.name}_std", 0.0) for t in completed], dtype=float
    )
    log_cost = bool(len(cost)) and bool(np.all(cost > 0))
    if log_cost:
        cost = np.log(cost)
    sign = -1.0 if objective.direction == "max" else 1.0
    x = space.encode(completed)
    # Replicates are judged together: the mean of the readings at their values.
    means = values.copy()
    for group in replicate_groups(x):
        means[group] = values[group].mean()
    return History(
        completed_x=x,
        constraint=values,
        errors=errors,
        objective=sign * cost,
        feasible=np.array([constraint.is_satisfied(v) for v in means], dtype=bool),
        log_cost=log_cost,
        failed_x=space.encode(failed),
        pending_x=space.encode(pending),
        bound=constraint,
        objective_name=objective.name,
        sign=sign,
        monotone=monotone,
        seed=seed,
        num_trials=len(trials),
        confidence=confidence,
        noise=noise,
        max_trials=max_trials,
    )
