"""Search reports: `report.md`, `pareto.png` and `trials.csv` from a compression search.

Everything here works on plain rows (dicts), so a report can be rebuilt from
`trials.csv` alone. matplotlib is used with its Agg backend (no display).
"""

import csv
import io
import math
import numbers

from keras_condensa.files import write_atomically

#: The measured metrics of a trial, as the tuner reports them.
METRIC_COLUMNS = (
    "val_accuracy",
    "nonzero_params",
    "params",
    "density",
    "tflite_bytes",
    "tflite_gzip_bytes",
    "litert_latency_ms",
    "keras_latency_ms",
)
#: The search's estimate of a trial's accuracy: the noise-free value, its interval at
#: the search's confidence, the probability it meets the floor, and the number of
#: readings at the trial's values (empty where unknown).
ESTIMATE_COLUMNS = ("estimate", "estimate_low", "estimate_high", "p_feasible", "readings")
#: Columns of `trials.csv`, in order; each hyperparameter gets an `hp:NAME` column
#: after `status` (a density, per-layer densities, bit-widths: whatever the scheme has).
#: `keras_device` is the device `keras_latency_ms` was timed on (`kc.bench.device_name()`).
TRIAL_COLUMNS = (
    "trial",
    "status",
    *METRIC_COLUMNS,
    "keras_device",
    *ESTIMATE_COLUMNS,
    "feasible",
    "best",
)
HP_PREFIX = "hp:"
#: How many finalists (cheapest trials whose reading met the floor) `report.md` lists.
FINALISTS = 5

__all__ = [
    "ESTIMATE_COLUMNS",
    "METRIC_COLUMNS",
    "TRIAL_COLUMNS",
    "held_out_text",
    "interval_text",
    "pareto_png",
    "report_markdown",
    "trials_csv",
]


def hyperparameter_names(rows):
    """The hyperparameters' names over all `rows`, in order of first appearance."""
    names = {}
    for row in rows:
        names.update(dict.fromkeys(row.get("hyperparameters") or {}))
    return list(names)


def _flat(row):
    """A row with its hyperparameters as `hp:NAME` keys."""
    flat = {k: v for k, v in row.items() if k != "hyperparameters"}
    for name, value in (row.get("hyperparameters") or {}).items():
        flat[HP_PREFIX + name] = value
    return flat


