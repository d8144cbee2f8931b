"""`CompressionTuner`: the cheapest compression of a model that keeps its accuracy.

A real `keras_tuner.Tuner`: Keras Tuner owns the search loop, the trial
directories, resumption (same `directory` and `project_name`,
`overwrite=False`) and distributed tuning (chief and workers through the
`KERASTUNER_*` environment variables). This class only says what one trial
is: build a compression scheme from the trial's hyperparameters, apply it to
the user's model, fine-tune, strip, and measure accuracy and cost.
"""

import hashlib
import json
import math
import numbers
import os
import time
import warnings

import keras
import keras_tuner
import numpy as np
from keras_tuner import errors as kt_errors

from keras_condensa.bench import keras_latency_ms
from keras_condensa.callbacks import callbacks as scheme_callbacks
from keras_condensa.compiling import check_finite_data, check_finite_losses
from keras_condensa.distill import Distiller
from keras_condensa.lc import LC
from keras_condensa.lc import check_options as check_lc_options
from keras_condensa.masking import is_graph_model
from keras_condensa.search.constraint import Constraint
from keras_condensa.search.oracle import (
    ConstrainedBayesianOracle,
    trial_metric,
    write_json_atomically,
)
from keras_condensa.shrink import shrink as shrink_model
from keras_condensa.summary import summary as model_summary
from keras_condensa.surgery import strip

# Metrics every trial reports.
BASE_METRICS = (
    "val_accuracy",
    "nonzero_params",
    "params",
    "density",
    "keras_latency_ms",
    "fine_tune_epochs",
)
FINE_TUNE_METHODS = ("mask", "lc", "distill")
_FINE_TUNE_OPTIONS = {
    "mask": (),
    "lc": ("steps", "mu_init", "mu_multiplier", "mu_cap", "lr_end"),
    "distill": ("temperature", "alpha"),
}
# Metrics reported only when the trial exports a LiteRT file.
EXPORT_METRICS = ("tflite_bytes", "tflite_gzip_bytes", "litert_latency_ms")

_MODEL_FILE = "model.keras"
# What a project was searched for (model, data, scheme), beside Keras Tuner's own state.
_FINGERPRINT_FILE = "fingerprint.json"
_TFLITE_FILE = "model.tflite"
_COMPLETED = keras_tuner.engine.trial.TrialStatus.COMPLETED


class _TimeUp(Exception):
    """Raised before creating a trial once `max_time` has passed."""


