"""`ConstrainedBayesianOracle`: minimise a cost subject to a bound on a metric.

A real `keras_tuner.Oracle`: Keras Tuner owns the trials, their persistence,
resumption and distributed tuning. This module is the glue: it encodes the
trials (`encoding`), asks its strategies where the next trial goes
(`populate_space`; the search itself, after Condensa's, is in
`search.strategies`), and ranks trials under the `Constraint` (`score_trial`,
`get_best_trials`, `pareto_front`).

Everything the oracle uses is derived from hyperparameter values and the
metrics reported through `update_trial`, plus the seed, so a chief running it
for distributed workers needs nothing else, and a reloaded oracle proposes
exactly what an uninterrupted one would.
"""

import warnings

import keras_tuner
import numpy as np
from keras_tuner.engine import trial as trial_module

from keras_condensa.search.arguments import check_objective, check_positive_int
from keras_condensa.search.confidence import DEFAULT_CONFIDENCE, check_confidence
from keras_condensa.search.constraint import Constraint, trial_metric
from keras_condensa.search.encoding import Space, encode_history
from keras_condensa.search.evidence import Evidence
from keras_condensa.search.monotone import check_monotone
from keras_condensa.search.persistence import AtomicState
from keras_condensa.search.strategies import Replicate, Stop, default_strategies
from keras_condensa.search.strategies.base import ask, check_strategies

_RUNNING = trial_module.TrialStatus.RUNNING
_STOPPED = trial_module.TrialStatus.STOPPED
_COMPLETED = trial_module.TrialStatus.COMPLETED


