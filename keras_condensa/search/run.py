"""The search workflow: a `CompressionTuner` run into a directory of results.

`run_search` is what `keras-condensa search` and the demo run: it prepares
(or resumes) the output directory, searches, then writes the best model, its
measured LiteRT file, `trials.csv`, `pareto.png` and `report.md` (last). It
lives with the tuner it drives, one floor above the workflows it shares
(fine-tuning, export, atomic writes).
"""

import contextlib
import dataclasses
import os
import shutil
import time

import keras

from keras_condensa import report
from keras_condensa.files import save_model_atomically, write_atomically
from keras_condensa.operators import (
    ChannelGates,
    Compose,
    FilterPrune,
    HSPGPrune,
    NeuronPrune,
    Prune,
    Quantize,
    SoftThresholdPrune,
    StructurePrune,
)
from keras_condensa.search.confidence import DEFAULT_CONFIDENCE
from keras_condensa.search.constraint import trial_metric
from keras_condensa.search.results import estimate_columns, finite
from keras_condensa.search.trial_metrics import measured_on
from keras_condensa.search.tuner import CompressionTuner
from keras_condensa.summary import summary as model_summary
from keras_condensa.workflows.deploy import export_measured
from keras_condensa.workflows.measure import layer_rows

#: Files a finished search writes into its output directory; `report.md` last.
SEARCH_OUTPUTS = ("best.keras", "best.tflite", "trials.csv", "pareto.png", "report.md")
#: The Keras Tuner project's name inside the output directory.
SEARCH_PROJECT = "search"
#: What a density search can prune, and the operator each searched value makes.
#: `str` learns per-layer densities to the searched density; `gates` and `hspg`
#: learn which channels stay: `gates` takes the value as its FLOPs budget
#: (fraction of dense), `hspg` as the fraction of channels kept.
PRUNE_KINDS = {
    "unstructured": Prune,
    "neuron": NeuronPrune,
    "filter": FilterPrune,
    "structure": StructurePrune,
    "str": SoftThresholdPrune,
    "gates": lambda density: ChannelGates(budget=density, cost="flops"),
    "hspg": HSPGPrune,
}
#: The kinds whose trials remove channels (so they are shrunk).
STRUCTURED_KINDS = ("neuron", "filter", "structure", "gates", "hspg")


class SearchSetupError(ValueError):
    """The search cannot start: its directory is in use, or the tuner refused its arguments."""


def density_scheme(prune="unstructured", qat=None):
    """A scheme builder searching one density (log scale in [0.01, 1]).

    Args:
        prune: a key of `PRUNE_KINDS`.
        qat: `None`, or a `kc.Quantize` dtype fine-tuned after the pruning.

    Returns:
        A callable `hp -> scheme` for `CompressionTuner`.
    """
    operator = PRUNE_KINDS[prune]

    def scheme(hp):
        pruning = operator(hp.Float("density", 0.01, 1.0, sampling="log"))
        return pruning if qat is None else Compose([pruning, Quantize(qat)])

    return scheme


def directory_state(directory):
    """`"new"`, `"resume"`, `"finished"` or `"foreign"` (other files) for an output directory."""
    if not os.path.exists(directory):
        return "new"
    if not os.path.isdir(directory):
        return "foreign"
    entries = {e for e in os.listdir(directory) if not e.startswith(".tmp-")}
    if "report.md" in entries:
        return "finished"
    if not entries:
        return "resume"
    if SEARCH_PROJECT in entries and entries <= {SEARCH_PROJECT, *SEARCH_OUTPUTS}:
        return "resume"
    return "foreign"


def _prepare(directory, overwrite):
    """Checks and clears the output directory; returns whether a search is resumed."""
    state = directory_state(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise SearchSetupError(f"--out {directory} exists and is not a directory")
    if state in ("finished", "foreign") and not overwrite:
        why = "a finished search (it has report.md)" if state == "finished" else "other files"
        raise SearchSetupError(
            f"output directory {directory} exists and holds {why}; pass --overwrite to "
            "replace it, or choose another --out"
        )
    if overwrite and os.path.isdir(directory):
        for name in SEARCH_OUTPUTS:
            if os.path.isfile(os.path.join(directory, name)):
                os.remove(os.path.join(directory, name))
        shutil.rmtree(os.path.join(directory, SEARCH_PROJECT), ignore_errors=True)
    resuming = os.path.isdir(os.path.join(directory, SEARCH_PROJECT)) and not overwrite
    os.makedirs(directory, exist_ok=True)
    return resuming


class _ListenedTuner(CompressionTuner):
    """A `CompressionTuner` telling listeners `(event, tuner, trial)` of each trial."""

    def __init__(self, *args, listeners=(), **kwargs):
        self._listeners = tuple(listeners)
        super().__init__(*args, **kwargs)

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        for listener in self._listeners:
            listener("trial_begin", self, trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        for listener in self._listeners:
            listener("trial_end", self, trial)


def trial_rows(tuner):
    """One dict per trial, in trial order: `trial`, `status`, `hyperparameters` (all of
    them: densities, per-layer densities, bit-widths), the metrics, the estimate
    (`estimate`, `estimate_low`, `estimate_high` at the tuner's confidence,
    `p_feasible`, `readings`: None where unknown), `feasible` (the reading meets the
    floor), `confident` (`p_feasible` reaches the confidence), `best`."""
    try:
        best_id = tuner.best_trial().trial_id
    except RuntimeError:
        best_id = None
    rows = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id)):
        row = {
            "trial": int(trial.trial_id),
            "status": str(trial.status),
            "hyperparameters": dict(trial.hyperparameters.values),
        }
        row.update({name: trial_metric(trial, name) for name in report.METRIC_COLUMNS})
        row["keras_device"] = measured_on(tuner.get_trial_dir(trial.trial_id))
        row.update(estimate_columns(tuner.feasibility(trial)))
        row["feasible"] = bool(tuner.is_feasible(trial))
        row["confident"] = row["p_feasible"] is not None and row["p_feasible"] >= tuner.confidence
        row["best"] = trial.trial_id == best_id
        rows.append(row)
    return rows


