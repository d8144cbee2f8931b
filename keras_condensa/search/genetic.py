"""`GeneticChannelOracle`: layer-wise genetic channel pruning (Hu et al. 2018).

After "A novel channel pruning method for deep neural network compression"
(Hu, Sun, Li, Wang, Gu, 2018): the layers are pruned one at a time, the most
robust first; each layer's keep-ratio is chosen by a genetic algorithm whose
fitness has two steps: a cheap one for the whole population (the pruned
model, not fine-tuned, on a small batch of training data, with a cost term:
`search.probe`), then a real one for the few survivors only (here: a
`CompressionTuner` trial, a short fine-tune and the validation accuracy). The
final model is fine-tuned by distillation from the dense model
(`search.distill_best`).

A real `keras_tuner.Oracle`: the trials, their files and resumption are
Keras Tuner's; what the search decided (the layer order, each stage's
trials, the values fixed so far) is in `get_state`, so a resumed project
goes on from its last stage.
"""

import math
import warnings

import keras_tuner
import numpy as np
from keras_tuner.engine import hyperparameters as hp_module
from keras_tuner.engine import trial as trial_module

from keras_condensa.search.arguments import check_objective, check_positive_int
from keras_condensa.search.constraint import Constraint, trial_metric
from keras_condensa.search.evolution import DEFAULT_GRID_SIZE, Gene, evolve
from keras_condensa.search.persistence import AtomicState
from keras_condensa.search.probe import DEFAULT_SAMPLES, Probe

_RUNNING = trial_module.TrialStatus.RUNNING
_IDLE = trial_module.TrialStatus.IDLE
_STOPPED = trial_module.TrialStatus.STOPPED
_COMPLETED = trial_module.TrialStatus.COMPLETED
_NOT_GENES = (hp_module.Boolean, hp_module.Fixed)


