"""A search's results for any `keras_tuner.Oracle`: ranking under the floor, Pareto front, table.

`ConstrainedBayesianOracle` ranks its own trials; an oracle that knows
nothing of the accuracy floor (`RandomSearchOracle`, say) is ranked here:
the trials feasible with confidence (`search.evidence`)
cheapest first, then the feasible ones by reading, then the rest, closest
to the floor first.
"""

import math

from keras_condensa import report
from keras_condensa.search import held_out
from keras_condensa.search.constraint import trial_metric
from keras_condensa.search.oracle import ConstrainedBayesianOracle

_COMPLETED = "COMPLETED"


def ranked(oracle, is_feasible):
    """Completed trials: feasible ones best objective first, then the rest most accurate first.

    Args:
        oracle: a `keras_tuner.Oracle`.
        is_feasible: `trial -> bool` (the accuracy floor).

    Returns:
        A list of `Trial`s.
    """
    done = [t for t in oracle.trials.values() if t.status == _COMPLETED]
    feasible = sorted((t for t in done if is_feasible(t)), key=cost_of(oracle))
    others = sorted(
        (t for t in done if not is_feasible(t)),
        key=lambda t: -trial_metric(t, "val_accuracy", -math.inf),
    )
    return feasible + others


def cost_of(oracle):
    """`trial -> float`: the oracle's objective oriented to be minimised (inf when missing)."""
    name = oracle.objective.name
    sign = -1.0 if oracle.objective.direction == "max" else 1.0
    return lambda trial: sign * trial_metric(trial, name, math.inf)


def pareto(trials, is_feasible):
    """Feasible trials (given best objective first) not dominated on val_accuracy.

    Returns:
        A list of `Trial`s, cheapest first.
    """
    front, best_accuracy = [], -math.inf
    for trial in trials:
        value = trial_metric(trial, "val_accuracy", math.nan)
        if is_feasible(trial) and value > best_accuracy:
            front.append(trial)
            best_accuracy = value
    return front


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def finite(value):
    """`value` as a float, or None when it is None, infinite or NaN."""
    return None if value is None or not math.isfinite(value) else float(value)


def estimate_columns(estimate):
    """A `Feasibility` (or None) as a trial row's `report.ESTIMATE_COLUMNS`.

    Unknown values (an infinite interval, no estimate) are None.
    """
    if estimate is None:
        return dict.fromkeys(report.ESTIMATE_COLUMNS)
    return {
        "estimate": finite(estimate.mean),
        "estimate_low": finite(estimate.low),
        "estimate_high": finite(estimate.high),
        "p_feasible": float(estimate.probability),
        "readings": int(estimate.readings),
    }


def noise_text(noise):
    """A `search.confidence.Noise` in words, e.g. "std 0.0031 (replicates, 3 dof)"."""
    if noise is None:
        return "not measured yet"
    dof = "" if math.isinf(noise.dof) else f", {noise.dof:g} dof"
    return f"std {std_text(noise.std)} ({noise.source}{dof})"


def std_text(std):
    """A standard deviation to 4 decimals, or 2 significant digits when smaller."""
    return f"{std:.4f}" if std >= 1e-4 or std == 0 else f"{std:.2g}"


