"""`CompressionTuner`: the cheapest compression of a model that keeps its accuracy.

A real `keras_tuner.Tuner`: Keras Tuner owns the search loop, the trial
directories, resumption (same `directory` and `project_name`,
`overwrite=False`) and distributed tuning (chief and workers through the
`KERASTUNER_*` environment variables). This class only says what one trial
is: build a compression scheme from the trial's hyperparameters, then the
shared workflows (`keras_condensa.workflows`) compress, fine-tune, strip,
measure and export it.
"""

import json
import os
import time
import warnings

import keras
import keras_tuner
from keras_tuner import errors as kt_errors

from keras_condensa.bench import device_name
from keras_condensa.files import save_model_atomically, write_json_atomically
from keras_condensa.outputs import looks_like_probabilities
from keras_condensa.search import project, results, tensorboard, trial_metrics
from keras_condensa.search.arguments import check_arguments, floor, to_objective, unpack
from keras_condensa.search.confidence import DEFAULT_CONFIDENCE, check_confidence
from keras_condensa.search.constraint import Constraint
from keras_condensa.search.evidence import Evidence, replicate_seed
from keras_condensa.search.oracle import ConstrainedBayesianOracle
from keras_condensa.search.trial_metrics import BASE_METRICS, EXPORT_METRICS, MODEL_FILE
from keras_condensa.workflows.fine_tune import SchemeError, check_method, fine_tune
from keras_condensa.workflows.measure import accuracy, correct, predict
from keras_condensa.workflows.synthetic import synthetic_splits


class _TimeUp(Exception):
    """Raised before creating a trial once `max_time` has passed."""