class GeneticChannelOracle(AtomicState, keras_tuner.Oracle):
    """Per-layer keep-ratios by a genetic algorithm per layer, the most robust layer first.

    The genes are the `Float`, `Int` and numeric `Choice` hyperparameters
    the scheme declares (e.g. one `hp.Float("keep_conv1", 0.1, 1.0)` per
    layer, given to a `kc.FilterPrune(include=["conv1"])`); a higher value
    must keep more (a keep-ratio, a density). `Boolean` and `Fixed` ones keep
    their defaults.

    The search, given to `CompressionTuner(oracle=...)`, which calls `bind`:

    1. Sensitivity: each gene alone is set to `sensitivity_points` values
       of its grid (the others at their largest value) and the pruned model
       is evaluated, without fine-tuning (BatchNormalization statistics
       re-estimated on the batch, see `search.probe`), on
       `fitness_samples` training samples. The genes are searched in order
       of the mean accuracy lost, the least first.
    2. One stage per gene: a genetic algorithm (`search.evolution.evolve`:
       `population`, `generations`, tournament selection, crossover,
       mutation) over the gene's grid, the earlier genes at the values
       fixed so far and the later ones at their largest. Its fitness is the
       batch accuracy minus `cost_weight` times the cost relative to the
       dense model (FLOPs of the shrunk model when the tuner shrinks, else
       nonzero parameters).
    3. The `survivors` fittest values become trials (fine-tuned, measured).
       The stage keeps the cheapest (by `objective`) that meets the
       `constraint`; when none does, the gene keeps its value. The cost
       weight doubles after a stage whose survivors all met the constraint
       and halves after one where none did, so the cheap fitness learns how
       much accuracy the fine-tune recovers.

    After the last gene, the stages start again from the first (with the
    values fixed so far) until `max_trials`, or until a whole pass proposes
    nothing new. The best trial (`get_best_trials`) is the cheapest meeting
    the constraint; when none does, the most accurate (a warning names it
    and the cheapest). The tuner's `best_trial()` applies its own rule (the
    cheapest feasible with `confidence`) to the same trials.

    The defaults are small (8 chromosomes, 4 generations, 2 survivors per
    stage), for searches of tens of trials, not the paper's sizes.

    Args:
        objective: the cost to minimise, a metric name (e.g. `"flops"`) or a
            `keras_tuner.Objective`.
        max_trials: trials (fine-tuned survivors), a positive int.
        constraint: optional `Constraint` on `val_accuracy`; by default
            `bind` sets the tuner's floor (`val_accuracy >= floor`).
        population: chromosomes per generation.
        generations: generations per stage.
        survivors: values per stage that become trials.
        crossover_rate: probability of crossover, in [0, 1].
        mutation_rate: probability that a bit flips, in [0, 1].
        cost_weight: initial weight (> 0) of the relative cost in the
            cheap fitness.
        fitness_samples: training samples of the cheap fitness.
        sensitivity_points: values per gene of the sensitivity measure.
        grid_size: values of a `Float` gene without `step`.
        hyperparameters: optional `keras_tuner.HyperParameters`.
        seed: optional int.
        max_retries_per_trial, max_consecutive_failed_trials: as in
            `keras_tuner.Oracle`.

    Raises:
        ValueError: a missing or multiple objective, a count that is not a
            positive integer, a rate outside [0, 1] or a `cost_weight` not
            positive.
        TypeError: `constraint` is not a `Constraint`.

    Example:

    ```python
    def scheme(hp):
        return kc.Compose([
            kc.FilterPrune(density=hp.Float(f"keep_{n}", 0.1, 1.0), include=[n])
            for n in ("conv1", "conv2")])

    oracle = kc.search.GeneticChannelOracle(objective="flops", max_trials=6, seed=0)
    tuner = kc.search.CompressionTuner(
        model, scheme, (x, y), (x_val, y_val), max_accuracy_drop=0.01, oracle=oracle,
        shrink=True, fine_tune_epochs=2, directory="runs", project_name="ga")
    tuner.search()
    final = kc.search.distill_best(tuner, epochs=10)
    ```
    """

    def __init__(
        self,
        objective=None,
        max_trials=10,
        constraint=None,
        population=8,
        generations=4,
        survivors=2,
        crossover_rate=0.8,
        mutation_rate=0.1,
        cost_weight=0.5,
        fitness_samples=DEFAULT_SAMPLES,
        sensitivity_points=3,
        grid_size=DEFAULT_GRID_SIZE,
        hyperparameters=None,
        seed=None,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=3,
    ):
        check_objective(objective)
        if isinstance(objective, str):
            objective = keras_tuner.Objective(objective, "min")
        for name, value in (
            ("max_trials", max_trials),
            ("population", population),
            ("generations", generations),
            ("survivors", survivors),
            ("fitness_samples", fitness_samples),
            ("sensitivity_points", sensitivity_points),
            ("grid_size", grid_size),
        ):
            check_positive_int(name, value)
        for name, rate in (("crossover_rate", crossover_rate), ("mutation_rate", mutation_rate)):
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise ValueError(f"`{name}` must be a probability in [0, 1]. Received: {rate!r}.")
        if (
            isinstance(cost_weight, bool)
            or not isinstance(cost_weight, (int, float))
            or not (cost_weight > 0 and math.isfinite(cost_weight))
        ):
            raise ValueError(
                "`cost_weight` weighs the relative cost against the batch accuracy in the "
                f"cheap fitness and must be a positive number. Received: {cost_weight!r}."
            )
        if constraint is not None and not isinstance(constraint, Constraint):
            raise TypeError(
                "`constraint` must be a `keras_condensa.search.Constraint` or None (the "
                f"tuner's accuracy floor). Received: constraint={constraint!r}."
            )
        super().__init__(
            objective=objective,
            max_trials=max_trials,
            hyperparameters=hyperparameters,
            seed=seed,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        bounded = "val_accuracy" if constraint is None else constraint.name
        if self.objective.name == bounded:
            raise ValueError(
                f"The objective and the constraint are the same metric ({bounded!r}); "
                "minimise a cost (e.g. objective='flops') under the floor on accuracy. "
                f"Received: objective={self.objective.name!r}."
            )
        if seed is not None:  # Keras Tuner replaces a seed of 0 with a random one.
            self.seed = self._seed_state = seed
        self.constraint = constraint
        self.population = population
        self.generations = generations
        self.survivors = survivors
        self.crossover_rate = float(crossover_rate)
        self.mutation_rate = float(mutation_rate)
        self.fitness_samples = fitness_samples
        self.sensitivity_points = sensitivity_points
        self.grid_size = grid_size
        self.probe = None
        self.stop_reason = None
        self._warned = False
        self._search = _initial_search(cost_weight)

    # ------------------------------------------------------------------
    # The tuner's hook.

    def bind(self, tuner):
        """Gives the oracle what its cheap fitness needs: called by `CompressionTuner`.

        Reads the tuner's dense model, scheme, training data, `shrink` and
        seed (`search.probe.Probe`) and, without a `constraint`, its accuracy
        floor.

        Args:
            tuner: the `CompressionTuner` this oracle searches for.
        """
        self.probe = Probe(tuner, self.fitness_samples)
        if self.constraint is None:
            self.constraint = Constraint("val_accuracy", min_value=tuner.accuracy_floor)

    # ------------------------------------------------------------------
    # Keras Tuner hooks.

    def populate_space(self, trial_id):
        """The next survivor of the current stage, running the stages as they come.

        Returns:
            A dict with `"status"` (`"RUNNING"`; `"IDLE"` while another
            worker's trial of the stage runs; `"STOPPED"` once a whole pass
            proposes nothing new, see `stop_reason`) and `"values"`.

        Raises:
            RuntimeError: the oracle was not bound to a tuner.
            ValueError: the space has no gene (no Float, Int or numeric
                Choice hyperparameter).
        """
        if self.probe is None:
            raise RuntimeError(
                "GeneticChannelOracle needs the tuner's model, scheme and data for its cheap "
                "fitness: pass it as CompressionTuner(oracle=...), which calls "
                "oracle.bind(tuner)."
            )
        search = self._search
        genes = self._genes()
        if not genes:
            raise ValueError(
                "GeneticChannelOracle found no Float, Int or numeric Choice hyperparameter to "
                "tune; declare one keep-ratio per layer in the scheme, e.g. "
                'kc.FilterPrune(density=hp.Float("keep_conv1", 0.1, 1.0), include=["conv1"]).'
            )
        if search["order"] is None:
            search["sensitivity"] = self._sensitivity(genes)
            search["order"] = sorted(genes, key=lambda n: (search["sensitivity"][n], n))
        for _ in range(len(genes) + 1):
            if search["queue"]:
                values = search["queue"].pop(0)
                search["stages"][-1]["trials"].append(trial_id)
                return {"status": _RUNNING, "values": values}
            if search["stages"] and self._pending(search["stages"][-1]):
                return {"status": _IDLE, "values": None}
            if search["stages"]:
                self._close(search["stages"][-1])
            self._open_stage(genes)
        self.stop_reason = (
            f"A whole pass over the {len(genes)} genes proposed no values not tried before."
        )
        self._warn_if_infeasible()
        return {"status": _STOPPED, "values": None}

    @keras_tuner.synchronized
    def end_trial(self, trial):
        """Ends a trial as Keras Tuner does; warns if the search ends with none feasible."""
        super().end_trial(trial)
        if len(self.trials) >= self.max_trials and not self.ongoing_trials:
            self._warn_if_infeasible()

    def get_best_trials(self, num_trials=1):
        """The cheapest trials meeting the constraint, then the others, most accurate first.

        Args:
            num_trials: how many to return.

        Returns:
            A list of at most `num_trials` `Trial`s; completed ones first.
        """
        sign = -1.0 if self.objective.direction == "max" else 1.0
        done = [t for _, t in sorted(self.trials.items()) if t.status == _COMPLETED]

        def key(trial):
            violation = self._violation(trial)
            score = trial.score if trial.score is not None else math.inf
            return (violation > 0, violation, sign * score if violation == 0 else 0.0)

        rest = [t for _, t in sorted(self.trials.items()) if t.status != _COMPLETED]
        return (sorted(done, key=key) + rest)[:num_trials]

    def is_feasible(self, trial):
        """Whether a completed trial met the constraint."""
        return trial.status == _COMPLETED and self._violation(trial) == 0

    def get_state(self):
        state = super().get_state()
        state["genetic"] = {
            "search": self._search,
            "constraint": None if self.constraint is None else self.constraint.get_config(),
        }
        return state

    def set_state(self, state):
        super().set_state(state)
        saved = state.get("genetic")
        if saved is None:
            return
        self._search = saved["search"]
        if saved["constraint"] is not None and self.constraint is not None:
            old = Constraint.from_config(saved["constraint"])
            if old != self.constraint:
                warnings.warn(
                    f"This project was searched under {old!r}; continuing under "
                    f"{self.constraint!r}: earlier stages are judged against the new one.",
                    UserWarning,
                    stacklevel=2,
                )

    # ------------------------------------------------------------------
    # Stages.

    def _genes(self):
        return {
            hp.name: Gene(hp, self.grid_size)
            for hp in self.hyperparameters.space
            if not isinstance(hp, _NOT_GENES)
        }

    def _values(self, genes, changes=None):
        """All values: fixed genes, the others at their largest, defaults elsewhere."""
        values = {hp.name: hp.default for hp in self.hyperparameters.space}
        values.update({name: gene.grid[-1] for name, gene in genes.items()})
        values.update(self._search["fixed"])
        values.update(changes or {})
        return values

    def _sensitivity(self, genes):
        """Mean batch accuracy lost by each gene alone at `sensitivity_points` grid values."""
        result = {}
        for name, gene in genes.items():
            top = len(gene.grid) - 1
            picks = sorted(
                {
                    int(round(top * k / (self.sensitivity_points + 1)))
                    for k in range(1, self.sensitivity_points + 1)
                }
            )
            losses = [
                self.probe.dense_accuracy
                - self.probe(self.hyperparameters, self._values(genes, {name: gene.grid[i]}))[0]
                for i in picks
            ]
            result[name] = float(np.mean(losses))
        return result

    def _open_stage(self, genes):
        """Runs the genetic algorithm of the next gene and queues its survivors."""
        search = self._search
        index = len(search["stages"])
        name = search["order"][index % len(search["order"])]
        gene = genes[name]
        weight = search["cost_weight"]

        def fitness(i):
            reading, cost = self.probe(
                self.hyperparameters, self._values(genes, {name: gene.grid[i]})
            )
            return reading - weight * cost

        rng = np.random.default_rng([int(self.seed or 0), index])
        ranked = evolve(
            fitness,
            len(gene.grid),
            rng,
            population=self.population,
            generations=self.generations,
            crossover_rate=self.crossover_rate,
            mutation_rate=self.mutation_rate,
        )
        # The values already measured, and the stage's starting point (no change).
        tried = [t.hyperparameters.values for t in self.trials.values()] + [self._values(genes)]
        queue = []
        for _, i in ranked:
            values = self._values(genes, {name: gene.grid[i]})
            if values not in tried and values not in queue:
                queue.append(values)
            if len(queue) == self.survivors:
                break
        top = [[gene.grid[i], score] for score, i in ranked[: 2 * self.survivors]]
        search["stages"].append({"gene": name, "trials": [], "fitness": top})
        search["queue"] = queue

    def _pending(self, stage):
        return any(
            self.trials[i].status not in (_COMPLETED, "FAILED", "INVALID")
            for i in stage["trials"]
            if i in self.trials
        )

    def _close(self, stage):
        """Fixes the stage's gene at its cheapest feasible trial; adapts the cost weight."""
        if stage.get("closed"):
            return
        stage["closed"] = True
        trials = [self.trials[i] for i in stage["trials"] if i in self.trials]
        done = [t for t in trials if t.status == _COMPLETED]
        feasible = [t for t in done if self._violation(t) == 0]
        if feasible:
            sign = -1.0 if self.objective.direction == "max" else 1.0
            best = min(feasible, key=lambda t: sign * t.score)
            self._search["fixed"][stage["gene"]] = best.hyperparameters.values[stage["gene"]]
            stage["winner"] = best.trial_id
        if done and len(feasible) == len(done):
            self._search["cost_weight"] *= 2.0
        elif done and not feasible:
            self._search["cost_weight"] /= 2.0

    def _warn_if_infeasible(self):
        done = [t for t in self.trials.values() if t.status == _COMPLETED]
        if not done or self._warned or any(self._violation(t) == 0 for t in done):
            return
        self._warned = True
        closest = self.get_best_trials(1)[0]
        cheapest = min(done, key=lambda t: (t.score is None, t.score or 0.0))
        warnings.warn(
            f"No trial met {self.constraint.describe()}. The most accurate is trial "
            f"{closest.trial_id} ({closest.hyperparameters.values}), the cheapest trial "
            f"{cheapest.trial_id} ({cheapest.hyperparameters.values}); `get_best_trials()` "
            "ranks the most accurate first. Relax the floor, widen the ranges or fine-tune "
            "longer.",
            UserWarning,
            stacklevel=2,
        )

    def _violation(self, trial):
        if self.constraint is None:
            return 0.0
        return self.constraint.violation(trial_metric(trial, self.constraint.name))

    @property
    def order(self):
        """The genes from the most robust to the most sensitive (None before the first trial)."""
        return self._search["order"]

    @property
    def sensitivity(self):
        """`{gene: mean batch accuracy lost when pruned alone}` (None before the first trial)."""
        return self._search["sensitivity"]

    @property
    def fixed(self):
        """`{gene: value}` the stages so far kept (genes not yet fixed are at their largest)."""
        return dict(self._search["fixed"])

    @property
    def stages(self):
        """Each stage: its `gene`, `trials`, fittest `[value, fitness]` pairs, `winner`."""
        return self._search["stages"]


def _initial_search(cost_weight):
    return {
        "order": None,
        "sensitivity": None,
        "fixed": {},
        "stages": [],
        "queue": [],
        "cost_weight": float(cost_weight),
    }
