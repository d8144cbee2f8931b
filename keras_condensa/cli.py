"""The `keras-condensa` command line: compress, search, export, bench, demo.

Exit status: 0 success; 2 bad usage or bad input (found before any work:
a missing or corrupt model, an `.npz` without the expected arrays or with
shapes or labels that do not fit the model, an unknown scheme word, an
existing output directory); 1 a failure while working; 130 interrupted
(Ctrl-C). Errors are one line on stderr, and no half-written output is left:
files are written to a temporary name and renamed.

Example:

```sh
keras-condensa compress model.keras --data data.npz --scheme "prune:0.1+int8" --epochs 2 \\
    --out small.keras
keras-condensa search model.keras --data data.npz --max-drop 0.01 --max-trials 10 --out run1
keras-condensa export small.keras --quantize int8 --data data.npz --out small.tflite
keras-condensa bench small.tflite
keras-condensa demo
```
"""

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings

from keras_condensa import scheme_grammar
from keras_condensa.bench import keras_latency_ms
from keras_condensa.cli_checks import UsageError, check_paths, fraction, int_at_least
from keras_condensa.compiling import check_finite_data, check_finite_losses
from keras_condensa.search.oracle import trial_metric

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Files a finished search writes into its output directory; `report.md` last.
SEARCH_OUTPUTS = ("best.keras", "best.tflite", "trials.csv", "pareto.png", "report.md")
SEARCH_PROJECT = "search"
_QUANTIZE_CHOICES = ("none", "float16", "dynamic", "int8")
_OBJECTIVES = ("tflite_bytes", "tflite_gzip_bytes", "litert_latency_ms", "nonzero_params",
               "params", "keras_latency_ms")
_DATA_KEYS = ("x_train", "y_train", "x_val", "y_val")

# Test-only hook: called as `_TEST_HOOK(event, tuner, trial)` with event
# "trial_begin" or "trial_end" (a test raises KeyboardInterrupt from it).
_TEST_HOOK = None


class _Output:
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


def _quiet_libraries():
    """Silences Python-level TensorFlow and conversion warnings.

    TensorFlow's C++ logs are read from `TF_CPP_MIN_LOG_LEVEL` when TensorFlow
    is imported, which `import keras_condensa` may already have done.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------
# Inputs.


def load_model(path):
    """Loads a `.keras` model, with keras_condensa's layers registered.

    Raises:
        UsageError: the file is missing, not a `.keras` file, or corrupt.
    """
    import keras

    import keras_condensa  # noqa: F401  Registers the wrapper and quantizers.

    if not os.path.isfile(path):
        raise UsageError(f"model file not found: {path}")
    if path.endswith(".keras"):
        _check_keras_archive(path)
    try:
        model = keras.saving.load_model(path, compile=True)
    except Exception as e:  # Keras raises many types for a bad archive.
        raise UsageError(f"cannot load model {path}: {type(e).__name__}: {_one_line(e)}") from None
    if not isinstance(model, keras.Model):
        raise UsageError(f"{path} does not hold a keras.Model (found {type(model).__name__})")
    return model


def _check_keras_archive(path):
    """Raises unless `path` is a whole `.keras` archive (Keras says "File not found" otherwise)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UsageError(
            f"{path} is not a valid .keras archive: it is truncated or corrupt ({_one_line(e)}); "
            "save the model again"
        ) from None
    if damaged is not None or "config.json" not in names:
        what = f"its member {damaged} is damaged" if damaged else "it has no config.json"
        raise UsageError(f"{path} is not a valid .keras archive: {what}; save the model again")


def _one_line(error, limit=200):
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_data(path, model=None, require_labels=True):
    """Loads a `--data` `.npz` and checks it fits `model`.

    The file holds `x_train`, `y_train`, `x_val`, `y_val` (and optionally
    `x_test`, `y_test`). Labels are integers in `[0, outputs)` or one-hot
    rows as wide as the model's output.

    Args:
        path: the `.npz`.
        model: the model the data must fit (input shape, output width).
        require_labels: whether all four arrays are needed (else `x_train`
            or `x_val` suffices).

    Returns:
        A dict of numpy arrays.

    Raises:
        UsageError: a missing or unreadable file, missing arrays, shapes
            or labels that do not fit.
    """
    import numpy as np

    if not os.path.isfile(path):
        raise UsageError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: np.asarray(npz[k]) for k in npz.files}
    except Exception as e:
        raise UsageError(f"cannot read data {path}: {type(e).__name__}: {_one_line(e)}") from None
    needed = _DATA_KEYS if require_labels else ()
    missing = [k for k in needed if k not in data]
    if not require_labels and "x_train" not in data and "x_val" not in data:
        missing = ["x_train or x_val"]
    if missing:
        raise UsageError(
            f"{path} lacks the arrays {', '.join(missing)}; a --data .npz holds "
            f"{', '.join(_DATA_KEYS)} (optionally x_test, y_test). Found: {sorted(data) or 'none'}"
        )
    for split in ("train", "val", "test"):
        x, y = data.get(f"x_{split}"), data.get(f"y_{split}")
        if x is None:
            continue
        if x.ndim < 1 or len(x) == 0:
            raise UsageError(f"{path}: x_{split} is empty")
        if not np.issubdtype(x.dtype, np.number):
            raise UsageError(f"{path}: x_{split} is not numeric (dtype {x.dtype})")
        for name, array in ((f"x_{split}", x), (f"y_{split}", y)):
            try:
                check_finite_data(name, array if array is not None else np.zeros(0))
            except ValueError as e:
                raise UsageError(f"{path}: {e}") from None
        data[f"x_{split}"] = x.astype("float32") if x.dtype == np.float64 else x
        if y is not None and len(y) != len(x):
            raise UsageError(
                f"{path}: x_{split} has {len(x)} samples but y_{split} has {len(y)}"
            )
        if model is not None:
            _check_fits(path, model, split, x, y)
    return data


