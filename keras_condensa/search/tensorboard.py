"""A `CompressionTuner`'s trials in TensorBoard: the HParams dashboard and training curves.

Laid out as Keras Tuner lays out its own tuners' logs
(`Tuner._configure_tensorboard_dir`): each trial is an HParams session in
`logdir/<trial_id>/execution0`, holding its hyperparameter values (the
session's start), its metrics (`val_accuracy` against the floor, the
objective, `feasible`, bytes, latency: every metric the trial reports, as
scalars) and its status (the session's end); its fine-tuning writes
`train/epoch_loss` and `validation/epoch_accuracy` per epoch beside them.
`logdir` itself holds the experiment: the hyperparameters' domains and the
metrics, with the floor and the objective in their descriptions. Written with
`keras_condensa.tensorboard_logs.EventWriter` (the `tensorboard` package, no
TensorFlow), so it works on every backend. View with `tensorboard --logdir
LOGDIR`.
"""

import contextlib
import os
import time
import types

from keras_tuner.engine import hyperparameters as hp_module

from keras_condensa.search.trial_metrics import BASE_METRICS, EXPORT_METRICS
from keras_condensa.tensorboard_logs import EpochScalars, EventWriter, tensorboard_protos
from keras_condensa.workflows.measure import model_accuracy

#: Where a trial's session lives under `logdir` (Keras Tuner's single execution).
EXECUTION = "execution0"
#: Metrics every session adds to the trial's own: the reading meets the floor (1 or 0),
#: and by how much (`val_accuracy - floor`).
DERIVED_METRICS = ("feasible", "floor_margin")


def _hparams_api():
    """The `tensorboard` HParams modules, imported when first used (no TensorFlow)."""
    tensorboard_protos()  # the clear ImportError when `tensorboard` is missing
    from tensorboard.plugins.hparams import (  # noqa: PLC0415 - optional dependency
        api_pb2,
        metadata,
        plugin_data_pb2,
        summary_v2,
    )

    return types.SimpleNamespace(
        api_pb2=api_pb2, metadata=metadata, plugin_data_pb2=plugin_data_pb2, summary_v2=summary_v2
    )


def _domain(hp, summary_v2):
    """The HParams domain of a Keras Tuner hyperparameter (as Keras Tuner's own logs give it)."""
    if isinstance(hp, hp_module.Choice):
        return summary_v2.Discrete(list(hp.values))
    if isinstance(hp, hp_module.Boolean):
        return summary_v2.Discrete([True, False])
    if isinstance(hp, hp_module.Fixed):
        return summary_v2.Discrete([hp.value])
    if isinstance(hp, hp_module.Int):
        return summary_v2.IntInterval(int(hp.min_value), int(hp.max_value))
    return summary_v2.RealInterval(float(hp.min_value), float(hp.max_value))


