"""What the command line prints: results on stdout, progress on stderr, `--json`.

Nothing here computes: it formats what the workflows return. What the
libraries print (TensorFlow's and the TFLite converter's C++ logs, absl,
Python warnings, Keras Tuner) is not ours: unless `--verbose`, a
`CommandLog` captures it while a command runs and keeps it in the command's
log file (`log_path`), and our own lines go to the terminal behind the capture.
"""

import contextlib
import json
import os
import sys
import tempfile
import time

from keras_condensa import library_log
from keras_condensa.cli_checks import UsageError, one_line
from keras_condensa.report import held_out_text, interval_text
from keras_condensa.search import run
from keras_condensa.search.constraint import trial_metric
from keras_condensa.workflows.measure import layer_rows

#: The name of a command's log file in a directory (`log_path`).
LOG_NAME = "keras-condensa.log"


class Output:
    """Where messages go: results on stdout, progress on stderr; `--quiet` and `--json`.

    Our lines reach the terminal even while a `CommandLog` captures what the
    libraries print (`keras_condensa.library_log.terminal`).
    """

    def __init__(self, quiet=False, as_json=False):
        self.quiet = quiet
        self.as_json = as_json

    def result(self, text):
        """A human-readable result (stdout), unless `--json`."""
        if not self.as_json:
            print(text, file=library_log.terminal("stdout"), flush=True)

    def progress(self, text):
        """A progress line (stderr), unless `--quiet`."""
        if not self.quiet:
            print(text, file=library_log.terminal("stderr"), flush=True)

    def error(self, text):
        """An error or interruption line (stderr), whatever the options."""
        print(text, file=library_log.terminal("stderr"), flush=True)

    def emit_json(self, obj):
        """The one JSON object of `--json` (stdout)."""
        if self.as_json:
            print(
                json.dumps(obj, default=_json_default),
                file=library_log.terminal("stdout"),
                flush=True,
            )


def _json_default(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def log_path(args):
    """Where a command keeps what the libraries printed.

    `search` and `demo`: `OUT/search/keras-condensa.log`, with the Keras Tuner
    project (a resumed search appends to it, `--overwrite` starts it anew); a
    command writing a file: that file's name plus `.log` (`small.tflite.log`);
    another writing a directory: `OUT/keras-condensa.log`; one writing
    nothing (`bench`): `keras-condensa.log` in the temporary directory.

    Args:
        args: the parsed command line.

    Returns:
        The path (its directory may not exist yet).
    """
    out = getattr(args, "out", None)
    if not out:
        return os.path.join(tempfile.gettempdir(), LOG_NAME)
    if args.command in ("search", "demo"):
        return os.path.join(out, run.SEARCH_PROJECT, LOG_NAME)
    if os.path.isdir(out):
        return os.path.join(out, LOG_NAME)
    return out + ".log"


class CommandLog:
    """What the libraries print while a command runs, kept in its log file (`log_path`).

    Unless `verbose`, file descriptors 1 and 2 are captured
    (`keras_condensa.library_log.LibraryLog`; the one the package started as
    the program loaded, if any) until the command ends; then the captured
    text, if any, is appended to the command's log file (or to
    `keras-condensa.log` in the temporary directory when that cannot be
    written). With `verbose`, nothing is captured.

    Args:
        argv: the command line, without the program name (`--verbose` in it
            turns the capture off; it names the run in the log).

    Example:

    ```python
    with CommandLog(argv) as log:
        with log.to_terminal():
            args = parser.parse_args(argv)
        log.args = args
        ...
    ```
    """

    def __init__(self, argv):
        self.argv = list(argv)
        #: The parsed command line, once known: it chooses the log file.
        self.args = None
        self._log = library_log.current()
        if "--verbose" in self.argv:
            if self._log is not None:
                self._log.release()
            self._log = None
        elif self._log is None:
            self._log = library_log.LibraryLog().start()

    def to_terminal(self):
        """A context in which `print` reaches the terminal (argparse's help and errors)."""
        return library_log.to_terminal()

    def path(self):
        """The log file (`log_path`), or None before the command is known or with `--verbose`."""
        if self._log is None or self.args is None:
            return None
        return log_path(self.args)

    def hint(self):
        """`"; what the libraries printed is in PATH"` once they printed something, else ""."""
        path = self.path()
        if path is None or not self._log.captured_bytes():
            return ""
        return f"; what the libraries printed is in {path}"

    def close(self):
        """Ends the capture and appends what it holds to the log file (idempotent)."""
        if self._log is None:
            return
        log, self._log = self._log, None
        log.stop()
        command = " ".join(["keras-condensa", *self.argv])
        header = f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {command}"
        path = log_path(self.args) if self.args is not None else None
        fallback = os.path.join(tempfile.gettempdir(), LOG_NAME)
        for candidate in (path, fallback):
            if candidate is None or not os.path.isdir(os.path.dirname(os.path.abspath(candidate))):
                continue
            with contextlib.suppress(OSError):
                log.save(candidate, header)
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


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
    stdout belongs to the results, and so into the log of a `CommandLog`
    unless `--verbose`; an interruption prints how to resume.

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
            out.error(
                f"interrupted: finished trials are kept in "
                f"{os.path.join(directory, run.SEARCH_PROJECT)}; run {command_line} again "
                "to resume"
            )
            raise