def _check_fits(path, model, split, x, y):
    import numpy as np

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UsageError(
            f"the command line handles models with one input and one output; this one has "
            f"{len(model.inputs)} and {len(model.outputs)}"
        )
    expected = tuple(model.inputs[0].shape[1:])
    got = tuple(x.shape[1:])
    if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise UsageError(
            f"{path}: x_{split} has samples of shape {got} but the model expects "
            f"{tuple('?' if e is None else e for e in expected)}"
        )
    if y is None:
        return
    outputs = model.outputs[0].shape[-1]
    if y.ndim >= 2 and y.shape[-1] > 1:
        if outputs is not None and y.shape[-1] != outputs:
            raise UsageError(
                f"{path}: y_{split} has one-hot rows of width {y.shape[-1]} but the model "
                f"has {outputs} outputs"
            )
        return
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
        raise UsageError(f"{path}: y_{split} must hold finite numeric labels")
    if np.any(y < 0) or np.any(y != np.round(y)):
        raise UsageError(f"{path}: y_{split} must hold non-negative integer labels")
    classes = max(int(outputs or 1), 2)  # One sigmoid unit: labels 0 and 1.
    top = int(np.max(y))
    if top >= classes:
        raise UsageError(
            f"{path}: y_{split} has label {top} but the model has {outputs} output"
            f"{'s' if outputs != 1 else ''} (labels must be < {classes})"
        )