def _fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 100:
            return f"{int(value):,}"
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def trials_csv(rows):
    """The trials as CSV text: `trial`, `status`, one `hp:NAME` column per hyperparameter,
    then the other `TRIAL_COLUMNS`.

    Args:
        rows: dicts keyed by (some of) `TRIAL_COLUMNS`, with the trial's
            hyperparameters as a dict under `hyperparameters`.

    Returns:
        The CSV text.
    """
    columns = [
        *TRIAL_COLUMNS[:2],
        *(HP_PREFIX + n for n in hyperparameter_names(rows)),
        *TRIAL_COLUMNS[2:],
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in map(_flat, rows):
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return out.getvalue()


def plot_axis(rows, cost):
    """The x axis of the plot: `cost` if the trials report it, else the first numeric
    hyperparameter, else the measured `density`."""
    if any(r.get(cost) is not None for r in rows):
        return cost
    for name in hyperparameter_names(rows):
        values = [(r.get("hyperparameters") or {}).get(name) for r in rows]
        if any(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            return HP_PREFIX + name
    return "density"


def pareto_png(rows, cost, floor, path, title=None):
    """Plots accuracy against cost for every completed trial and writes a PNG.

    Feasible trials are filled circles, infeasible ones crosses, the chosen
    one a large star; the accuracy floor is a dashed horizontal line.

    Args:
        rows: trial dicts with `val_accuracy`, `cost`'s column, `feasible`
            and `best`.
        cost: the column on the x axis (e.g. `"tflite_bytes"`); if no trial
            reports it, the first numeric hyperparameter or the measured
            density (see `plot_axis`).
        floor: the accuracy floor.
        path: the `.png` to write (atomically).
        title: optional title.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    cost = plot_axis(rows, cost)
    rows = [_flat(r) for r in rows]
    done = [r for r in rows if r.get("val_accuracy") is not None and r.get(cost) is not None]
    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    ax = fig.add_subplot()
    feasible = [r for r in done if r.get("feasible")]
    infeasible = [r for r in done if not r.get("feasible")]
    if feasible:
        ax.scatter(
            [r[cost] for r in feasible],
            [r["val_accuracy"] for r in feasible],
            marker="o",
            color="tab:green",
            label="feasible",
        )
    if infeasible:
        ax.scatter(
            [r[cost] for r in infeasible],
            [r["val_accuracy"] for r in infeasible],
            marker="x",
            color="tab:red",
            label="below the floor",
        )
    for r in done:
        ax.annotate(
            str(r["trial"]),
            (r[cost], r["val_accuracy"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    best = [r for r in done if r.get("best")]
    if best:
        ax.scatter(
            [best[0][cost]],
            [best[0]["val_accuracy"]],
            marker="*",
            s=260,
            facecolor="gold",
            edgecolor="black",
            zorder=3,
            label="chosen",
        )
    ax.axhline(floor, linestyle="--", color="gray", label=f"floor {floor:.4f}")
    costs = [r[cost] for r in done if r[cost] > 0]
    if costs and max(costs) / min(costs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(cost)
    ax.set_ylabel("val_accuracy")
    ax.set_title(title or f"Compression search: val_accuracy against {cost}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_atomically(path, buffer.getvalue())


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _kind(info):
    prune = info.get("prune", "unstructured")
    if prune in ("unstructured", "str"):
        return "prune" if prune == "unstructured" else "learned-threshold prune (STR)"
    return f"{prune} prune (channels removed with `kc.shrink`)"


def _hyperparameters(row):
    values = row.get("hyperparameters") or {}
    return ", ".join(f"{name} {_fmt(value)}" for name, value in values.items()) or "-"


def held_out_text(held_out):
    """One sentence on a `check` result, for reports and the command line.

    Args:
        held_out: a dict from `keras_condensa.search.held_out.check`.

    Returns:
        A string, e.g. "the floor holds on the test data: test accuracy
        0.9640 (trial 3) >= 0.9533 (dense test accuracy 0.9733 minus 0.02)".
    """
    if held_out["floor_kind"] == "relative":
        how = (
            f"dense test accuracy {held_out['dense_test_accuracy']:.4f} minus "
            f"{held_out['max_accuracy_drop']:g}"
        )
    else:
        how = f"the absolute floor; dense test accuracy {held_out['dense_test_accuracy']:.4f}"
    verdict = "holds" if held_out["holds"] else "does NOT hold"
    sign = ">=" if held_out["holds"] else "<"
    return (
        f"the floor {verdict} on the test data: test accuracy "
        f"{held_out['test_accuracy']:.4f} (trial {int(held_out['trial'])}) {sign} "
        f"{held_out['test_floor']:.4f} ({how})"
    )


def interval_text(row):
    """`0.9741 [0.9712, 0.9770]` from a row's `ESTIMATE_COLUMNS` (`-` where unknown)."""
    if row.get("estimate") is None:
        return "-"
    ends = (row.get("estimate_low"), row.get("estimate_high"))
    return (
        f"{row['estimate']:.4f} [" + ", ".join("-" if v is None else f"{v:.4f}" for v in ends) + "]"
    )


def _probability(row):
    return "-" if row.get("p_feasible") is None else f"{row['p_feasible']:.3f}"


def _noise_line(noise):
    """The measured noise of one reading, in words, for the report's header."""
    if not noise:
        return "- noise of one val_accuracy reading: not measured"
    how = {
        "replicates": "measured from replicates",
        "given": "given",
        "model": "fitted to the readings (no replicate)",
    }.get(noise.get("source"), noise.get("source"))
    dof = "" if noise.get("dof") is None else f", {noise['dof']:g} degrees of freedom"
    std = noise["std"]
    return f"- noise of one val_accuracy reading: std {std:.4g} ({how}{dof})"


def _estimate_sentence(best, confidence):
    """How sure the search is that the chosen trial meets the floor."""
    if best.get("estimate") is None:
        return "No estimate of its accuracy beyond the reading."
    sure = best["p_feasible"] >= confidence
    return (
        f"Estimated val_accuracy {interval_text(best)} ({confidence:.0%} interval); "
        f"P(val_accuracy >= floor) {_probability(best)}: "
        + (
            "feasible with confidence."
            if sure
            else f"**not** feasible with {confidence:.0%} confidence."
        )
    )


def _finalists(rows, objective):
    """The cheapest trials (up to `FINALISTS`) whose reading met the floor, as a table."""
    met = [r for r in rows if r.get("feasible") and r.get(objective) is not None]
    met = sorted(met, key=lambda r: r[objective])[:FINALISTS]
    if not met:
        return []
    header = (
        "trial",
        "hyperparameters",
        "val_accuracy",
        "estimate [interval]",
        "P(>=floor)",
        "readings",
        objective,
    )
    cells = [
        (
            r["trial"],
            _hyperparameters(r),
            _fmt(r.get("val_accuracy")),
            interval_text(r),
            _probability(r),
            _fmt(r.get("readings")),
            _fmt(r.get(objective)),
        )
        for r in met
    ]
    return [
        "## Finalists",
        "",
        f"The cheapest trials whose reading met the floor (up to {FINALISTS}).",
        "",
        _table(header, cells),
        "",
    ]


def report_markdown(info, rows, layers, png_name="pareto.png"):
    """The text of `report.md`.

    Args:
        info: dict with `model`, `objective`, `dense_accuracy`, `floor`,
            `best` (a trial row or None), `device` (where Keras latency was
            timed, or None), `exported` (dict of `bytes`,
            `gzip_bytes`, `top1_agreement`, `max_abs_error`, `p50_ms` or
            None), `backend`, `elapsed_s`, and optionally `prune` (the
            search's structure kind; "unstructured" when absent),
            `stop_reason` with `max_trials` (why the search ended early),
            `confidence`, `noise` (a dict of `std`, `dof`, `source`) and
            `held_out` (a `search.held_out.check` result or None).
        rows: trial dicts (see `TRIAL_COLUMNS`), each with its
            `hyperparameters` dict (any names and values).
        layers: per-layer rows of the best model: dicts with `name`,
            `class_name`, `params`, `nonzeros`, `density`, and for a shrunk
            model `dense_params` (the layer's parameters before shrinking).
        png_name: the plot's file name, linked from the report.

    Returns:
        Markdown text.
    """
    best = info.get("best")
    objective = info["objective"]
    out = [
        "# Compression search report",
        "",
        f"- model: `{info.get('model', '-')}`",
        f"- backend: {info.get('backend', '-')}"
        + (f", Keras latency timed on {info['device']}" if info.get("device") else ""),
        f"- objective: minimise `{objective}` subject to val_accuracy >= floor",
        f"- dense val_accuracy: {info['dense_accuracy']:.4f}; floor: {info['floor']:.4f}",
        f"- trials: {len(rows)} ({sum(1 for r in rows if r.get('feasible'))} feasible)",
    ]
    if info.get("stop_reason"):
        out.append(
            f"- ended after {len(rows)} of {info.get('max_trials', '-')} trials: "
            f"{info['stop_reason']}"
        )
    if info.get("confidence") is not None:
        out.append(f"- confidence: {info['confidence']:g}")
        out.append(_noise_line(info.get("noise")))
    if info.get("held_out"):
        out.append(f"- held-out check: {held_out_text(info['held_out'])}")
    if info.get("elapsed_s") is not None:
        out.append(f"- wall time: {info['elapsed_s']:.1f} s")
    out.append("")
    if best is not None:
        feasible = (
            "meets the floor" if best.get("feasible") else "**below the floor** (none met it)"
        )
        out += [
            "## Chosen model",
            "",
            f"Trial {best['trial']}: {_kind(info)}, {_hyperparameters(best)}; "
            f"val_accuracy {_fmt(best.get('val_accuracy'))} ({feasible}), "
            f"{objective} {_fmt(best.get(objective))}."
            + (
                f" {_estimate_sentence(best, info['confidence'])}"
                if info.get("confidence") is not None
                else ""
            ),
            "",
        ]
    exported = info.get("exported")
    if exported:
        out += [
            f"Exported `best.tflite`: {exported['bytes']:,} bytes, "
            f"{exported['gzip_bytes']:,} gzip bytes, LiteRT p50 {exported['p50_ms']:.4f} ms; "
            f"LiteRT against Keras: top-1 agreement {exported['top1_agreement']:.4f}, "
            f"max abs error {exported['max_abs_error']:.4g}.",
            "",
        ]
    out += [f"![accuracy against {objective}]({png_name})", ""]
    out += _finalists(rows, objective)
    if layers and all("dense_params" in r for r in layers):
        # A shrunk model has no zeros to count: what it lost is parameters.
        out += ["## Per-layer size of the chosen model against the dense one", ""]
        header = ("layer", "class", "dense params", "params", "kept")
        cells = [
            (
                r["name"],
                r["class_name"],
                f"{r['dense_params']:,}",
                f"{r['params']:,}",
                f"{r['params'] / max(r['dense_params'], 1):.4f}",
            )
            for r in layers
        ]
        out += [_table(header, cells), ""]
    elif layers:
        out += ["## Per-layer density of the chosen model", ""]
        header = ("layer", "class", "params", "nonzeros", "density")
        cells = [
            (
                r["name"],
                r["class_name"],
                f"{r['params']:,}",
                f"{r['nonzeros']:,}",
                f"{r['density']:.4f}",
            )
            for r in layers
        ]
        out += [_table(header, cells), ""]
    out += ["## Trials", ""]
    hps = [HP_PREFIX + name for name in hyperparameter_names(rows)]
    columns = (
        "trial",
        "status",
        *hps,
        "val_accuracy",
        "estimate [interval]",
        "P(>=floor)",
        "readings",
        "nonzero_params",
        objective,
        "feasible",
        "best",
    )
    columns = tuple(dict.fromkeys(columns))
    derived = {"estimate [interval]": interval_text, "P(>=floor)": _probability}
    flat = [_flat(r) for r in rows]
    out.append(
        _table(
            columns,
            [[derived[c](r) if c in derived else _fmt(r.get(c)) for c in columns] for r in flat],
        )
    )
    out.append("")
    return "\n".join(out)