def table(trials, objective, is_feasible, dense_accuracy, floor, feasibility, confidence, noise):
    """The trials as a text table.

    Columns: id, status, hyperparameters, val_accuracy (the reading), the
    estimate with its interval at `confidence`, the probability of meeting
    the floor, the number of readings at the trial's values, the objective,
    feasible (the reading meets the floor).

    Args:
        trials: `Trial`s in the order to show (the returned answer first).
        objective: the oracle's `keras_tuner.Objective`.
        is_feasible: `trial -> bool`.
        dense_accuracy: the dense model's accuracy (in the header).
        floor: the accuracy floor (in the header).
        feasibility: `trial -> Feasibility or None`.
        confidence: the search's confidence (in the header).
        noise: the measured `Noise` or None (in the header).

    Returns:
        The table as a string.
    """
    name = objective.name
    header = (
        "trial",
        "status",
        "hyperparameters",
        "val_accuracy",
        f"estimate [{confidence:g} interval]",
        "P(>=floor)",
        "readings",
        name,
        "feasible",
    )
    rows = [header]
    for t in trials:
        estimate = feasibility(t)
        rows.append(
            (
                str(t.trial_id),
                str(t.status),
                ", ".join(f"{k}={_fmt(v)}" for k, v in t.hyperparameters.values.items()),
                _fmt(trial_metric(t, "val_accuracy", None)),
                report.interval_text(estimate_columns(estimate)),
                "-" if estimate is None else f"{estimate.probability:.3f}",
                "-" if estimate is None else str(estimate.readings),
                _fmt(trial_metric(t, name, None)),
                "yes" if is_feasible(t) else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        f"Compression search: dense val_accuracy {dense_accuracy:.4f}, floor {floor:.4f}, "
        f"objective {name} ({objective.direction}); confidence {confidence:g}, "
        f"noise {noise_text(noise)}",
    ]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


class TunerResults:
    """The results of a `CompressionTuner`: best trial and model, Pareto front, estimates, table.

    A mixin of `CompressionTuner`, which sets what it reads: `oracle`,
    `accuracy_floor`, `dense_accuracy`, `confidence`, `_evidence` (a
    `search.evidence.Evidence`) and `load_model`.
    """

    def best_trial(self):
        """The best trial: the cheapest one feasible with confidence, else by readings alone.

        Without a trial feasible with `confidence` (`feasibility()`), the
        cheapest whose reading met the floor, else the closest to the floor.

        Returns:
            A `Trial`.

        Raises:
            RuntimeError: no trial completed.
        """
        completed = self._ranked()[:1]
        if not completed:
            raise RuntimeError(
                "No trial has completed yet; run `search()` first (failed trials have no model)."
            )
        return completed[0]

    def best_model(self):
        """The best trial's stripped, fine-tuned model, loaded from its `model.keras`.

        If no trial met the floor, the one closest to it.

        Returns:
            A plain `keras.Model`.
        """
        return self.load_model(self.best_trial())

    def pareto(self):
        """Feasible trials not dominated on (val_accuracy max, objective min).

        Returns:
            A list of `Trial`s, cheapest first.
        """
        if isinstance(self.oracle, ConstrainedBayesianOracle):
            return self.oracle.pareto_front()
        return pareto(ranked(self.oracle, self.is_feasible), self.is_feasible)

    def is_feasible(self, trial):
        """Whether a completed trial's reading met the accuracy floor."""
        return trial.status == _COMPLETED and trial_metric(trial, "val_accuracy", math.nan) >= (
            self.accuracy_floor
        )

    def feasibility(self, trial):
        """How sure the search is that a trial meets the floor.

        The oracle's estimate for a `ConstrainedBayesianOracle`; for any other
        oracle, `search.evidence.Evidence` over its completed trials.

        Args:
            trial: a `Trial`.

        Returns:
            A `search.confidence.Feasibility` (estimate, interval at
            `confidence`, probability, readings), or None for a trial that
            did not complete.
        """
        if isinstance(self.oracle, ConstrainedBayesianOracle):
            return self.oracle.feasibility(trial)
        return self._evidence(self.oracle.trials, self.oracle.hyperparameters)[0].get(
            trial.trial_id
        )

    @property
    def measured_noise(self):
        """The `search.confidence.Noise` of one `val_accuracy` reading, or None before any trial."""
        if isinstance(self.oracle, ConstrainedBayesianOracle):
            return self.oracle.measured_noise
        return self._evidence(self.oracle.trials, self.oracle.hyperparameters)[1]

    def held_out_check(self):
        """Evaluates the returned model on `test_data` against the floor (`search.held_out`).

        Returns:
            None without `test_data`; else a dict with `trial`,
            `test_accuracy` (of `best_model()`), `dense_test_accuracy`,
            `test_floor` (the dense test accuracy minus the allowed drop, or
            the absolute `accuracy_floor`) and `holds`.
        """
        return held_out.check(self)

    def results_summary(self, num_trials=None, print_fn=print):
        """Prints a table of the trials, best first.

        Columns: trial id, status, hyperparameters, val_accuracy (the
        reading), the estimate with its interval at `confidence`, P(>=floor),
        readings, objective, feasible (the reading meets the floor). A header
        gives the dense accuracy, the floor, the confidence and the measured
        noise. The first row is `best_trial()`.

        Args:
            num_trials: how many trials to show (all by default).
            print_fn: where the table goes; `None` prints nothing.

        Returns:
            The table as a string.
        """
        done = self._ranked()
        trials = done + [t for _, t in sorted(self.oracle.trials.items()) if t not in done]
        text = table(
            trials[:num_trials] if num_trials is not None else trials,
            self.oracle.objective,
            self.is_feasible,
            self.dense_accuracy,
            self.accuracy_floor,
            self.feasibility,
            self.confidence,
            self.measured_noise,
        )
        if print_fn is not None:
            print_fn(text)
        return text

    def _ranked(self):
        """Completed trials, best first (`best_trial()` first)."""
        if isinstance(self.oracle, ConstrainedBayesianOracle):
            trials = self.oracle.get_best_trials(len(self.oracle.trials))
            return [t for t in trials if t.status == _COMPLETED]
        trials = self.oracle.trials
        return self._evidence.ranked(trials, self.oracle.hyperparameters, cost_of(self.oracle))