def _chmod_default(path):
    """Gives a `mkstemp` file (mode 0600) the permissions of a file created normally."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _save_model_atomically(model, path):
    """Saves `model` to `path` through a temporary `.keras` file and `os.replace`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".keras", dir=directory)
    os.close(fd)
    try:
        model.save(tmp)
        _chmod_default(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _export_atomically(model, path, **kwargs):
    """`tflite_export.export` into a temporary name, renamed to `path` on success."""
    import tflite_export as te

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tflite", dir=directory)
    os.close(fd)
    try:
        result = te.export(model, tmp, **kwargs)
        _chmod_default(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return result


def _from_logits(model, x):
    import numpy as np

    out = np.asarray(model.predict(x[:64], verbose=0), dtype="float64")
    if out.ndim < 2 or out.shape[-1] < 2:
        return not bool(np.all((out >= 0) & (out <= 1)))
    return not (np.all(out >= 0) and np.allclose(out.sum(-1), 1.0, atol=1e-3))


def _accuracy(model, x, y):
    import numpy as np

    out = np.asarray(model.predict(x, batch_size=256, verbose=0))
    if out.ndim >= 2 and out.shape[-1] > 1:
        pred = out.argmax(-1)
        if y.ndim == out.ndim and y.shape[-1] == out.shape[-1]:
            y = y.argmax(-1)
    else:
        scores = out.reshape(len(out))
        pred = (scores > (0.5 if np.all((scores >= 0) & (scores <= 1)) else 0.0)).astype(int)
    return float(np.mean(pred == np.asarray(y).reshape(pred.shape)))


# ----------------------------------------------------------------------
# compress


def cmd_compress(args, out):
    """`compress`: apply a scheme, fine-tune with its masks, strip (and shrink), save."""
    import keras

    import keras_condensa as kc

    try:
        scheme = scheme_grammar.parse_scheme(args.scheme)
    except scheme_grammar.SchemeSyntaxError as e:
        raise UsageError(str(e)) from None
    model = load_model(args.model)
    data = load_data(args.data, model)

    before = _accuracy(model, data["x_val"], data["y_val"])
    try:
        compressed = scheme.apply(model)
    except (ValueError, TypeError) as e:
        raise UsageError(
            f"cannot apply scheme {args.scheme!r} to {args.model}: {_one_line(e)}"
        ) from None
    epochs = args.epochs if args.fine_tune != "none" else 0
    if args.fine_tune == "lc" and not epochs:
        raise UsageError("--fine-tune lc trains: give --epochs >= 1 (or --fine-tune none)")
    if args.shrink and any(
        getattr(op, "dtype", None) in ("int8", "int4") for op in scheme.operators()
    ):
        raise UsageError(
            "--shrink rebuilds plain Keras layers and would drop the int8/int4 quantizers the "
            "scheme trains; compress without --shrink, or shrink a float scheme"
        )
    final = None
    if epochs:
        if getattr(model, "optimizer", None) is not None and getattr(model, "loss", None):
            optimizer = model.optimizer.__class__.from_config(model.optimizer.get_config())
            loss = model.loss
        else:
            optimizer = keras.optimizers.Adam(1e-3)
            loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=_from_logits(model, data["x_val"])
            )
        if args.fine_tune == "lc":
            source = kc.strip(model)  # a copy, compiled with the fine-tuning optimizer and loss
            source.compile(optimizer=optimizer, loss=loss)
            try:
                lc = kc.LC(scheme)
            except (ValueError, TypeError) as e:
                raise UsageError(
                    f"--fine-tune lc cannot run scheme {args.scheme!r}: {_one_line(e)}"
                ) from None
            final = lc.fit(
                source, data["x_train"], data["y_train"], epochs=epochs,
                batch_size=args.batch_size,
            )  # raises FloatingPointError if the loss diverges
        else:
            compressed.compile(optimizer=optimizer, loss=loss)
            trainer = compressed
            if args.fine_tune == "distill":
                trainer = kc.Distiller(
                    compressed, model, from_logits=_from_logits(model, data["x_val"])
                )
                trainer.compile(
                    optimizer=optimizer.__class__.from_config(optimizer.get_config()), loss=loss
                )
            history = trainer.fit(
                data["x_train"], data["y_train"], epochs=epochs, batch_size=args.batch_size,
                verbose=0, callbacks=kc.callbacks(scheme),
            )
            check_finite_losses(history)
    try:
        if final is None:
            final = kc.strip(compressed, shrink=args.shrink)
        elif args.shrink:
            final = kc.shrink(final)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--shrink cannot rebuild {args.model}: {_one_line(e)}") from None
    _check_finite_weights(final)
    after = _accuracy(final, data["x_val"], data["y_val"])
    summary_text = []
    summary = kc.summary(final, print_fn=summary_text.append)
    _save_model_atomically(final, args.out)
    out.result("\n".join(summary_text))
    out.result(
        f"val accuracy: {before:.4f} dense -> {after:.4f} compressed; density "
        f"{summary.density:.4f} ({summary.nonzeros:,} of {summary.params:,} nonzero); "
        f"wrote {args.out}"
    )
    out.emit_json(
        {
            "command": "compress",
            "out": args.out,
            "scheme": args.scheme,
            "dense_accuracy": before,
            "accuracy": after,
            "params": summary.params,
            "nonzeros": summary.nonzeros,
            "density": summary.density,
            "layers": [_layer_row(r) for r in summary.rows],
        }
    )
    return EXIT_OK


def _check_finite_weights(model):
    """Raises rather than let a model with NaN or infinite weights be written."""
    import numpy as np

    for weight in model.weights:
        if not np.all(np.isfinite(np.asarray(weight))):
            raise FloatingPointError(
                f"the compressed model's weight {weight.path} holds NaN or infinite values; "
                "nothing was written"
            )


def _layer_row(row):
    return {
        "name": row.name,
        "class_name": row.class_name,
        "params": int(row.params),
        "nonzeros": int(row.nonzeros),
        "density": float(row.density),
    }


# ----------------------------------------------------------------------
# search


def _search_dir_state(directory):
    """`"new"`, `"resume"` or `"finished"`/`"foreign"` for an output directory."""
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


def _clear_search_dir(directory):
    """Removes a previous search's outputs and project (nothing else) from `directory`."""
    for name in SEARCH_OUTPUTS:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            os.remove(path)
    project = os.path.join(directory, SEARCH_PROJECT)
    if os.path.isdir(project):
        shutil.rmtree(project)


def _make_tuner_class():
    from keras_condensa.search.tuner import CompressionTuner

    class ProgressTuner(CompressionTuner):
        """`CompressionTuner` reporting each finished trial to a callback."""

        def __init__(self, *args, progress=None, **kwargs):
            self._progress = progress
            super().__init__(*args, **kwargs)

        def on_trial_begin(self, trial):
            super().on_trial_begin(trial)
            if _TEST_HOOK is not None:
                _TEST_HOOK("trial_begin", self, trial)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            if self._progress is not None:
                self._progress(self, trial)
            if _TEST_HOOK is not None:
                _TEST_HOOK("trial_end", self, trial)

    return ProgressTuner


def _trial_rows(tuner):
    """One dict per trial (see `report.TRIAL_COLUMNS`), in trial order."""
    try:
        best_id = tuner.best_trial().trial_id
    except RuntimeError:
        best_id = None
    rows = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id)):
        row = {
            "trial": int(trial.trial_id),
            "status": str(trial.status),
            "density_hp": trial.hyperparameters.values.get("density"),
        }
        for name in ("val_accuracy", "nonzero_params", "params", "density", "tflite_bytes",
                     "tflite_gzip_bytes", "litert_latency_ms", "keras_latency_ms"):
            row[name] = trial_metric(trial, name)
        row["feasible"] = bool(tuner.is_feasible(trial))
        row["best"] = trial.trial_id == best_id
        rows.append(row)
    return rows


