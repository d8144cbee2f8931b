"""A search's results for any `keras_tuner.Oracle`: ranking under the floor, Pareto front, table.

`ConstrainedBayesianOracle` ranks its own trials; an oracle that knows
nothing of the accuracy floor (`RandomSearchOracle`, say) is ranked here:
feasible trials cheapest first, then the rest, closest to the floor first.
"""

import math

from keras_condensa.search.constraint import trial_metric

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
    name = oracle.objective.name
    sign = -1.0 if oracle.objective.direction == "max" else 1.0
    feasible = sorted(
        (t for t in done if is_feasible(t)), key=lambda t: sign * trial_metric(t, name, math.inf)
    )
    others = sorted(
        (t for t in done if not is_feasible(t)),
        key=lambda t: -trial_metric(t, "val_accuracy", -math.inf),
    )
    return feasible + others


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


def table(trials, objective, is_feasible, dense_accuracy, floor):
    """The trials as a text table: id, status, hyperparameters, val_accuracy, objective, feasible.

    Args:
        trials: `Trial`s in the order to show.
        objective: the oracle's `keras_tuner.Objective`.
        is_feasible: `trial -> bool`.
        dense_accuracy: the dense model's accuracy (in the header).
        floor: the accuracy floor (in the header).

    Returns:
        The table as a string.
    """
    name = objective.name
    header = ("trial", "status", "hyperparameters", "val_accuracy", name, "feasible")
    rows = [header] + [
        (
            str(t.trial_id),
            str(t.status),
            ", ".join(f"{k}={_fmt(v)}" for k, v in t.hyperparameters.values.items()),
            _fmt(trial_metric(t, "val_accuracy", None)),
            _fmt(trial_metric(t, name, None)),
            "yes" if is_feasible(t) else "no",
        )
        for t in trials
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        f"Compression search: dense val_accuracy {dense_accuracy:.4f}, floor {floor:.4f}, "
        f"objective {name} ({objective.direction})",
    ]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