class CompressionTuner(keras_tuner.Tuner):
    """Searches a compression scheme's hyperparameters under an accuracy floor.

    The dense model is evaluated first, in the constructor: its validation
    accuracy minus `max_accuracy_drop` (or `accuracy_floor` itself) is the
    floor. A `ConstrainedBayesianOracle` then minimises `objective` subject to
    `val_accuracy >= floor`. Each trial builds the scheme from its
    hyperparameters, applies it to a copy of `model` (the original is never
    modified), fine-tunes it for `fine_tune_epochs` with the scheme's
    callbacks, strips it (with `shrink=True`, also removes the channels that
    structured pruning zeroed), evaluates it, and saves it as `model.keras` in the
    trial's directory (and, when the objective needs it, `model.tflite`).

    Metrics every trial reports: `val_accuracy` (top-1 on
    `validation_data`, computed from predictions, so the model need not be
    compiled with an accuracy metric), `nonzero_params`, `params`,
    `density` (nonzeros / params), `keras_latency_ms` (median of timed
    batch-1 `model(x)` calls on the device Keras uses), `fine_tune_epochs`
    (epochs actually run: fewer after an early stop). When the objective is
    `tflite_bytes`, `tflite_gzip_bytes` or `litert_latency_ms` (or
    `export=True`), the trial also exports with `tflite_export` and reports all
    three.

    Fine-tuning compiles each trial's model with a fresh copy of `model`'s
    compiled optimizer (same class and config) and its loss. An uncompiled
    `model` is fine-tuned with `keras.optimizers.Adam(1e-3)` and
    sparse categorical cross-entropy, `from_logits` chosen from the dense
    model's outputs (rows in [0, 1] summing to 1 are probabilities, anything
    else logits). `optimizer=` and `loss=` override both.

    Args:
        model: the trained dense `keras.Model`.
        scheme: a callable taking a `keras_tuner.HyperParameters` and
            returning a `kc` operator or `kc.Compose`, e.g.
            `lambda hp: kc.Prune(density=hp.Float("density", 0.01, 1.0,
            sampling="log"))`. It is called once in the constructor to
            declare the search space (with default values; an exception then
            is ignored once the hyperparameters are declared) and once per
            trial; an exception in a trial fails that trial only.
        train_data: `(x, y)` for fine-tuning.
        validation_data: `(x, y)` for the accuracy, with integer labels or
            one-hot rows.
        max_accuracy_drop: the floor is the dense accuracy minus this.
            Defaults to 0.01 when `accuracy_floor` is not given.
        accuracy_floor: an absolute floor instead of `max_accuracy_drop`.
        objective: the cost to minimise: a reported metric name (see above)
            or a `keras_tuner.Objective`. Defaults to `"tflite_bytes"`.
        max_trials: number of trials, a positive int.
        fine_tune_epochs: epochs of fine-tuning per trial (0 for none).
        fine_tune: how a trial recovers accuracy: `"mask"` (default:
            fine-tune with the scheme's masks and callbacks), `"lc"`
            (Condensa's L-C optimizer, `kc.LC(scheme, **fine_tune_options)`,
            for `fine_tune_epochs`; schemes must have no schedule) or
            `"distill"` (mask fine-tuning through `kc.Distiller` with the
            dense `model` as teacher).
        fine_tune_options: optional dict of keyword arguments for `kc.LC`
            (`steps`, `mu_init`, `mu_multiplier`, `mu_cap`, `lr_end`) or
            `kc.Distiller` (`temperature`, `alpha`).
        shrink: whether each trial's stripped model has its pruned channels
            removed (`kc.shrink`) before it is measured and saved, so that
            `params`, `keras_latency_ms` and the LiteRT metrics are those of
            the smaller model: what a search over `FilterPrune` or
            `NeuronPrune` densities for latency needs. `model` must be
            Sequential or functional.
        batch_size: batch size of fine-tuning and prediction.
        early_stop_margin: after the first fine-tuning epoch, a trial whose
            accuracy is more than this below the floor stops fine-tuning and
            reports its metrics as they are (an infeasible data point).
            `None` disables it.
        max_time: optional wall-clock budget in seconds for `search()`: no new
            trial starts once it has passed (a running one finishes).
        export: whether trials export a LiteRT file; `None` (default) exports
            when the objective is a LiteRT metric.
        quantize: `quantize=` of `tflite_export.export` (`None`, `"float16"`,
            `"dynamic"`, `"int8"`); int8 calibrates on up to 300 training
            samples.
        optimizer: optional optimizer (name, config or instance; an instance
            is copied per trial) overriding the model's.
        loss: optional loss overriding the model's.
        num_initial_points: passed to the oracle.
        min_expected_saving: passed to the oracle: the search ends before
            `max_trials` once another trial is expected to save less than
            this share of the best cost (0 runs every trial).
        max_consecutive_failed_trials: passed to the oracle.
        seed: optional int, seeds the oracle and each trial's fine-tuning.
        directory: the tuner's directory (Keras Tuner's `directory`).
        project_name: the project's name; with `overwrite=False` an existing
            project is resumed: its completed trials are kept and only the
            remaining `max_trials` run.
        overwrite: start afresh, deleting an existing project.
        verbose: 0 (silent) or 1 (Keras Tuner's progress and fit logs).

    Raises:
        ValueError: `max_trials < 1`, both or invalid floors, a floor above
            the dense model's accuracy, an objective no trial reports, or bad
            data.
        TypeError: `scheme` is not callable.

    Example:

    ```python
    tuner = kc.search.CompressionTuner(
        model,
        scheme=lambda hp: kc.Prune(density=hp.Float("density", 0.01, 1.0, sampling="log")),
        train_data=(x, y), validation_data=(x_val, y_val), max_accuracy_drop=0.01,
        objective="tflite_bytes", max_trials=10, fine_tune_epochs=1,
        directory="runs", project_name="lenet")
    tuner.search()
    best = tuner.best_model()
    tuner.results_summary()
    ```
    """

    def __init__(
        self,
        model,
        scheme,
        train_data,
        validation_data,
        max_accuracy_drop=None,
        accuracy_floor=None,
        objective="tflite_bytes",
        max_trials=10,
        fine_tune_epochs=1,
        fine_tune="mask",
        fine_tune_options=None,
        shrink=False,
        batch_size=32,
        early_stop_margin=0.2,
        max_time=None,
        export=None,
        quantize=None,
        optimizer=None,
        loss=None,
        num_initial_points=None,
        min_expected_saving=0.04,
        max_consecutive_failed_trials=3,
        seed=None,
        directory=None,
        project_name=None,
        overwrite=False,
        verbose=0,
    ):
        if (
            isinstance(max_trials, bool)
            or not isinstance(max_trials, numbers.Integral)
            or (max_trials < 1)
        ):
            raise ValueError(
                f"`max_trials` must be a positive integer. Received: max_trials={max_trials!r}."
            )
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a `keras.Model`. Received: {type(model).__name__}.")
        if not callable(scheme):
            raise TypeError(
                "`scheme` must be a callable taking a `keras_tuner.HyperParameters` and "
                "returning a scheme, e.g. lambda hp: kc.Prune(density=hp.Float("
                f'"density", 0.01, 1.0, sampling="log")). Received: {scheme!r}.'
            )
        if not isinstance(fine_tune_epochs, numbers.Integral) or fine_tune_epochs < 0:
            raise ValueError(
                "`fine_tune_epochs` must be a non-negative integer. "
                f"Received: {fine_tune_epochs!r}."
            )
        if max_time is not None and not (isinstance(max_time, numbers.Real) and max_time > 0):
            raise ValueError(
                f"`max_time` must be a positive number of seconds. Received: {max_time!r}."
            )
        if not isinstance(shrink, bool):
            raise TypeError(f"`shrink` must be True or False. Received: shrink={shrink!r}.")
        if shrink and not is_graph_model(model):
            raise ValueError(
                f"shrink=True removes channels by rebuilding the model from its layer graph, "
                f"which a subclassed model ({type(model).__name__}) does not expose. Rebuild it "
                "as a functional or Sequential model, or pass shrink=False."
            )
        self.model = model
        self.scheme = scheme
        self.shrink = shrink
        self.x_train, self.y_train = _unpack("train_data", train_data)
        self.x_val, self.y_val = _unpack("validation_data", validation_data)
        if fine_tune not in FINE_TUNE_METHODS:
            raise ValueError(
                f"`fine_tune` must be one of {FINE_TUNE_METHODS}. "
                f"Received: fine_tune={fine_tune!r}. "
                "Use 'mask' to fine-tune with the masks, 'lc' for Condensa's L-C optimizer, "
                "'distill' to learn from the dense model's soft targets."
            )
        options = dict(fine_tune_options or {})
        allowed = _FINE_TUNE_OPTIONS[fine_tune]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"`fine_tune_options` for fine_tune={fine_tune!r} takes {list(allowed)}. "
                f"Received unknown keys: {unknown}."
            )
        if fine_tune == "lc":
            check_lc_options(**options)  # before any trial: every trial would fail the same way
        self.fine_tune_epochs = int(fine_tune_epochs)
        self.fine_tune = fine_tune
        self.fine_tune_options = options
        self.batch_size = batch_size
        self.early_stop_margin = early_stop_margin
        self.max_time = max_time
        self.quantize = quantize
        self.seed = seed
        self.verbose = verbose
        self._optimizer = optimizer
        self._loss = loss

        objective = _to_objective(objective)
        self.export = objective.name in EXPORT_METRICS if export is None else bool(export)
        reported = BASE_METRICS + (EXPORT_METRICS if self.export else ())
        if objective.name not in reported:
            raise ValueError(
                f"No trial reports the objective {objective.name!r}. The trials of this "
                f"tuner report {list(reported)}"
                + ("" if self.export else f" (and, with export=True, {list(EXPORT_METRICS)})")
                + "."
            )

        # Dense accuracy and floor: computed here, by every process (chief and
        # workers construct the tuner with the same arguments).
        dense_outputs = self._predict(model)
        self.dense_accuracy = _accuracy(dense_outputs, self.y_val)
        self.accuracy_floor = _floor(self.dense_accuracy, max_accuracy_drop, accuracy_floor)
        self._from_logits = not _looks_like_probabilities(dense_outputs)

        hp = keras_tuner.HyperParameters()
        try:
            scheme(hp)
        except Exception:  # The defaults may be invalid; the space is declared.
            pass
        oracle = ConstrainedBayesianOracle(
            objective=objective,
            constraint=Constraint("val_accuracy", min_value=self.accuracy_floor),
            hyperparameters=hp,
            max_trials=int(max_trials),
            num_initial_points=num_initial_points,
            min_expected_saving=min_expected_saving,
            seed=seed,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        oracle.verbose = verbose
        fingerprint = self._fingerprint(hp, objective)
        project_dir = os.path.join(str(directory or "."), project_name or "untitled_project")
        if not overwrite:
            _check_fingerprint(project_dir, fingerprint)
        super().__init__(
            oracle=oracle,
            hypermodel=None,
            directory=directory,
            project_name=project_name,
            overwrite=overwrite,
        )
        if not os.path.exists(os.path.join(self.project_dir, _FINGERPRINT_FILE)) or overwrite:
            write_json_atomically(os.path.join(self.project_dir, _FINGERPRINT_FILE), fingerprint)
        self._deadline = None

    # ------------------------------------------------------------------
    # Keras Tuner hooks.

    def search(self, *args, **kwargs):
        """Runs trials until `max_trials` (or `max_time`) is reached.

        Trials completed earlier in the same project count towards
        `max_trials`. The search ends sooner when the oracle has located the
        boundary (`oracle.stop_reason` says so; see `min_expected_saving`).
        """
        self._deadline = None if self.max_time is None else time.monotonic() + self.max_time
        try:
            super().search(*args, **kwargs)
        except _TimeUp:
            self.on_search_end()
        finally:
            self._deadline = None

    def save(self):
        """Saves the oracle's and this tuner's state, each file through a temporary name.

        An interruption while saving leaves the previous state whole, never
        an empty or partial JSON file.
        """
        if not self._is_worker():
            self.oracle.save()
        write_json_atomically(self._get_tuner_fname(), self.get_state())

    def reload(self):
        """Reloads the project; an unreadable `oracle.json` is rebuilt from the trial files.

        Each trial's own `trial.json` holds its hyperparameters, status and
        metrics, so completed trials survive a damaged oracle state (one
        emptied by a crash of an older version while it was written).
        """
        try:
            with open(os.path.join(self.project_dir, "oracle.json")) as f:
                json.load(f)
        except (OSError, ValueError):
            pass  # the damaged state handled below
        else:
            super().reload()  # a damaged trial file is an error of its own, not caught here
            return
        try:
            super().reload()
        except ValueError as error:  # json.JSONDecodeError: an empty or partial oracle.json
            warnings.warn(
                f"The search state in {self.project_dir} was unreadable ({error}); rebuilt it "
                f"from the {len(self.oracle.trials)} trial files.",
                UserWarning,
                stacklevel=2,
            )
            _rebuild_oracle_state(self.oracle)

    def pre_create_trial(self):
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise _TimeUp()

    def run_trial(self, trial, *args, **kwargs):
        """Compresses, fine-tunes, strips and measures one trial.

        Args:
            trial: the `keras_tuner.engine.trial.Trial`.

        Returns:
            A dict of metric name to value.

        Raises:
            keras_tuner.errors.FailedTrialError: the scheme builder or
                `scheme.apply` raised, or fine-tuning diverged (NaN loss).
        """
        hp = trial.hyperparameters
        by_lc = self.fine_tune == "lc" and self.fine_tune_epochs > 0
        try:
            scheme = self.scheme(hp)
            # L-C applies the scheme itself, to the dense weights it trains.
            compressed = None if by_lc else scheme.apply(self.model)
        except Exception as e:
            raise kt_errors.FailedTrialError(
                f"Trial {trial.trial_id}: building or applying the scheme for "
                f"{hp.values} failed: {type(e).__name__}: {e}"
            ) from e
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)

        epochs_run = 0
        if by_lc:
            final = self._lc(scheme, trial)
            epochs_run = self.fine_tune_epochs
        elif self.fine_tune_epochs:
            compressed.compile(optimizer=self._make_optimizer(), loss=self._make_loss())
            trainer = compressed
            if self.fine_tune == "distill":
                trainer = Distiller(
                    compressed, self.model, from_logits=self._from_logits, **self.fine_tune_options
                )
                trainer.compile(optimizer=self._make_optimizer(), loss=self._make_loss())
            cbs = scheme_callbacks(scheme)
            fit = dict(batch_size=self.batch_size, verbose=self.verbose, callbacks=cbs)
            history = trainer.fit(self.x_train, self.y_train, epochs=1, **fit)
            _check_finite(history, trial)
            epochs_run = 1
            stop = False
            if self.early_stop_margin is not None and self.fine_tune_epochs > 1:
                accuracy = _accuracy(self._predict(compressed), self.y_val)
                stop = accuracy < self.accuracy_floor - self.early_stop_margin
            if not stop and self.fine_tune_epochs > 1:
                history = trainer.fit(
                    self.x_train, self.y_train, epochs=self.fine_tune_epochs, initial_epoch=1, **fit
                )
                _check_finite(history, trial)
                epochs_run = self.fine_tune_epochs

        if not by_lc:
            # Refuses to shrink away kept int8/int4 QAT quantizers, naming them.
            final = strip(compressed, shrink=self.shrink)
        elif self.shrink:
            final = shrink_model(final)
        outputs = self._predict(final)
        if not np.all(np.isfinite(outputs)):
            raise kt_errors.FailedTrialError(
                f"Trial {trial.trial_id} ({hp.values}): the model's outputs are not finite."
            )
        stats = model_summary(final, print_fn=None)
        metrics = {
            "val_accuracy": _accuracy(outputs, self.y_val),
            "nonzero_params": float(stats.nonzeros),
            "params": float(stats.params),
            "density": float(stats.nonzeros) / max(float(stats.params), 1.0),
            "keras_latency_ms": keras_latency_ms(final, self.x_val, runs=15, warmup=3)["p50_ms"],
            "fine_tune_epochs": float(epochs_run),
        }
        trial_dir = self.get_trial_dir(trial.trial_id)
        final.save(os.path.join(trial_dir, _MODEL_FILE))
        if self.export:
            metrics.update(self._export(final, trial_dir))
        return metrics

    def save_model(self, trial_id, model, step=0):
        """Saves a trial's (stripped) model as `model.keras` in its directory."""
        model.save(os.path.join(self.get_trial_dir(trial_id), _MODEL_FILE))

    def load_model(self, trial):
        """Loads a trial's stripped, fine-tuned model.

        Args:
            trial: a `Trial`.

        Returns:
            A `keras.Model`.

        Raises:
            FileNotFoundError: the trial saved no model (it failed).
        """
        path = os.path.join(self.get_trial_dir(trial.trial_id), _MODEL_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Trial {trial.trial_id} saved no model at {path} (status {trial.status})."
            )
        return keras.saving.load_model(path)

    # ------------------------------------------------------------------
    # Results.

    def best_trial(self):
        """The best trial: the cheapest feasible one, else the closest to feasible.

        Returns:
            A `Trial`.

        Raises:
            RuntimeError: no trial completed.
        """
        completed = [t for t in self.oracle.get_best_trials(1) if t.status == _COMPLETED]
        if not completed:
            raise RuntimeError(
                "No trial has completed yet; run `search()` first (failed trials have no model)."
            )
        return completed[0]

    def best_model(self):
        """The best trial's stripped, fine-tuned model, loaded from its `model.keras`.

        If no trial met the floor, the one closest to it (the oracle warns at
        the end of the search).

        Returns:
            A plain `keras.Model`.
        """
        return self.load_model(self.best_trial())

    def pareto(self):
        """Feasible trials not dominated on (val_accuracy max, objective min).

        Returns:
            A list of `Trial`s, cheapest first.
        """
        return self.oracle.pareto_front()

    def is_feasible(self, trial):
        """Whether a completed trial met the accuracy floor."""
        return trial.status == _COMPLETED and trial_metric(trial, "val_accuracy", math.nan) >= (
            self.accuracy_floor
        )

    def results_summary(self, num_trials=None, print_fn=print):
        """Prints a table of the trials, best first.

        Columns: trial id, status, hyperparameters, val_accuracy, objective,
        feasible. A header gives the dense accuracy and the floor.

        Args:
            num_trials: how many trials to show (all by default).
            print_fn: where the table goes; `None` prints nothing.

        Returns:
            The table as a string.
        """
        trials = self.oracle.get_best_trials(len(self.oracle.trials))
        if num_trials is not None:
            trials = trials[:num_trials]
        name = self.oracle.objective.name
        header = ("trial", "status", "hyperparameters", "val_accuracy", name, "feasible")
        rows = [header]
        for t in trials:
            values = ", ".join(f"{k}={_fmt(v)}" for k, v in t.hyperparameters.values.items())
            rows.append(
                (
                    str(t.trial_id),
                    str(t.status),
                    values,
                    _fmt(trial_metric(t, "val_accuracy", None)),
                    _fmt(trial_metric(t, name, None)),
                    "yes" if self.is_feasible(t) else "no",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [
            f"Compression search: dense val_accuracy {self.dense_accuracy:.4f}, "
            f"floor {self.accuracy_floor:.4f}, "
            f"objective {name} ({self.oracle.objective.direction})",
        ]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    # ------------------------------------------------------------------
    # Helpers.

    def _predict(self, model):
        batch_size = max(self.batch_size, 256)
        return np.asarray(model.predict(self.x_val, batch_size=batch_size, verbose=0))

    def _make_optimizer(self):
        source = self._optimizer
        if source is None:
            source = getattr(self.model, "optimizer", None) if _is_compiled(self.model) else None
        if source is None:
            return keras.optimizers.Adam(1e-3)
        if isinstance(source, keras.optimizers.Optimizer):
            return source.__class__.from_config(source.get_config())
        return keras.optimizers.get(source)

    def _make_loss(self):
        if self._loss is not None:
            return self._loss
        if _is_compiled(self.model):
            return self.model.loss
        return keras.losses.SparseCategoricalCrossentropy(from_logits=self._from_logits)

    def _lc(self, scheme, trial):
        """Compresses the dense model with kc.LC for `fine_tune_epochs`; returns it stripped."""
        try:
            lc = LC(scheme, **self.fine_tune_options)
        except (TypeError, ValueError) as e:
            raise kt_errors.FailedTrialError(
                f"Trial {trial.trial_id}: fine_tune='lc' cannot run this scheme: {e}"
            ) from e
        source = strip(self.model)  # a copy, compiled like the trials
        source.compile(optimizer=self._make_optimizer(), loss=self._make_loss())
        try:
            final = lc.fit(
                source,
                self.x_train,
                self.y_train,
                epochs=self.fine_tune_epochs,
                batch_size=self.batch_size,
                verbose=self.verbose,
                seed=self.seed,
            )
        except (TypeError, ValueError, FloatingPointError) as e:  # does not apply, or diverged
            raise kt_errors.FailedTrialError(
                f"Trial {trial.trial_id}: fine_tune='lc' failed: {type(e).__name__}: {e}"
            ) from e
        return final

    def _fingerprint(self, hp, objective):
        """Digests of what a project's trials depend on: model, data and scheme."""
        model = hashlib.sha256(json.dumps(_config_of(self.model), sort_keys=True).encode())
        for weight in self.model.weights:
            model.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
        data = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_val, self.y_val):
            data.update(f"{array.shape}{array.dtype}".encode())
            data.update(np.ascontiguousarray(array).tobytes())
        try:
            example = repr(self.scheme(hp))
        except Exception as e:  # The defaults may be invalid; the space still says a lot.
            example = type(e).__name__
        setup = {
            "space": hp.get_config(),
            "scheme": example,
            "objective": objective.name,
            "fine_tune": self.fine_tune,
            "fine_tune_epochs": self.fine_tune_epochs,
            "fine_tune_options": self.fine_tune_options,
            "shrink": self.shrink,
            "quantize": self.quantize,
        }
        scheme = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode())
        return {
            "model": model.hexdigest(),
            "data": data.hexdigest(),
            "scheme": scheme.hexdigest(),
            "model_name": self.model.name,
            "params": int(self.model.count_params()),
        }

    def _export(self, model, trial_dir):
        import tflite_export as te  # Lazily: TensorFlow only when exporting.

        representative = self.x_train[:300] if self.quantize == "int8" else None
        path = os.path.join(trial_dir, _TFLITE_FILE)
        result = te.export(
            model, path, quantize=self.quantize, representative_data=representative, sparse=True
        )
        timing = te.benchmark(result.path, num_threads=1)
        return {
            "tflite_bytes": float(result.bytes),
            "tflite_gzip_bytes": float(result.gzip_bytes),
            "litert_latency_ms": float(timing.p50_ms),
        }