def _progress_printer(out, objective, max_trials):
    def fmt_cost(value):
        if value is None:
            return "-"
        return f"{value:,.0f}" if value >= 100 else f"{value:.4g}"

    def progress(tuner, trial):
        done = sum(1 for t in tuner.oracle.trials.values() if t.status != "RUNNING")
        density = trial.hyperparameters.values.get("density")
        accuracy = trial_metric(trial, "val_accuracy")
        cost = trial_metric(trial, objective)
        try:
            best = tuner.best_trial()
            best_cost = fmt_cost(trial_metric(best, objective))
            best_text = (
                f"best so far: trial {int(best.trial_id)} ({best_cost}"
                f"{'' if tuner.is_feasible(best) else ', below floor'})"
            )
        except RuntimeError:
            best_text = "no completed trial yet"
        if accuracy is None:
            verdict = str(trial.status)
        else:
            verdict = "feasible" if tuner.is_feasible(trial) else "infeasible"
        out.progress(
            f"trial {done}/{max_trials}  density {density if density is None else f'{density:.4f}'}"
            f"  accuracy {'-' if accuracy is None else f'{accuracy:.4f}'}"
            f"  {objective} {fmt_cost(cost)}"
            f"  {verdict}"
            f"  {best_text}"
        )

    return progress