def run_search(
    model,
    data,
    directory,
    *,
    scheme,
    objective,
    max_trials,
    epochs,
    max_drop=None,
    accuracy_floor=None,
    confidence=DEFAULT_CONFIDENCE,
    fine_tune="mask",
    shrink=False,
    quantize=None,
    kernels="default",
    overwrite=False,
    seed=0,
    model_name=None,
    kind="unstructured",
    listeners=None,
    log=None,
    tuner_output=None,
    recalibrate_batchnorm=None,
    logdir=None,
):
    """Runs a constrained compression search into `directory` and writes its results.

    The Keras Tuner project lives in `directory/search/`; the outputs
    (`SEARCH_OUTPUTS`) are written once the search has finished, `report.md`
    last. A directory holding only `search/` is an interrupted search: the
    same call resumes it. A finished one is refused unless `overwrite`.

    Args:
        model: the trained dense `keras.Model`.
        data: dict of arrays (`x_train`, `y_train`, `x_val`, `y_val`, and
            optionally `x_test`, `y_test` for the held-out check).
        directory: the output directory.
        scheme: `hp -> scheme` (see `CompressionTuner`; `density_scheme`).
        objective: the cost to minimise (a `CompressionTuner` metric).
        max_trials: trials in all, those of a resumed search included.
        epochs: fine-tuning epochs per trial.
        max_drop: largest accuracy drop allowed (or `accuracy_floor`).
        accuracy_floor: absolute accuracy floor.
        confidence: how sure the search must be that its answer meets the
            floor, in `[0.5, 1)` (see `CompressionTuner`).
        fine_tune: `"mask"`, `"lc"` or `"distill"`.
        shrink: remove each trial's pruned channels (`kc.shrink`).
        quantize: `tflite_export` quantization of the LiteRT files.
        kernels: `"default"` or `"builtin"` LiteRT kernels for `best.tflite`.
        overwrite: replace a previous search in `directory`.
        seed: seeds the oracle and fine-tuning.
        model_name: how the report names the model.
        kind: how the report names what is pruned (a key of `PRUNE_KINDS`).
        listeners: callables `(event, tuner, trial)`, called with
            `"trial_begin"` and `"trial_end"` (progress lines, say).
        log: optional `str -> None` for progress messages.
        tuner_output: a stream Keras Tuner's own prints go to (default: stdout).
        recalibrate_batchnorm: see `CompressionTuner` (pass `False` when
            `data` is synthetic).
        logdir: optional TensorBoard log directory for the trials (see
            `CompressionTuner`'s `logdir`).

    Returns:
        A dict of the results (the command line's `--json` object's core),
        with `logdir`.

    Raises:
        SearchSetupError: `directory` is in use, the tuner rejects its
            arguments, or `logdir` is given without the `tensorboard` package.
        KeyboardInterrupt: interrupted; completed trials stay on disk.
    """
    log = log or (lambda text: None)
    start = time.perf_counter()
    resuming = _prepare(directory, overwrite)
    redirect = contextlib.redirect_stdout(tuner_output) if tuner_output else None
    with redirect or contextlib.nullcontext():
        try:
            tuner = _ListenedTuner(
                model,
                scheme=scheme,
                train_data=(data["x_train"], data["y_train"]),
                validation_data=(data["x_val"], data["y_val"]),
                test_data=_test_data(data),
                confidence=confidence,
                max_accuracy_drop=max_drop,
                accuracy_floor=accuracy_floor,
                objective=objective,
                max_trials=max_trials,
                fine_tune_epochs=epochs,
                fine_tune=fine_tune,
                shrink=shrink,
                quantize=quantize,
                seed=seed,
                directory=directory,
                project_name=SEARCH_PROJECT,
                overwrite=False,
                listeners=listeners or (),
                recalibrate_batchnorm=recalibrate_batchnorm,
                logdir=logdir,
            )
        except (ValueError, ImportError) as e:
            if not resuming and os.path.isdir(directory) and not os.listdir(directory):
                os.rmdir(directory)
            raise SearchSetupError(" ".join(str(e).split())) from None
        if resuming:
            kept = sum(1 for t in tuner.oracle.trials.values() if t.status != "RUNNING")
            log(f"resuming the search in {directory}: {kept} finished trial(s) kept")
        names = ", ".join(hp.name for hp in tuner.oracle.hyperparameters.space)
        log(
            f"dense val_accuracy {tuner.dense_accuracy:.4f}, floor {tuner.accuracy_floor:.4f}; "
            f"minimising {objective} over {names or 'no hyperparameters'}, {max_trials} trials"
        )
        if logdir is not None:
            log(f"TensorBoard logs in {logdir} (view with: tensorboard --logdir {logdir})")
        tuner.search()
    setup = {
        "objective": objective,
        "max_trials": max_trials,
        "quantize": quantize,
        "kernels": kernels,
        "shrink": shrink,
        "kind": kind,
        "model_name": model_name,
        "logdir": logdir,
    }
    return _write_results(tuner, model, data, directory, setup, start, log)