class TrialLogs:
    """Writes a `CompressionTuner`'s trials to TensorBoard under `logdir` (see the module).

    Args:
        logdir: the TensorBoard log directory (local).

    Raises:
        ImportError: the `tensorboard` package is missing (`pip install tensorboard`).
    """

    def __init__(self, logdir):
        self._api = _hparams_api()
        self.logdir = str(logdir)
        self._experiment_written = False

    def _metrics(self, tuner):
        """The experiment's `Metric`s, described (floor, objective)."""
        summary_v2 = self._api.summary_v2
        objective = tuner.oracle.objective
        described = {
            "val_accuracy": f"validation accuracy; the constraint: at least the floor "
            f"{tuner.accuracy_floor:.4f} (dense {tuner.dense_accuracy:.4f})",
            "feasible": "1 when val_accuracy meets the floor, else 0",
            "floor_margin": "val_accuracy minus the floor",
            objective.name: f"the objective ({objective.direction}imised)",
        }
        names = BASE_METRICS + (EXPORT_METRICS if tuner.export else ()) + DERIVED_METRICS
        metrics = [summary_v2.Metric(name, description=described.get(name)) for name in names]
        metrics.append(
            summary_v2.Metric(
                "epoch_loss",
                group="train",
                dataset_type=summary_v2.Metric.TRAINING,
                description="fine-tuning loss per epoch",
            )
        )
        metrics.append(
            summary_v2.Metric(
                "epoch_accuracy",
                group="validation",
                dataset_type=summary_v2.Metric.VALIDATION,
                description="validation accuracy after each fine-tuning epoch",
            )
        )
        return metrics

    def _write_experiment(self, tuner):
        summary_v2 = self._api.summary_v2
        hparams = [
            summary_v2.HParam(hp.name, _domain(hp, summary_v2))
            for hp in tuner.oracle.get_space().space
        ]
        with EventWriter(self.logdir) as writer:
            writer.summary(summary_v2.hparams_config_pb(hparams, self._metrics(tuner)))
        self._experiment_written = True

    def _session_end(self, status):
        metadata, plugin_data_pb2 = self._api.metadata, self._api.plugin_data_pb2
        summary = tensorboard_protos()[1].Summary()
        data = plugin_data_pb2.HParamsPluginData(
            session_end_info=plugin_data_pb2.SessionEndInfo(
                status=status, end_time_secs=time.time()
            )
        )
        summary.value.add(
            tag=metadata.SESSION_END_INFO_TAG,
            metadata=metadata.create_summary_metadata(data),
            tensor=metadata.NULL_TENSOR,
        )
        return summary

    @contextlib.contextmanager
    def session(self, tuner, trial):
        """The trial's HParams session, open while the trial runs.

        Writes the session's start (the trial's hyperparameter values) on
        entry and its end on exit: `STATUS_SUCCESS`, or `STATUS_FAILURE` when
        the trial raises (the exception goes on).

        Args:
            tuner: the `CompressionTuner`.
            trial: the `Trial`.

        Yields:
            A `TrialSession`: `callbacks` for the trial's fine-tuning,
            `report(metrics)` for its metrics.
        """
        api_pb2, summary_v2 = self._api.api_pb2, self._api.summary_v2
        if not self._experiment_written:
            self._write_experiment(tuner)
        run_dir = os.path.join(self.logdir, str(trial.trial_id), EXECUTION)
        with EventWriter(run_dir) as writer:
            values = dict(trial.hyperparameters.values)
            writer.summary(summary_v2.hparams_pb(values, trial_id=str(trial.trial_id)))
            writer.flush()
            try:
                yield TrialSession(writer, run_dir, tuner)
            except BaseException:
                writer.summary(self._session_end(api_pb2.STATUS_FAILURE))
                raise
            writer.summary(self._session_end(api_pb2.STATUS_SUCCESS))


class TrialSession:
    """One trial's session: the callbacks for its fine-tuning and the writing of its metrics.

    Attributes:
        callbacks: `[TrialCurves]` for the trial's `fine_tune`.
    """

    def __init__(self, writer, run_dir, tuner):
        self._writer = writer
        self._floor = tuner.accuracy_floor
        self.callbacks = [TrialCurves(run_dir, tuner.x_val, tuner.y_val, tuner.batch_size)]

    def report(self, metrics):
        """Writes the trial's metrics, `feasible` and `floor_margin` as the session's scalars."""
        accuracy = metrics["val_accuracy"]
        values = dict(metrics, feasible=float(accuracy >= self._floor))
        values["floor_margin"] = accuracy - self._floor
        self._writer.scalars(values, step=0)
        self._writer.flush()


class TrialCurves(EpochScalars):
    """`EpochScalars` plus the validation accuracy after each epoch (fine-tuning has no
    validation data of its own): `train/epoch_loss`, `validation/epoch_accuracy`."""

    def __init__(self, run_dir, x_val, y_val, batch_size):
        super().__init__(run_dir)
        self._validation = (x_val, y_val, batch_size)

    def on_epoch_end(self, epoch, logs=None):
        x_val, y_val, batch_size = self._validation
        accuracy = model_accuracy(self.model, x_val, y_val, batch_size)
        super().on_epoch_end(epoch, {**(logs or {}), "val_accuracy": accuracy})