def _config_of(model):
    try:
        return json.loads(json.dumps(model.get_config(), default=str))
    except Exception:  # A subclassed model without get_config: its class and weights.
        return {"class": type(model).__qualname__}


def _check_fingerprint(project_dir, fingerprint):
    """Raises unless the project in `project_dir` (if any) was searched for the same inputs."""
    path = os.path.join(project_dir, _FINGERPRINT_FILE)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = {}
    changed = [k for k in ("model", "data", "scheme") if saved.get(k) != fingerprint[k]]
    if changed:
        what = {"model": "another model", "data": "other data", "scheme": "another scheme"}
        other = (
            f" ('{saved.get('model_name')}', {saved.get('params'):,} parameters; this one "
            f"'{fingerprint['model_name']}' has {fingerprint['params']:,})"
            if "model" in changed and saved.get("params") is not None
            else ""
        )
        raise ValueError(
            f"The project in {project_dir} is a search of "
            f"{' and '.join(what[k] for k in changed)}{other}; resuming it would return that "
            "search's models. Pass overwrite=True (--overwrite) to start afresh, or choose "
            "another directory or project_name."
        )


def _rebuild_oracle_state(oracle):
    """Sets `oracle`'s state from its trials (loaded from their files), as a reload would."""
    trials = sorted(oracle.trials.values(), key=lambda t: int(t.trial_id))
    hashes = {t.trial_id: oracle._compute_values_hash(t.hyperparameters.values) for t in trials}
    for trial in trials:
        oracle.hyperparameters.merge(trial.hyperparameters.space)
    state = oracle.get_state()
    state.update(
        ongoing_trials={},
        start_order=[t.trial_id for t in trials],
        end_order=[t.trial_id for t in trials if t.status != "RUNNING"],
        run_times={t.trial_id: 1 for t in trials},
        retry_queue=[t.trial_id for t in trials if t.status == "RUNNING"],
        tried_so_far=sorted(set(hashes.values())),
        id_to_hash=hashes,
    )
    oracle.set_state(state)