def _test_data(data):
    """`(x_test, y_test)` from `data`, or None; one without the other is an error."""
    given = [k for k in ("x_test", "y_test") if k in data]
    if len(given) == 1:
        raise ValueError(
            f"`data` holds {given[0]} without its pair: the held-out check needs both "
            "x_test and y_test (or neither)."
        )
    return (data["x_test"], data["y_test"]) if given else None


def _write_results(tuner, model, data, directory, setup, start, log):
    """Saves, exports and measures the best model; writes the CSV, the plot, the report."""
    rows = trial_rows(tuner)
    objective, max_trials = setup["objective"], setup["max_trials"]
    stop_reason = getattr(tuner.oracle, "stop_reason", None)
    if stop_reason:
        log(f"search ended after {len(rows)} of {max_trials} trials: {stop_reason}")
    try:
        best_trial = tuner.best_trial()
    except RuntimeError as e:
        raise RuntimeError(f"the search finished without a completed trial: {e}") from None
    best_row = next(r for r in rows if r["trial"] == int(best_trial.trial_id))
    best = tuner.best_model()
    checked = tuner.held_out_check()
    if checked is not None:
        checked["trial"] = int(checked["trial"])  # as in the trial rows
        log(f"held-out check: {report.held_out_text(checked)}")
    noise = tuner.measured_noise
    summary = model_summary(best, print_fn=None)
    paths = {name: os.path.join(directory, name) for name in SEARCH_OUTPUTS}
    save_model_atomically(best, paths["best.keras"])
    quantize, kernels = setup["quantize"], setup["kernels"]
    exported = export_measured(
        best,
        paths["best.tflite"],
        quantize=quantize,
        kernels=kernels,
        representative_data=data["x_train"] if quantize == "int8" else None,
        verify_data=data["x_val"],
    )
    layers = layer_rows(summary)
    if setup["shrink"]:
        dense_params = {r.name: int(r.params) for r in model_summary(model, print_fn=None).rows}
        for row in layers:
            row["dense_params"] = dense_params.get(row["name"], row["params"])
    write_atomically(paths["trials.csv"], report.trials_csv(rows))
    report.pareto_png(rows, objective, tuner.accuracy_floor, paths["pareto.png"])
    common = {
        "objective": objective,
        "prune": setup["kind"],
        "dense_accuracy": tuner.dense_accuracy,
        "floor": tuner.accuracy_floor,
        "stop_reason": stop_reason,
        "confidence": tuner.confidence,
        "noise": None if noise is None else {**dataclasses.asdict(noise), "dof": finite(noise.dof)},
        "held_out": checked,
    }
    info = {
        **common,
        "model": setup["model_name"],
        "best": best_row,
        "exported": exported,
        "backend": keras.backend.backend(),
        "device": tuner.device,
        "elapsed_s": time.perf_counter() - start,
        "max_trials": max_trials,
    }
    write_atomically(paths["report.md"], report.report_markdown(info, rows, layers))
    return {
        "out": directory,
        "logdir": setup["logdir"],
        **common,
        "trials": len(rows),
        "feasible_trials": sum(1 for r in rows if r["feasible"]),
        "best": {
            "trial": best_row["trial"],
            "hyperparameters": best_row["hyperparameters"],
            "feasible": best_row["feasible"],
            "val_accuracy": best_row["val_accuracy"],
            **{name: best_row[name] for name in report.ESTIMATE_COLUMNS},
            "confident": best_row["confident"],
            "params": summary.params,
            "nonzeros": summary.nonzeros,
            "density": summary.density,
            "nonzero_params": best_row.get("nonzero_params"),
            objective: best_row.get(objective),
            "tflite": exported,
        },
        "layers": layers,
        "files": paths,
        "trial_rows": rows,
        "results_summary": tuner.results_summary(print_fn=None),
    }
