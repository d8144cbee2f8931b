"""What the command line prints: results on stdout, progress on stderr, `--json`.

Nothing here computes: it formats what the workflows return.
"""

import contextlib
import json
import logging
import os
import sys
import warnings

from keras_condensa.cli_checks import UsageError, one_line
from keras_condensa.report import held_out_text, interval_text
from keras_condensa.search import run
from keras_condensa.search.constraint import trial_metric
from keras_condensa.workflows.measure import layer_rows


class Output:
    """Where messages go: results on stdout, progress on stderr; `--quiet` and `--json`."""

    def __init__(self, quiet=False, as_json=False):
        self.quiet = quiet
        self.as_json = as_json

    def result(self, text):
        """A human-readable result (stdout), unless `--json`."""
        if not self.as_json:
            print(text, flush=True)

    def progress(self, text):
        """A progress line (stderr), unless `--quiet`."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def emit_json(self, obj):
        """The one JSON object of `--json` (stdout)."""
        if self.as_json:
            print(json.dumps(obj, default=_json_default), flush=True)


def _json_default(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def quiet_libraries():
    """Silences Python-level TensorFlow and conversion warnings.

    TensorFlow's C++ logs are read from `TF_CPP_MIN_LOG_LEVEL` when TensorFlow
    is imported, which may already have happened.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def hyperparameters_text(values):
    """`name value` pairs of a trial's hyperparameters, whatever they are."""
    if not values:
        return "no hyperparameters"

    def fmt(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    return ", ".join(f"{name} {fmt(value)}" for name, value in values.items())


def _cost(value):
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.4g}"


def search_progress(out, objective, max_trials):
    """A `run_search` listener printing one line per finished trial.

    Args:
        out: an `Output`.
        objective: the metric minimised.
        max_trials: the number of trials in all.

    Returns:
        A callable `(event, tuner, trial)`.
    """

    def listener(event, tuner, trial):
        if event != "trial_end":
            return
        done = sum(1 for t in tuner.oracle.trials.values() if t.status != "RUNNING")
        accuracy = trial_metric(trial, "val_accuracy")
        try:
            best = tuner.best_trial()
            best_text = (
                f"best so far: trial {int(best.trial_id)} ({_cost(trial_metric(best, objective))}"
                f"{'' if tuner.is_feasible(best) else ', below floor'})"
            )
        except RuntimeError:
            best_text = "no completed trial yet"
        if accuracy is None:
            verdict = str(trial.status)
        else:
            verdict = "feasible" if tuner.is_feasible(trial) else "infeasible"
        out.progress(
            f"trial {done}/{max_trials}  {hyperparameters_text(trial.hyperparameters.values)}"
            f"  accuracy {'-' if accuracy is None else f'{accuracy:.4f}'}"
            f"  {objective} {_cost(trial_metric(trial, objective))}  {verdict}  {best_text}"
        )

    return listener


def json_result(result):
    """A search result without its text table (the `--json` object's core)."""
    return {k: v for k, v in result.items() if k != "results_summary"}


def print_search_result(result, out):
    """Prints a finished search: the trials table, the best trial, the files written."""
    best = result["best"]
    tfl = best["tflite"]
    if result.get("prune", "unstructured") == "unstructured":
        size = f"density {best['density']:.4f}"
    else:
        size = f"{result['prune']} prune, {best['params']:,} parameters"
    out.result(result["results_summary"])
    out.result(
        f"best: trial {best['trial']} ({hyperparameters_text(best['hyperparameters'])}; {size}, "
        f"val_accuracy {best['val_accuracy']:.4f}, {'meets' if best['feasible'] else 'BELOW'} "
        f"floor {result['floor']:.4f}); best.tflite {tfl['bytes']:,} bytes, "
        f"{tfl['gzip_bytes']:,} gzip, LiteRT p50 {tfl['p50_ms']:.4f} ms, "
        f"top-1 agreement {tfl['top1_agreement']:.4f}"
    )
    if best.get("estimate") is not None:
        sure = "feasible" if best["confident"] else "NOT feasible"
        out.result(
            f"estimated val_accuracy {interval_text(best)}, "
            f"P(>= floor) {best['p_feasible']:.3f}, {best['readings']} reading(s): "
            f"{sure} with confidence {result['confidence']:g}"
        )
    if result.get("held_out"):
        out.result(f"held-out check: {held_out_text(result['held_out'])}")
    out.result(f"wrote {', '.join(result['files'].values())}")


def print_compressed(args, result, out):
    """Prints (and for `--json` emits) a `compress` result."""
    summary = result.summary
    out.result(result.summary_text)
    out.result(
        f"val accuracy: {result.dense_accuracy:.4f} dense -> {result.accuracy:.4f} compressed; "
        f"density {summary.density:.4f} ({summary.nonzeros:,} of {summary.params:,} nonzero); "
        f"wrote {args.out}"
    )
    out.emit_json(
        {
            "command": "compress",
            "out": args.out,
            "scheme": args.scheme,
            "dense_accuracy": result.dense_accuracy,
            "accuracy": result.accuracy,
            "params": summary.params,
            "nonzeros": summary.nonzeros,
            "density": summary.density,
            "coded_bytes": summary.coded_bytes,
            "layers": layer_rows(summary),
        }
    )


def search_with_progress(out, command_line, model, data, directory, **kwargs):
    """Runs `keras_condensa.search.run.run_search` with a progress line per trial.

    Keras Tuner's own prints go to stderr (or nowhere with `--quiet`), as
    stdout belongs to the results; an interruption prints how to resume.

    Args:
        out: an `Output`.
        command_line: the command to run again to resume (for the hint).
        model, data, directory, **kwargs: passed to `run_search`.

    Returns:
        `run_search`'s result.

    Raises:
        keras_condensa.cli_checks.UsageError: the search cannot start.
        KeyboardInterrupt: after printing how to resume.
    """
    listener = search_progress(out, kwargs["objective"], kwargs["max_trials"])
    quiet = open(os.devnull, "w") if out.quiet else contextlib.nullcontext(sys.stderr)
    with quiet as chatter:
        try:
            return run.run_search(
                model,
                data,
                directory,
                listeners=[listener],
                log=out.progress,
                tuner_output=chatter,
                **kwargs,
            )
        except run.SearchSetupError as e:
            raise UsageError(one_line(e, 400)) from None
        except KeyboardInterrupt:
            print(
                f"interrupted: finished trials are kept in "
                f"{os.path.join(directory, run.SEARCH_PROJECT)}; run {command_line} again "
                "to resume",
                file=sys.stderr,
                flush=True,
            )
            raise