def _unpack(name, data):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            f"`{name}` must be a tuple `(x, y)` of arrays. Received: {type(data).__name__}."
        )
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"`{name}` must hold as many samples in x as in y, at least one. "
            f"Received: {len(x)} and {len(y)}."
        )
    check_finite_data(f"`{name}` x", x)
    check_finite_data(f"`{name}` y", y)
    return x, y


def _to_objective(objective):
    if isinstance(objective, str):
        return keras_tuner.Objective(objective, "max" if objective == "val_accuracy" else "min")
    if isinstance(objective, keras_tuner.Objective):
        return objective
    raise ValueError(
        '`objective` must be a metric name (e.g. "tflite_bytes") or a '
        f"`keras_tuner.Objective`. Received: {objective!r}."
    )


def _floor(dense_accuracy, max_accuracy_drop, accuracy_floor):
    if max_accuracy_drop is not None and accuracy_floor is not None:
        raise ValueError(
            "Pass either `max_accuracy_drop` or `accuracy_floor`, not both. Received: "
            f"max_accuracy_drop={max_accuracy_drop}, accuracy_floor={accuracy_floor}."
        )
    if accuracy_floor is None:
        drop = 0.01 if max_accuracy_drop is None else max_accuracy_drop
        if not isinstance(drop, numbers.Real) or not 0 <= drop <= 1:
            raise ValueError(f"`max_accuracy_drop` must be in [0, 1]. Received: {drop!r}.")
        return float(dense_accuracy - drop)
    if not isinstance(accuracy_floor, numbers.Real) or not 0 <= accuracy_floor <= 1:
        raise ValueError(f"`accuracy_floor` must be in [0, 1]. Received: {accuracy_floor!r}.")
    if accuracy_floor > dense_accuracy:
        raise ValueError(
            f"accuracy_floor={accuracy_floor:.4f} is above the dense model's own validation "
            f"accuracy ({dense_accuracy:.4f}): no compressed model is expected to meet it. "
            "Lower the floor, or train the dense model further."
        )
    return float(accuracy_floor)