def run_search(model, data, directory, *, model_name, objective, max_trials, epochs,
               max_drop=None, accuracy_floor=None, quantize=None, kernels="default",
               overwrite=False, out, seed=0, command_line=None, fine_tune="mask", qat=None,
               prune="unstructured"):
    """Runs the constrained search over `prune` density and writes the outputs.

    The Keras Tuner project lives in `directory/search/`; the outputs
    (`SEARCH_OUTPUTS`) are written only once the search has finished,
    `report.md` last. So a directory holding only `search/` is an interrupted
    search, resumed by running the same command again, while a finished one
    (with `report.md`) is refused unless `overwrite`.

    Args:
        model: the trained dense `keras.Model`.
        data: dict of arrays (`x_train`, `y_train`, `x_val`, `y_val`).
        directory: the output directory.
        model_name: how the report names the model.
        objective: the cost to minimise (a `CompressionTuner` metric).
        max_trials: trials in all, completed ones of a resumed search included.
        epochs: fine-tuning epochs per trial.
        max_drop: largest accuracy drop allowed (or `accuracy_floor`).
        accuracy_floor: absolute accuracy floor.
        quantize: `tflite_export` quantization of the trials' and the best
            model's LiteRT files (`None` for float32).
        kernels: `"default"` or `"builtin"` (keep sparse int8 files for
            LiteRT's built-in kernels) for `best.tflite`.
        overwrite: replace a previous search in `directory`.
        out: an `_Output`.
        seed: seeds the oracle and fine-tuning.
        fine_tune: `CompressionTuner`'s `fine_tune` ("mask", "lc" or "distill").
        qat: `None`, or `"int8"`/`"int4"`: every trial's scheme quantizes its
            weights too (`kc.Quantize(qat)` after the pruning), and its LiteRT
            file takes the learned ranges (`quantize` must be `"int8"`).
        prune: what the density keeps: `"unstructured"` weights (`kc.Prune`),
            or whole `"neuron"`s, `"filter"`s or both (`"structure"`), in
            which case every trial's model is shrunk (`CompressionTuner`'s
            `shrink=True`) so its size and latency are the smaller model's.
        command_line: the command to print in the resume hint.

    Returns:
        A dict of the results (also the `--json` object's core).

    Raises:
        UsageError: `directory` holds a finished search or other files and
            `overwrite` is false, or the tuner rejects its arguments.
        KeyboardInterrupt: interrupted; completed trials stay on disk.
    """
    import keras

    import keras_condensa as kc
    from keras_condensa import report

    start = time.perf_counter()
    state = _search_dir_state(directory)
    if state in ("finished", "foreign") and not overwrite:
        why = "a finished search (it has report.md)" if state == "finished" else "other files"
        raise UsageError(
            f"output directory {directory} exists and holds {why}; pass --overwrite to "
            "replace it, or choose another --out"
        )
    if state == "foreign" and os.path.exists(directory) and not os.path.isdir(directory):
        raise UsageError(f"--out {directory} exists and is not a directory")
    if overwrite and os.path.isdir(directory):
        _clear_search_dir(directory)
    resuming = os.path.isdir(os.path.join(directory, SEARCH_PROJECT)) and not overwrite
    os.makedirs(directory, exist_ok=True)

    operator = {
        "unstructured": kc.Prune,
        "neuron": kc.NeuronPrune,
        "filter": kc.FilterPrune,
        "structure": kc.StructurePrune,
    }[prune]

    def scheme(hp):
        pruning = operator(density=hp.Float("density", 0.01, 1.0, sampling="log"))
        return pruning if qat is None else kc.Compose([pruning, kc.Quantize(qat)])

    tuner_class = _make_tuner_class()
    # Keras Tuner prints ("Reloading Tuner from ...") on stdout, which belongs to the results.
    chatter = open(os.devnull, "w") if out.quiet else sys.stderr
    try:
        with contextlib.redirect_stdout(chatter):
            tuner = tuner_class(
                model,
                scheme=scheme,
                train_data=(data["x_train"], data["y_train"]),
                validation_data=(data["x_val"], data["y_val"]),
                max_accuracy_drop=max_drop,
                accuracy_floor=accuracy_floor,
                objective=objective,
                max_trials=max_trials,
                fine_tune_epochs=epochs,
                fine_tune=fine_tune,
                shrink=prune != "unstructured",
                quantize=quantize,
                seed=seed,
                directory=directory,
                project_name=SEARCH_PROJECT,
                overwrite=False,
                progress=_progress_printer(out, objective, max_trials),
            )
    except ValueError as e:
        if chatter is not sys.stderr:
            chatter.close()
        if not resuming and os.path.isdir(directory) and not os.listdir(directory):
            os.rmdir(directory)
        raise UsageError(_one_line(e, 400)) from None
    kept = sum(1 for t in tuner.oracle.trials.values() if t.status != "RUNNING")
    if resuming:
        out.progress(f"resuming the search in {directory}: {kept} finished trial(s) kept")
    out.progress(
        f"dense val_accuracy {tuner.dense_accuracy:.4f}, floor {tuner.accuracy_floor:.4f}; "
        f"minimising {objective} over {prune} prune density in [0.01, 1] (log)"
        + (f" with {qat} quantization-aware fine-tuning" if qat else "")
        + f", {max_trials} trials"
    )
    try:
        with contextlib.redirect_stdout(chatter):
            tuner.search()
    except KeyboardInterrupt:
        hint = command_line or "the same command"
        print(
            f"interrupted: finished trials are kept in {os.path.join(directory, SEARCH_PROJECT)}; "
            f"run {hint} again to resume",
            file=sys.stderr,
            flush=True,
        )
        raise
    finally:
        if chatter is not sys.stderr:
            chatter.close()

    rows = _trial_rows(tuner)
    stop_reason = tuner.oracle.stop_reason
    if stop_reason:
        out.progress(f"search ended after {len(rows)} of {max_trials} trials: {stop_reason}")
    try:
        best_trial = tuner.best_trial()
    except RuntimeError as e:
        raise RuntimeError(f"the search finished without a completed trial: {e}") from None
    best_row = next(r for r in rows if r["trial"] == int(best_trial.trial_id))
    best = tuner.best_model()
    summary = kc.summary(best, print_fn=None)

    import tflite_export as te

    paths = {name: os.path.join(directory, name) for name in SEARCH_OUTPUTS}
    _save_model_atomically(best, paths["best.keras"])
    representative = data["x_train"][:300] if quantize == "int8" else None
    exported = _export_atomically(
        best, paths["best.tflite"], quantize=quantize, representative_data=representative,
        sparse=True, kernels=kernels,
    )
    check = te.verify(paths["best.tflite"], best, data["x_val"][:300], kernels=kernels)
    timing = te.benchmark(paths["best.tflite"], num_threads=1, kernels=kernels)
    export_info = {
        "bytes": int(os.path.getsize(paths["best.tflite"])),
        "gzip_bytes": int(timing.gzip_bytes),
        "p50_ms": float(timing.p50_ms),
        "top1_agreement": float(check.top1_agreement),
        "max_abs_error": float(check.max_abs_error),
        "sparse_tensors": int(exported.sparse_tensors),
        "fallback": exported.fallback,
        "kernels": timing.kernels,
    }
    layers = [_layer_row(r) for r in summary.rows]
    if prune != "unstructured":
        dense_params = {r.name: int(r.params) for r in kc.summary(model, print_fn=None).rows}
        for row in layers:
            row["dense_params"] = dense_params.get(row["name"], row["params"])
    report.write_atomically(paths["trials.csv"], report.trials_csv(rows))
    report.pareto_png(rows, objective, tuner.accuracy_floor, paths["pareto.png"])
    info = {
        "model": model_name,
        "objective": objective,
        "prune": prune,
        "dense_accuracy": tuner.dense_accuracy,
        "floor": tuner.accuracy_floor,
        "best": best_row,
        "exported": export_info,
        "backend": keras.backend.backend(),
        "elapsed_s": time.perf_counter() - start,
        "max_trials": max_trials,
        "stop_reason": stop_reason,
    }
    report.write_atomically(paths["report.md"], report.report_markdown(info, rows, layers))
    return {
        "out": directory,
        "objective": objective,
        "prune": prune,
        "dense_accuracy": tuner.dense_accuracy,
        "floor": tuner.accuracy_floor,
        "trials": len(rows),
        "stop_reason": stop_reason,
        "feasible_trials": sum(1 for r in rows if r["feasible"]),
        "best": {
            "trial": best_row["trial"],
            "density_hp": best_row["density_hp"],
            "feasible": best_row["feasible"],
            "val_accuracy": best_row["val_accuracy"],
            "params": summary.params,
            "nonzeros": summary.nonzeros,
            "density": summary.density,
            objective: best_row.get(objective),
            "tflite": export_info,
        },
        "layers": layers,
        "files": paths,
        "trial_rows": rows,
        "results_summary": tuner.results_summary(print_fn=None),
    }


def cmd_search(args, out):
    """`search`: the constrained search over prune density, with report and files."""
    _check_search_args(args)
    model = load_model(args.model)
    data = load_data(args.data, model)
    quantize = None if args.quantize == "none" else args.quantize
    result = run_search(
        model, data, args.out, model_name=args.model, objective=args.objective,
        max_trials=args.max_trials, epochs=args.epochs, max_drop=args.max_drop,
        accuracy_floor=args.accuracy_floor, quantize=quantize, kernels=args.kernels,
        overwrite=args.overwrite, out=out, seed=args.seed, fine_tune=args.fine_tune,
        qat=None if args.qat == "none" else args.qat, prune=args.prune,
        command_line="`" + " ".join(["keras-condensa", *args.argv]) + "`",
    )
    _print_search_result(result, out)
    out.emit_json({"command": "search", **json_result(result)})
    return EXIT_OK