class ConstrainedBayesianOracle(AtomicState, keras_tuner.Oracle):
    """Bayesian optimisation of an objective under a constraint on a metric.

    Minimises (or maximises) `objective` over the hyperparameter space among
    trials whose `constraint.name` metric satisfies the constraint, e.g. the
    fewest nonzero parameters with `val_accuracy >= 0.97`. Both metrics must be
    reported to `update_trial`. Infeasible trials stay in the data of the
    constraint's Gaussian process; failed trials are never proposed again.

    Readings of the constrained metric are noisy, so the answer is the
    cheapest trial that meets the constraint *with confidence*: the
    probability that its noise-free value meets it, from a Gaussian process
    of the readings whose noise is measured from replicates (trials run
    again with the same values), is at least `confidence`
    (`search.confidence`; `feasibility()` gives each trial's estimate). A
    lucky reading just past the bound is not the answer. The search spends
    some trials on replicates and on confirming the cheapest candidates.

    Without a project directory (a `Tuner` sets one), the oracle keeps its
    state in memory; `save()`/`reload()` need one.

    Args:
        objective: the cost, a `keras_tuner.Objective` (e.g.
            `Objective("tflite_bytes", "min")`) or a metric name whose
            direction Keras Tuner can infer. A single objective.
        constraint: a `Constraint` on another reported metric.
        max_trials: total number of trials, a positive int.
        hyperparameters: optional `keras_tuner.HyperParameters`, the space.
        num_initial_points: trials before the Gaussian processes take over
            (`strategies.InitialDesign`); defaults to 2 for one hyperparameter
            (the middle of its range, then the middle of the half the boundary
            is in) and to `d + 1` for `d` of them (the maximum corner, the
            centre, then Sobol points).
        monotone: the order structure of the constrained metric
            (`search.monotone`). `True` (default): monotone in every ordered
            hyperparameter, nearer feasibility where the cost is higher (more
            density: more accuracy and more bytes). `False`: no structure
            assumed. Or a dict from hyperparameter name to +1 (the metric
            rises with it, like density) or -1 (it falls, like sparsity).
        min_expected_saving: with one hyperparameter, the search stops
            early, before `max_trials`, when the next trial is expected to
            save less than this share of the cost of the cheapest trial
            feasible with confidence (the probability that it makes a point
            feasible with confidence times the relative saving, per trial).
            Defaults to 0.04; 0 runs every trial. See
            `strategies.LevelSetBracket`.
        seed: optional int, the random seed.
        allow_new_entries: as in `keras_tuner.Oracle`.
        tune_new_entries: as in `keras_tuner.Oracle`.
        max_retries_per_trial: as in `keras_tuner.Oracle`.
        max_consecutive_failed_trials: as in `keras_tuner.Oracle`.
        confidence: the probability, in `[0.5, 1)`, with which the answer
            must meet the constraint (default 0.8, `DEFAULT_CONFIDENCE`). 0.5 trusts the
            estimated value itself.
        noise: optional known standard deviation of one reading of the
            constrained metric; by default it is measured from replicates.
        strategies: optional list of `strategies.Strategy`, asked in order
            where the next trial goes (the first that answers decides; see
            `keras_condensa.search.strategies`). Defaults to
            `strategies.default_strategies(num_initial_points,
            min_expected_saving)`; when given, those two arguments must stay
            at their defaults (pass them to the strategies instead).

    Raises:
        TypeError: if `constraint` is not a `Constraint`, `monotone` has the
            wrong type, or `strategies` holds something other than
            `Strategy` instances.
        ValueError: if `objective` is missing or several, `max_trials < 1`,
            `num_initial_points < 1`, `min_expected_saving` is not in
            `[0, 1)`, `monotone` names a direction other than +1, -1 or 0,
            `strategies` is given with `num_initial_points` or
            `min_expected_saving`, `confidence` is not in `[0.5, 1)` or
            `noise` is not a positive number.

    Example:

    ```python
    hp = keras_tuner.HyperParameters()
    hp.Float("density", 0.005, 1.0, sampling="log")
    oracle = ConstrainedBayesianOracle(
        objective=keras_tuner.Objective("nonzero_params", "min"),
        constraint=Constraint("val_accuracy", min_value=0.97),
        hyperparameters=hp, max_trials=10, seed=0)
    trial = oracle.create_trial("tuner0")
    density = trial.hyperparameters.get("density")
    oracle.update_trial(trial.trial_id, {"nonzero_params": density * 1e5,
                                         "val_accuracy": 0.98})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)
    best = oracle.get_best_trials(1)[0]
    ```
    """

    def __init__(
        self,
        objective=None,
        constraint=None,
        max_trials=10,
        hyperparameters=None,
        num_initial_points=None,
        monotone=True,
        min_expected_saving=0.04,
        seed=None,
        allow_new_entries=True,
        tune_new_entries=True,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=3,
        strategies=None,
        confidence=DEFAULT_CONFIDENCE,
        noise=None,
    ):
        check_objective(objective)
        check_confidence(confidence, noise)
        if not isinstance(constraint, Constraint):
            raise TypeError(
                "`constraint` must be a `keras_condensa.search.Constraint`, e.g. "
                'Constraint("val_accuracy", min_value=0.97). '
                f"Received: constraint={constraint!r}."
            )
        check_positive_int("max_trials", max_trials)
        check_monotone(monotone)
        if strategies is None:
            strategies = default_strategies(num_initial_points, min_expected_saving)
        elif num_initial_points is not None or min_expected_saving != 0.04:
            raise ValueError(
                "`num_initial_points` and `min_expected_saving` configure the default "
                "strategies; with `strategies=`, pass them to the strategies themselves, "
                "e.g. strategies.default_strategies(num_initial_points=4). Received: "
                f"num_initial_points={num_initial_points!r}, "
                f"min_expected_saving={min_expected_saving!r}."
            )
        super().__init__(
            objective=objective,
            max_trials=max_trials,
            hyperparameters=hyperparameters,
            allow_new_entries=allow_new_entries,
            tune_new_entries=tune_new_entries,
            seed=seed,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        if self.objective.name == constraint.name:
            raise ValueError(
                f"The objective and the constraint are the same metric "
                f"({constraint.name!r}); constrain another metric (e.g. "
                f"val_accuracy) and minimise a cost. Received: "
                f"objective={self.objective!r}, constraint={constraint!r}."
            )
        if seed is not None:  # Keras Tuner replaces a seed of 0 with a random one.
            self.seed = self._seed_state = seed
        self.constraint = constraint
        self.num_initial_points = num_initial_points
        self.monotone = dict(monotone) if isinstance(monotone, dict) else monotone
        self.min_expected_saving = float(min_expected_saving)
        self.strategies = check_strategies(strategies)
        self.confidence = float(confidence)
        self.noise = None if noise is None else float(noise)
        self._evidence = Evidence(self.constraint, self.confidence, self.noise, self.seed)
        # Why the search ended before `max_trials`, if it did.
        self.stop_reason = None
        self._warned_infeasible = False

    # ------------------------------------------------------------------
    # Keras Tuner hooks.

    def populate_space(self, trial_id):
        """Chooses the hyperparameter values of the next trial.

        Args:
            trial_id: the id of the trial being created.

        Returns:
            A dict with `"status"` (`"RUNNING"`, or `"STOPPED"` once the space
            is exhausted or a strategy ended the search, see
            `min_expected_saving` and `stop_reason`) and `"values"`
            (hyperparameter name to value).
        """
        self.stop_reason = None
        space = Space(self.hyperparameters)
        if not space.dims:
            return self._random_response()
        proposal = ask(self.strategies, self._collect(), space, self.seed)
        if isinstance(proposal, Stop):
            self.stop_reason = proposal.reason
            return {"status": _STOPPED, "values": None}
        if isinstance(proposal, Replicate):
            return {"status": _RUNNING, "values": self._values_at(space, proposal.point)}
        for point in proposal if proposal is not None else ():
            values = space.decode(point)
            if not self._duplicate(values):
                return {"status": _RUNNING, "values": values}
        return self._random_response()

    @keras_tuner.synchronized
    def update_trial(self, trial_id, metrics, step=0):
        """Records metrics of a trial; the objective must be among them.

        Args:
            trial_id: the trial's id.
            metrics: dict of metric name to value; must hold the objective,
                and (by the end of the trial) the constrained metric.
            step: optional step (e.g. epoch) of these values.

        Returns:
            The updated `Trial`.

        Raises:
            ValueError: if the objective is not in `metrics`.
        """
        if self.objective.name not in metrics:
            raise ValueError(
                f"The objective {self.objective.name!r} is missing from the metrics "
                f"reported for trial {trial_id}: {sorted(metrics)}. Report it in "
                "`update_trial`, or create the oracle with a reported metric as "
                "`objective=keras_tuner.Objective(name, direction)`." + self._reported_hint()
            )
        return super().update_trial(trial_id, metrics, step=step)

    def score_trial(self, trial):
        """Scores a completed trial at its best step under the constraint.

        Keras Tuner's score is the objective's best value; here the step is
        chosen as `get_best_trials` ranks trials (feasible steps by objective,
        then infeasible ones by violation), so that `trial.score` and the
        constrained metric come from the same step.

        Args:
            trial: a completed `Trial`.

        Raises:
            ValueError: if the trial reported no objective or no constrained
                metric; the message lists what it did report.
        """
        for name, role in (
            (self.objective.name, "objective"),
            (self.constraint.name, "constraint"),
        ):
            if not trial.metrics.exists(name):
                raise ValueError(
                    f"Trial {trial.trial_id} completed without reporting the {role} "
                    f"metric {name!r}; it reported {sorted(trial.metrics.metrics)}. "
                    "Report it in `update_trial` (e.g. from the validation logs), or "
                    f"change the oracle's {role} to a metric the trials report."
                    + self._reported_hint()
                )
        super().score_trial(trial)
        objective = {o.step: o.mean() for o in trial.metrics.get_history(self.objective.name)}
        constrained = {o.step: o.mean() for o in trial.metrics.get_history(self.constraint.name)}
        best = self.constraint.best_step(objective, constrained, self._sign())
        if best is not None:
            trial.score = objective[best]
            trial.best_step = best

    @keras_tuner.synchronized
    def end_trial(self, trial):
        """Ends a trial as Keras Tuner does; warns if the search ends infeasible.

        Args:
            trial: the `Trial`, with status `"COMPLETED"`, `"INVALID"` or
                `"FAILED"`.
        """
        super().end_trial(trial)
        # Keras Tuner saved the state while the trial was still "ongoing" (a
        # Tuner saves again afterwards); save the final state for standalone use.
        self.save()
        finished = len(self.trials) >= self.max_trials and not self.ongoing_trials
        if finished and self.violated_constraint is not None and not self._warned_infeasible:
            self._warned_infeasible = True
            closest = self.get_best_trials(1)[0]
            warnings.warn(
                f"No trial met the constraint {self.constraint.describe()}: all "
                f"{len(self._completed_trials())} completed trials violate it. The "
                f"closest is trial {closest.trial_id} "
                f"({self.constraint.name}={self.constraint_value(closest):.6g}, "
                f"values {closest.hyperparameters.values}); `get_best_trials()` "
                "returns trials ordered by violation. Relax the bound, widen the "
                "search space or fine-tune longer.",
                UserWarning,
                stacklevel=2,
            )

    def get_best_trials(self, num_trials=1):
        """The best trials: those feasible with confidence by objective, then the rest.

        First the trials feasible with `confidence` (`feasibility()`),
        cheapest first; then the others, most likely feasible first (when
        nothing is feasible, the closest); then the trials that did not
        complete.

        Args:
            num_trials: how many to return.

        Returns:
            A list of at most `num_trials` `Trial`s.
        """
        self._estimates()
        ranked = self._evidence.ranked(
            self.trials, self.hyperparameters, lambda t: self._sign() * t.score
        )
        rest = [t for _, t in sorted(self.trials.items()) if t not in ranked]
        # Completed trials without a reading, then those that did not complete.
        unfinished = sorted(rest, key=lambda t: t.status != _COMPLETED)
        return (ranked + unfinished)[:num_trials]

    def feasibility(self, trial):
        """How sure the search is that a completed trial meets the constraint.

        Args:
            trial: a `Trial`.

        Returns:
            A `search.confidence.Feasibility`, or None for a trial that did
            not complete with a finite value.
        """
        return self._estimates().get(trial.trial_id)

    @property
    def measured_noise(self):
        """The `search.confidence.Noise` of the constrained metric, or None before any trial.

        Given (`noise=`), measured from replicates, or, before any replicate,
        the noise a Gaussian process fits to the readings.
        """
        self._estimates()
        return self._evidence(self.trials, self.hyperparameters)[1]

    def get_state(self):
        state = super().get_state()
        state.update(
            {
                "constraint": self.constraint.get_config(),
                "num_initial_points": self.num_initial_points,
                "monotone": self.monotone,
                "min_expected_saving": self.min_expected_saving,
                "confidence": self.confidence,
                "noise": self.noise,
            }
        )
        return state

    def set_state(self, state):
        super().set_state(state)
        saved = state.get("constraint")
        if saved is not None and Constraint.from_config(saved) != self.constraint:
            warnings.warn(
                f"This project was searched under {Constraint.from_config(saved)!r}; "
                f"continuing under {self.constraint!r}: the earlier trials are judged "
                "against the new constraint.",
                UserWarning,
                stacklevel=2,
            )
        self._warned_infeasible = False

    # ------------------------------------------------------------------
    # Trials under the constraint.

    def constraint_value(self, trial):
        """The constrained metric of a trial, at its scored step.

        Args:
            trial: a `Trial`.

        Returns:
            A float, or None if the trial did not report the metric.
        """
        return trial_metric(trial, self.constraint.name)

    def is_feasible(self, trial):
        """Whether a completed trial satisfies the constraint.

        Args:
            trial: a `Trial`.

        Returns:
            A bool; False for trials that did not complete.
        """
        return trial.status == _COMPLETED and self.constraint.is_satisfied(
            self.constraint_value(trial)
        )

    @property
    def violated_constraint(self):
        """The `Constraint` every completed trial violated, or None.

        None as long as no trial completed, or once one is feasible.
        """
        completed = self._completed_trials()
        if completed and not any(self.is_feasible(t) for t in completed):
            return self.constraint
        return None

    def pareto_front(self):
        """Feasible trials not dominated on (constrained metric, objective).

        A trial is dominated when another is at least as good on both (the
        constrained metric counts higher as better under a floor, lower under
        a ceiling only) and strictly better on one (`Constraint.pareto_front`).

        Returns:
            The non-dominated feasible `Trial`s, best objective first.
        """
        points = [
            (t, self._sign() * t.score, self.constraint_value(t))
            for t in self._completed_trials()
            if self.is_feasible(t)
        ]
        return self.constraint.pareto_front(points)

    def _random_response(self):
        values = self._random_values()
        if values is None:
            return {"status": _STOPPED, "values": None}
        return {"status": _RUNNING, "values": values}

    # ------------------------------------------------------------------
    # Data.

    def _collect(self):
        """The trials as a `strategies.History` (see `encoding.encode_history`)."""
        running = {t.trial_id for t in self.ongoing_trials.values()}
        running.update(self._retry_queue)
        return encode_history(
            self.trials,
            running,
            Space(self.hyperparameters),
            self.constraint,
            self.objective,
            monotone=self.monotone,
            seed=self.seed,
            confidence=self.confidence,
            noise=self.noise,
            max_trials=self.max_trials,
        )

    def _estimates(self):
        """`feasibility()` of every completed trial with a finite value, by trial id."""
        evidence = self._evidence
        if (evidence.confidence, evidence.noise) != (self.confidence, self.noise):
            evidence = self._evidence = Evidence(
                self.constraint, self.confidence, self.noise, self.seed
            )
        return evidence(self.trials, self.hyperparameters)[0]

    def _values_at(self, space, point):
        """The values of the completed trial at `point` (a replicate runs them exactly)."""
        trials = self._completed_trials()
        distance = np.abs(space.encode(trials) - np.asarray(point)[None]).max(axis=1)
        return dict(trials[int(np.argmin(distance))].hyperparameters.values)

    def _completed_trials(self):
        return [t for _, t in sorted(self.trials.items()) if t.status == _COMPLETED]

    def _sign(self):
        return -1.0 if self.objective.direction == "max" else 1.0

    def _reported_hint(self):
        names = sorted({n for t in self.trials.values() for n in t.metrics.metrics})
        return f" Metrics the trials reported so far: {names}." if names else ""