def _accuracy(outputs, labels):
    """Top-1 accuracy of `outputs` against integer labels or one-hot rows."""
    outputs = np.asarray(outputs)
    labels = np.asarray(labels)
    if outputs.ndim >= 2 and outputs.shape[-1] > 1:
        predicted = outputs.argmax(axis=-1)
        if labels.ndim == outputs.ndim and labels.shape[-1] == outputs.shape[-1]:
            labels = labels.argmax(axis=-1)
    else:  # One output unit: sigmoid probabilities or logits.
        scores = outputs.reshape(len(outputs))
        threshold = 0.5 if np.all((scores >= 0) & (scores <= 1)) else 0.0
        predicted = (scores > threshold).astype(int)
    labels = labels.reshape(predicted.shape)
    return float(np.mean(predicted == labels))


def _looks_like_probabilities(outputs):
    outputs = np.asarray(outputs, dtype="float64")
    if outputs.ndim < 2 or outputs.shape[-1] < 2:
        return bool(np.all((outputs >= 0) & (outputs <= 1)))
    return bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))


def _is_compiled(model):
    return getattr(model, "optimizer", None) is not None and (
        getattr(model, "loss", None) is not None
    )


def _check_finite(history, trial):
    try:
        check_finite_losses(history)
    except FloatingPointError as e:
        raise kt_errors.FailedTrialError(
            f"Trial {trial.trial_id} ({trial.hyperparameters.values}): {e}"
        ) from e


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