def _check_search_args(args):
    if args.qat != "none" and args.prune != "unstructured":
        raise UsageError(
            f"--prune {args.prune} shrinks every trial's model, which drops the quantizers "
            f"--qat {args.qat} trains; use --quantize int8 without --qat for a structured search"
        )
    if args.qat != "none" and args.quantize != "int8":
        raise UsageError(
            f"--qat {args.qat} fine-tunes with quantized weights; export them with "
            f"--quantize int8 (got --quantize {args.quantize})"
        )


def json_result(result):
    return {k: v for k, v in result.items() if k != "results_summary"}


def _density_words(result):
    """The best trial's density: of weights, or (shrunk) the fraction of structures kept."""
    best = result["best"]
    if result.get("prune", "unstructured") == "unstructured":
        return f"density {best['density']:.4f}"
    return f"{result['prune']} density {best['density_hp']:.4f}, {best['params']:,} parameters"


def _print_search_result(result, out):
    best = result["best"]
    tfl = best["tflite"]
    out.result(result["results_summary"])
    out.result(
        f"best: trial {best['trial']} ({_density_words(result)}, val_accuracy "
        f"{best['val_accuracy']:.4f}, {'meets' if best['feasible'] else 'BELOW'} floor "
        f"{result['floor']:.4f}); best.tflite {tfl['bytes']:,} bytes, {tfl['gzip_bytes']:,} gzip, "
        f"LiteRT p50 {tfl['p50_ms']:.4f} ms, top-1 agreement {tfl['top1_agreement']:.4f}"
    )
    out.result(f"wrote {', '.join(result['files'].values())}")


# ----------------------------------------------------------------------
# export and bench


def cmd_export(args, out):
    """`export`: a `.keras` model to a verified LiteRT file."""
    import tflite_export as te

    quantize = None if args.quantize == "none" else args.quantize
    if quantize == "int8" and not args.data:
        raise UsageError("--quantize int8 needs --data (calibration inputs from x_train)")
    model = load_model(args.model)
    data = load_data(args.data, model, require_labels=False) if args.data else None
    x_cal = None
    if data is not None:
        x_cal = data.get("x_train", data.get("x_val"))
    try:
        result = _export_atomically(
            model, args.out, quantize=quantize,
            representative_data=x_cal[:300] if quantize == "int8" else None,
            sparse=not args.no_sparse, kernels=args.kernels,
        )
    except (te.UnsupportedOpsError, te.ConversionError) as e:
        raise RuntimeError(f"export failed: {_one_line(e, 400)}") from None
    info = {
        "command": "export",
        "out": args.out,
        "quantize": args.quantize,
        "sparse": not args.no_sparse,
        "bytes": int(os.path.getsize(args.out)),
        "gzip_bytes": int(result.gzip_bytes),
        "sparse_tensors": int(result.sparse_tensors),
        "fallback": result.fallback,
        "ops": list(result.ops),
    }
    if data is not None:
        x_check = data.get("x_val", data.get("x_train"))[:300]
        check = te.verify(args.out, model, x_check, kernels=args.kernels)
        info.update(top1_agreement=check.top1_agreement, max_abs_error=check.max_abs_error)
    out.result(
        f"wrote {args.out}: {info['bytes']:,} bytes ({info['gzip_bytes']:,} gzip), "
        f"{info['sparse_tensors']} sparse tensors, ops {', '.join(info['ops'])}"
        + (f"; fallback: {result.fallback}" if result.fallback else "")
    )
    if "top1_agreement" in info:
        out.result(
            f"LiteRT against Keras: top-1 agreement {info['top1_agreement']:.4f}, "
            f"max abs error {info['max_abs_error']:.4g}"
        )
    out.emit_json(info)
    return EXIT_OK