class CompressionTuner(results.TunerResults, keras_tuner.Tuner):
    """Searches a compression scheme's hyperparameters under an accuracy floor.

    The dense model is evaluated first, in the constructor: its validation
    accuracy minus `max_accuracy_drop` (or `accuracy_floor` itself) is the
    floor. An oracle (by default a `ConstrainedBayesianOracle`) then
    minimises `objective` subject to `val_accuracy >= floor`. Each trial
    builds the scheme from its hyperparameters and runs the shared
    fine-tune workflow (`keras_condensa.workflows.fine_tune`) on a copy of
    `model` (the original is never modified): apply, fine-tune for
    `fine_tune_epochs`, strip (with `shrink=True`, also remove the channels
    structured pruning zeroed). It evaluates the result and saves it as
    `model.keras` in the trial's directory (and, when the objective needs it,
    `model.tflite`).

    Metrics every trial reports: `val_accuracy` (top-1 on `validation_data`,
    from predictions), `val_accuracy_std` (its standard error on that many
    samples: paired with the dense model's for a relative floor, see
    `workflows.measure.accuracy_error`; the oracle adds it to the noise),
    `nonzero_params`, `params`, `density` (nonzeros / params),
    `keras_latency_ms` (median batch-1 `model(x)` time), `coded_bytes` (the
    size of its `kc.codec` file), `flops` (`kc.flops`: per sample; with
    `shrink=True` the removed channels no longer count), `fine_tune_epochs` (epochs run: fewer
    after an early stop). When the
    objective is `tflite_bytes`, `tflite_gzip_bytes` or `litert_latency_ms`
    (or `export=True`), the trial also exports with `tflite_export` and
    reports all three.

    Fine-tuning uses a fresh copy of `model`'s compiled optimizer and its
    loss; an uncompiled `model` gets `keras.optimizers.Adam(1e-3)` and sparse
    categorical cross-entropy, `from_logits` judged from the dense outputs.
    `optimizer=` and `loss=` override both.

    Args:
        model: the trained dense `keras.Model`.
        scheme: a callable taking a `keras_tuner.HyperParameters` and
            returning a `kc` operator or `kc.Compose`, e.g.
            `lambda hp: kc.Prune(density=hp.Float("density", 0.01, 1.0,
            sampling="log"))`. Called once in the constructor to declare the
            space (an exception then is ignored) and once per trial (an
            exception fails that trial only). Any hyperparameters work:
            per-layer densities, bit-widths.
        train_data: `(x, y)` for fine-tuning (`None` with `data_free`).
        validation_data: `(x, y)` for the accuracy (integer labels or one-hot);
            with `data_free`, `None` measures agreement with the dense model
            on synthetic inputs instead.
        max_accuracy_drop: the floor is the dense accuracy minus this
            (default 0.01 when `accuracy_floor` is not given).
        accuracy_floor: an absolute floor instead of `max_accuracy_drop`.
        objective: the cost to minimise: a reported metric name or a
            `keras_tuner.Objective`. Defaults to `"tflite_bytes"`, or to the
            objective of `oracle`.
        max_trials: number of trials, a positive int (ignored with `oracle`).
        fine_tune_epochs: epochs of fine-tuning per trial (0 for none).
        fine_tune: `"mask"` (the default), `"lc"` (Condensa's L-C optimizer,
            `kc.LC(scheme, **fine_tune_options)`; schemes without a schedule)
            or `"distill"` (through `kc.distill`, the dense model teaching;
            the default with `data_free`).
        fine_tune_options: keyword arguments of `kc.LC` (`steps`, `mu_init`,
            `mu_multiplier`, `mu_cap`, `lr_end`) or `kc.distill`
            (`temperature`, `alpha`).
        shrink: remove each trial's pruned channels (`kc.shrink`) before it
            is measured and saved (`model` must be Sequential or functional).
        batch_size: batch size of fine-tuning and prediction.
        early_stop_margin: after the first epoch, a trial more than this below
            the floor stops fine-tuning and reports as it is; `None` disables.
        max_time: optional wall-clock budget of `search()` in seconds.
        export: whether trials export a LiteRT file; `None` (default) exports
            when the objective is a LiteRT metric.
        quantize: `quantize=` of `tflite_export.export`; int8 calibrates on up
            to 300 training samples, unless the trial's model carries its own
            activation ranges (integer `kc.Quantize` fine-tuning).
        optimizer: optional optimizer (an instance is copied per trial).
        loss: optional loss overriding the model's.
        num_initial_points, min_expected_saving, max_consecutive_failed_trials:
            passed to the `ConstrainedBayesianOracle` (`min_expected_saving`:
            end once another trial is expected to save less than this share).
        seed: optional int, seeds the oracle and each trial's fine-tuning
            (`seed + k` for the k-th repeat of earlier values).
        directory: the tuner's directory (Keras Tuner's `directory`).
        project_name: the project's name; with `overwrite=False` an existing
            project of the same inputs is resumed.
        overwrite: start afresh, deleting an existing project.
        verbose: 0 (silent) or 1 (Keras Tuner's progress and fit logs).
        oracle: optional `keras_tuner.Oracle` used instead of the
            `ConstrainedBayesianOracle` the tuner builds (e.g.
            `keras_tuner.oracles.RandomSearchOracle`); the scheme's
            hyperparameters are added to its space, its objective and
            `max_trials` rule, and `best_trial`, `pareto` and `is_feasible`
            still apply the floor.
        confidence: how sure, in `[0.5, 1)`, the search must be that its
            answer meets the floor (default 0.8): `best_trial()` is the
            cheapest trial whose estimated accuracy (`feasibility()`, from
            all readings and the measured noise) meets the floor with this
            probability. With a `ConstrainedBayesianOracle` as `oracle`, the
            oracle's own `confidence` and `noise` apply.
        noise: optional known standard deviation of one `val_accuracy`
            reading; by default measured from replicates (trials that repeat
            earlier values fine-tune with another seed: `replicate_seed`).
        test_data: optional `(x, y)` never used by the search:
            `held_out_check()` evaluates the returned model on it.
        data_free: fine-tune without the training data: `True`, a
            `kc.data_free.synthesize` method name or a dict of its arguments.
            Trials train (and int8 calibrates) on inputs synthesized from the
            model (`workflows.synthetic.synthetic_splits`, seeded by `seed`),
            labelled by the dense model; `train_data` is ignored.
        recalibrate_batchnorm: re-estimate each trial's BatchNorm statistics
            on `train_data` (`kc.recalibrate_batchnorm`); default: unless
            `data_free` (synthetic inputs would skew them).
        logdir: optional TensorBoard log directory: each trial becomes a
            session of the HParams dashboard (its hyperparameters, metrics,
            `feasible` and status) with its fine-tuning's
            `train/epoch_loss` and `validation/epoch_accuracy` (`"mask"` and
            `"distill"`; L-C trains in its own loop), laid out as
            Keras Tuner lays out its own logs (`logdir/<trial_id>/execution0`;
            see `search.tensorboard`). Needs the `tensorboard` package, not
            TensorFlow.

    Raises:
        ValueError: `max_trials < 1`, both or invalid floors, a floor above
            the dense model's accuracy, an objective no trial reports, a
            `confidence` outside `[0.5, 1)`, a `noise` not positive, or bad
            data.
        ImportError: `logdir` without the `tensorboard` package.
        TypeError: `scheme` is not callable, `oracle` is not an `Oracle`.

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
        objective=None,
        max_trials=10,
        fine_tune_epochs=1,
        fine_tune=None,
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
        oracle=None,
        confidence=DEFAULT_CONFIDENCE,
        noise=None,
        test_data=None,
        data_free=False,
        recalibrate_batchnorm=None,
        logdir=None,
    ):
        if data_free:  # Synthetic training data, labelled by the dense model.
            train_data, validation_data = synthetic_splits(model, validation_data, data_free, seed)
        fine_tune = fine_tune or ("distill" if data_free else "mask")
        self.recalibrate = not data_free if recalibrate_batchnorm is None else recalibrate_batchnorm
        check_arguments(model, scheme, oracle, max_trials, fine_tune_epochs, max_time, shrink)
        if isinstance(oracle, ConstrainedBayesianOracle):
            confidence, noise = oracle.confidence, oracle.noise
        check_confidence(confidence, noise)
        self.confidence, self.noise = float(confidence), noise
        self.model = model
        self.scheme = scheme
        self.shrink = shrink
        self.x_train, self.y_train = unpack("train_data", train_data)
        self.x_val, self.y_val = unpack("validation_data", validation_data)
        self.x_test, self.y_test = None, None
        if test_data is not None:  # Never seen by the search: `held_out_check()`.
            self.x_test, self.y_test = unpack("test_data", test_data)
        # Before any trial: every trial would fail the same way.
        self.fine_tune_options = check_method(fine_tune, fine_tune_options)
        self.fine_tune_epochs = int(fine_tune_epochs)
        self.fine_tune = fine_tune
        self.batch_size = batch_size
        self.early_stop_margin = early_stop_margin
        self.max_time = max_time
        self.quantize = quantize
        self.seed = seed
        self.verbose = verbose
        self._optimizer = optimizer
        self._loss = loss
        self.logdir = logdir
        self.device = device_name()  # where `keras_latency_ms` is timed
        self._logs = None if logdir is None else tensorboard.TrialLogs(logdir)

        objective = to_objective(objective, oracle)
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
        self.dense_accuracy = accuracy(dense_outputs, self.y_val)
        self.accuracy_floor = floor(self.dense_accuracy, max_accuracy_drop, accuracy_floor)
        # The drop a relative floor allows (None for an absolute floor): `held_out_check`.
        self.max_accuracy_drop = None
        if accuracy_floor is None:
            self.max_accuracy_drop = 0.01 if max_accuracy_drop is None else max_accuracy_drop
        bound = Constraint("val_accuracy", min_value=self.accuracy_floor)
        self._evidence = Evidence(bound, self.confidence, noise, seed)
        self._dense_right = correct(dense_outputs, self.y_val)
        self._from_logits = not looks_like_probabilities(dense_outputs)

        hp = keras_tuner.HyperParameters()
        try:
            scheme(hp)
        except Exception:  # The defaults may be invalid; the space is declared.
            pass
        if oracle is None:
            oracle = ConstrainedBayesianOracle(
                objective=objective,
                constraint=bound,
                hyperparameters=hp,
                max_trials=int(max_trials),
                num_initial_points=num_initial_points,
                min_expected_saving=min_expected_saving,
                seed=seed,
                max_consecutive_failed_trials=max_consecutive_failed_trials,
                confidence=confidence,
                noise=noise,
            )
            oracle.verbose = verbose
        else:
            oracle.update_space(hp)
            if hasattr(oracle, "bind"):  # e.g. GeneticChannelOracle: model, data, floor
                oracle.bind(self)
        fingerprint = project.tuner_fingerprint(self, hp, objective)
        project_dir = os.path.join(str(directory or "."), project_name or "untitled_project")
        if not overwrite:
            project.check_fingerprint(project_dir, fingerprint)
        super().__init__(
            oracle=oracle,
            hypermodel=None,
            directory=directory,
            project_name=project_name,
            overwrite=overwrite,
        )
        path = os.path.join(self.project_dir, project.FINGERPRINT_FILE)
        if overwrite or not os.path.exists(path):
            write_json_atomically(path, fingerprint)
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
        metrics, so completed trials survive a damaged oracle state.
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
            project.rebuild_oracle_state(self.oracle)

    def pre_create_trial(self):
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise _TimeUp()

    def run_trial(self, trial, *args, **kwargs):
        """Compresses, fine-tunes, strips and measures one trial.

        With `logdir`, the trial is also written to TensorBoard (its HParams
        session and fine-tuning curves, `search.tensorboard`).

        Args:
            trial: the `keras_tuner.engine.trial.Trial`.

        Returns:
            A dict of metric name to value.

        Raises:
            keras_tuner.errors.FailedTrialError: the scheme builder raised,
                the scheme does not apply (or the method cannot run it), or
                fine-tuning diverged (NaN loss or outputs).
        """
        if self._logs is None:
            return self._compress(trial)
        with self._logs.session(self, trial) as log:
            metrics = self._compress(trial, log.callbacks)
            log.report(metrics)
        return metrics

    def _compress(self, trial, callbacks=None):
        """`run_trial`'s work; `callbacks` join the fine-tuning's."""
        hp = trial.hyperparameters
        what = f"Trial {trial.trial_id} ({hp.values})"
        try:
            scheme = self.scheme(hp)
        except Exception as e:
            raise kt_errors.FailedTrialError(
                f"{what}: building the scheme failed: {type(e).__name__}: {e}"
            ) from e
        early_stop = None
        if self.early_stop_margin is not None:
            early_stop = (self.x_val, self.y_val, self.accuracy_floor - self.early_stop_margin)
        try:
            tuned = fine_tune(
                self.model,
                scheme,
                self.x_train,
                self.y_train,
                method=self.fine_tune,
                epochs=self.fine_tune_epochs,
                options=self.fine_tune_options,
                batch_size=self.batch_size,
                optimizer=self._optimizer,
                loss=self._loss,
                from_logits=self._from_logits,
                shrink=self.shrink,
                recalibrate=self.recalibrate,
                early_stop=early_stop,
                seed=replicate_seed(self.seed, trial, getattr(self.oracle, "trials", None)),
                verbose=self.verbose,
                callbacks=callbacks,
            )
        except (SchemeError, FloatingPointError) as e:
            raise kt_errors.FailedTrialError(f"{what}: {type(e).__name__}: {e}") from e
        return trial_metrics.measure(self, trial, tuned)

    def save_model(self, trial_id, model, step=0):
        """Saves a trial's (stripped) model as `model.keras` in its directory."""
        save_model_atomically(model, os.path.join(self.get_trial_dir(trial_id), MODEL_FILE))

    def load_model(self, trial):
        """Loads a trial's stripped, fine-tuned model.

        Args:
            trial: a `Trial`.

        Returns:
            A `keras.Model`.

        Raises:
            FileNotFoundError: the trial saved no model (it failed).
        """
        path = os.path.join(self.get_trial_dir(trial.trial_id), MODEL_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Trial {trial.trial_id} saved no model at {path} (status {trial.status})."
            )
        return keras.saving.load_model(path)

    # ------------------------------------------------------------------
    # Helpers.

    def _predict(self, model):
        return predict(model, self.x_val, self.batch_size)