def cmd_bench(args, out):
    """`bench`: latency of a `.keras` model (Keras) or a `.tflite` file (LiteRT)."""
    import numpy as np

    path = args.model
    if path.endswith(".tflite"):
        import tflite_export as te

        try:
            timing = te.benchmark(path, num_threads=args.threads, runs=args.runs)
        except te.InvalidTFLiteFileError as e:
            raise UsageError(f"cannot load {path}: {_one_line(e)}") from None
        info = {
            "command": "bench",
            "model": path,
            "runtime": "litert",
            "kernels": timing.kernels,
            "threads": args.threads,
            "runs": timing.runs,
            "p50_ms": timing.p50_ms,
            "p90_ms": timing.p90_ms,
            "p99_ms": timing.p99_ms,
            "bytes": int(timing.bytes),
            "gzip_bytes": int(timing.gzip_bytes),
        }
        out.result(
            f"{path}: LiteRT ({timing.kernels}, {args.threads} thread) p50 {timing.p50_ms:.4f} ms, "
            f"p90 {timing.p90_ms:.4f} ms, p99 {timing.p99_ms:.4f} ms; {timing.bytes:,} bytes, "
            f"{timing.gzip_bytes:,} gzip bytes"
        )
    else:
        import keras

        model = load_model(path)
        if args.data:
            data = load_data(args.data, model, require_labels=False)
            x = data.get("x_val", data.get("x_train"))
        else:
            shape = tuple(1 if d is None else d for d in model.inputs[0].shape[1:])
            x = np.zeros((1, *shape), dtype="float32")
        timing = keras_latency_ms(model, x, runs=args.runs)
        info = {
            "command": "bench",
            "model": path,
            "runtime": f"keras ({keras.backend.backend()})",
            "runs": args.runs,
            **timing,
            "bytes": int(os.path.getsize(path)),
        }
        if args.data and "y_val" in data:
            info["val_accuracy"] = _accuracy(model, data["x_val"], data["y_val"])
        out.result(
            f"{path}: Keras ({keras.backend.backend()}, batch 1) p50 {timing['p50_ms']:.4f} ms, "
            f"p90 {timing['p90_ms']:.4f} ms, p99 {timing['p99_ms']:.4f} ms; "
            f"{info['bytes']:,} bytes"
            + (f"; val accuracy {info['val_accuracy']:.4f}" if "val_accuracy" in info else "")
        )
    out.emit_json(info)
    return EXIT_OK


# ----------------------------------------------------------------------
# Parser and entry point.


def _cmd_demo(args, out):
    from keras_condensa import demo

    return demo.run(args, out)


def build_parser():
    """The `argparse` parser of `keras-condensa` and its subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    common.add_argument(
        "--json", action="store_true",
        help="print one JSON object with the results at the end, and nothing else, on stdout",
    )
    parser = argparse.ArgumentParser(
        prog="keras-condensa",
        description="Compress Keras 3 models: prune and quantize, search the cheapest "
        "compression under an accuracy floor, export to LiteRT, benchmark.",
        epilog="Exit status: 0 success, 1 failure, 2 bad usage or input, 130 interrupted. "
        "Data files (.npz) hold x_train, y_train, x_val, y_val (optionally x_test, y_test).",
    )
    from keras_condensa.version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "compress", parents=[common], help="apply a scheme, fine-tune, strip, save",
        description="Apply a compression scheme to a model, fine-tune it with the masks "
        "enforced, strip the wrappers and save the plain model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scheme grammar:\n  " + "\n  ".join(
            [
                "prune:D       unstructured magnitude pruning, keep fraction D (global threshold)",
                "neuron:D      keep fraction D of the output units",
                "filter:D      keep fraction D of the convolution filters",
                "structure:D   keep fraction D of the input channels",
                "block:D:RxC   keep fraction D of RxC blocks (e.g. block:0.25:4x4)",
                "nm:N:M        N nonzeros in every M weights (e.g. nm:2:4)",
                "float16, int8, int4   quantization-aware fine-tuning",
                "terms join with '+': prune:0.1+int8, filter:0.5+nm:2:4",
            ]
        ),
    )
    p.add_argument("model", help="the trained .keras model")
    p.add_argument("--data", required=True, help=".npz with x_train, y_train, x_val, y_val")
    p.add_argument("--scheme", required=True, help=scheme_grammar.HELP)
    p.add_argument("--epochs", type=int_at_least(0), default=1,
                   help="fine-tuning epochs (default 1)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32, help=argparse.SUPPRESS)
    p.add_argument(
        "--fine-tune", choices=("mask", "lc", "distill", "none"), default="mask",
        help="mask: fine-tune with the masks enforced (default); lc: Condensa's L-C optimizer "
        "(kc.LC, --epochs of training); distill: mask fine-tuning that also learns from the "
        "dense model's soft targets (kc.Distiller); none: one-shot, no training",
    )
    p.add_argument(
        "--shrink", action="store_true",
        help="remove the neurons and filters that structured pruning zeroed (kc.shrink): "
        "a smaller, faster model instead of one full of zeros",
    )
    p.add_argument("--out", required=True, help="the compressed .keras model to write")
    p.set_defaults(run=cmd_compress)

    p = sub.add_parser(
        "search", parents=[common], help="constrained search over prune density",
        description="Search the prune density (log scale, 0.01 to 1) that minimises "
        "--objective with the validation accuracy at or above the floor. Writes "
        "OUT/best.keras, OUT/best.tflite, OUT/report.md, OUT/pareto.png, OUT/trials.csv; "
        "the Keras Tuner project lives in OUT/search/. An interrupted search (OUT holds "
        "only search/) resumes when the same command is run again; a finished one is "
        "refused unless --overwrite.",
    )
    p.add_argument("model", help="the trained .keras model")
    p.add_argument("--data", required=True, help=".npz with x_train, y_train, x_val, y_val")
    floor = p.add_mutually_exclusive_group(required=True)
    floor.add_argument("--accuracy-floor", type=fraction,
                       help="absolute validation accuracy floor")
    floor.add_argument(
        "--max-drop", type=fraction, help="floor = dense validation accuracy minus this (e.g. 0.01)"
    )
    p.add_argument("--objective", choices=_OBJECTIVES, default="tflite_bytes",
                   help="the cost to minimise (default tflite_bytes)")
    p.add_argument(
        "--max-trials", type=int_at_least(1), default=10,
        help="trials in all (default 10); the search ends sooner once the boundary is "
        "located (another trial expected to save under 4%%)",
    )
    p.add_argument("--epochs", type=int_at_least(0), default=1,
                   help="fine-tuning epochs per trial (default 1)")
    p.add_argument(
        "--fine-tune", choices=("mask", "lc", "distill"), default="mask",
        help="how each trial recovers accuracy: mask fine-tuning (default), Condensa's L-C "
        "optimizer, or distillation from the dense model",
    )
    p.add_argument("--quantize", choices=_QUANTIZE_CHOICES, default="none",
                   help="quantization of the trials' LiteRT files and best.tflite (default none)")
    p.add_argument(
        "--qat", choices=("none", "int8", "int4"), default="none",
        help="quantization-aware fine-tuning of every trial (kc.Quantize after the pruning; "
        "int4 stores 4-bit weights); needs --quantize int8 (default none)",
    )
    p.add_argument(
        "--prune", choices=("unstructured", "neuron", "filter", "structure"),
        default="unstructured",
        help="what the density keeps: single weights (default), or whole neurons, filters or "
        "both; structured trials are shrunk (kc.shrink), so bytes and latency are the "
        "smaller model's",
    )
    p.add_argument("--kernels", choices=("default", "builtin"), default="default",
                   help="LiteRT kernels best.tflite must run on (builtin keeps sparse int8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the oracle and fine-tuning")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a finished search in --out")
    p.set_defaults(run=cmd_search)

    p = sub.add_parser(
        "export", parents=[common], help="export a .keras model to a verified LiteRT file",
        description="Convert a .keras model to LiteRT (TFLite), load and run it once; with "
        "--data, compare its predictions with Keras on x_val.",
    )
    p.add_argument("model", help="the .keras model")
    p.add_argument("--quantize", choices=_QUANTIZE_CHOICES, default="none",
                   help="none (float32), float16, dynamic (int8 weights), int8 (needs --data)")
    p.add_argument("--data", help=".npz: x_train calibrates int8, x_val verifies")
    p.add_argument("--no-sparse", action="store_true", help="no sparse weight encoding")
    p.add_argument("--kernels", choices=("default", "builtin"), default="default",
                   help="LiteRT kernels the file must run on (builtin keeps sparse int8)")
    p.add_argument("--out", required=True, help="the .tflite file to write")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser(
        "bench", parents=[common], help="latency of a .keras (Keras) or .tflite (LiteRT) model",
        description="Batch-1 latency: a .keras model with Keras on this machine's device, a "
        ".tflite file with LiteRT (p50, p90, p99, bytes, gzip bytes).",
    )
    p.add_argument("model", help="a .keras model or a .tflite file")
    p.add_argument("--data", help=".npz; inputs from x_val (and accuracy for .keras)")
    p.add_argument("--runs", type=int_at_least(1), default=200, help="timed runs (default 200)")
    p.add_argument("--threads", type=int_at_least(1), default=1,
                   help="LiteRT threads (default 1)")
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser(
        "demo", parents=[common], help="LeNet-300-100 on digits: search, export, compare",
        description="Train LeNet-300-100 on scikit-learn's bundled digits (no download), "
        "search the prune density (fine-tuned with int4 weights) under a floor of the dense "
        "accuracy minus 1 point, export the best model to LiteRT (int4 weights, int8 "
        "activations), verify it and compare it with the dense model.",
    )
    p.add_argument(
        "--max-trials", type=int_at_least(1), default=10,
        help="trials at most (default 10; fewer once the boundary is located)",
    )
    p.add_argument("--epochs", type=int_at_least(0), default=2,
                   help="fine-tuning epochs per trial (default 2)")
    p.add_argument(
        "--out", default="demo_out", help="output directory, replaced (default demo_out)"
    )
    p.add_argument("--objective", choices=_OBJECTIVES, default="tflite_gzip_bytes",
                   help=argparse.SUPPRESS)
    p.add_argument("--dense-epochs", type=int_at_least(1), default=20, help=argparse.SUPPRESS)
    p.set_defaults(run=_cmd_demo)
    return parser


def main(argv=None):
    """Runs `keras-condensa` with `argv` (default: `sys.argv[1:]`).

    Args:
        argv: the arguments, without the program name.

    Returns:
        The exit status: 0 success, 1 failure, 2 bad usage or input, 130
        interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 0 for --help, 2 for usage errors.
        return int(e.code or 0)
    args.argv = argv
    _quiet_libraries()
    out = _Output(quiet=args.quiet, as_json=args.json)
    try:
        check_paths(args)
        return args.run(args, out)
    except UsageError as e:
        print(f"keras-condensa {args.command}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.command not in ("search", "demo"):
            print(f"keras-condensa {args.command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as e:  # One line, not a traceback; KERAS_CONDENSA_DEBUG=1 re-raises.
        if os.environ.get("KERAS_CONDENSA_DEBUG"):
            raise
        print(
            f"keras-condensa {args.command}: failed: {type(e).__name__}: {_one_line(e, 400)}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
