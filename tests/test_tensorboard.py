"""TensorBoard logs, read back with TensorBoard's own reader: density during pruning, trials.

`kc.callbacks(scheme, log_dir=)` writes per-layer density and the schedule's
target sparsity; `CompressionTuner(logdir=)` writes each trial as an HParams
session with its training curves. Both write with the `tensorboard` package
alone, on every backend.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import trained_mlp

import keras_condensa as kc
from keras_condensa.cli import main
from keras_condensa.cli_parser import build_parser
from keras_condensa.search.tensorboard import EXECUTION
from keras_condensa.search.tuner import CompressionTuner
from keras_condensa.tensorboard_logs import CompressionSummaries

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)
from tensorboard.plugins.hparams import api_pb2, metadata  # noqa: E402


def _events(run_dir):
    """TensorBoard's reader over every event file of one run directory."""
    accumulator = EventAccumulator(run_dir, size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _series(events, tag):
    """`[(step, value)]` of a scalar tag."""
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _hparams(events, tag, parse):
    return parse(events.PluginTagToContent(metadata.PLUGIN_NAME)[tag])


@pytest.fixture(scope="module")
def mlp(digits):
    return trained_mlp(digits, epochs=4)


def test_callbacks_log_density_falling_along_polynomial_decay(digits, mlp, tmp_path):
    x_train, y_train, _, _ = digits
    schedule = kc.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=1.0, frequency=4
    )
    scheme = kc.Prune(density=0.2, schedule=schedule)
    pruned = scheme.apply(mlp)
    pruned.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    steps_per_epoch = int(np.ceil(len(x_train) / 64))
    half = steps_per_epoch // 2
    callbacks = kc.callbacks(scheme, log_dir=str(tmp_path / "batches"), update_freq=half)
    # Beside it, the default: once per epoch, from the same schedules.
    callbacks.append(CompressionSummaries(callbacks[0], str(tmp_path / "epochs")))
    pruned.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0, callbacks=callbacks)

    events = _events(str(tmp_path / "batches" / "compression"))
    assert set(events.Tags()["scalars"]) == {
        "density/fc1",
        "density/logits",
        "model/density",
        "target_sparsity/Prune",
    }
    target = _series(events, "target_sparsity/Prune")
    assert [step for step, _ in target] == [half * k for k in range(1, 7)]
    sparsity = [value for _, value in target]
    assert sparsity == sorted(sparsity) and sparsity[0] > 0.0
    assert sparsity[-1] == pytest.approx(0.8, abs=1e-6)
    for tag in ("density/fc1", "density/logits", "model/density"):
        density = [value for _, value in _series(events, tag)]
        assert all(b <= a + 1e-9 for a, b in zip(density, density[1:], strict=False)), tag
        assert density[0] < 1.0 and density[-1] < density[0], tag
    # The target is the schedule's at the last batch (the optimizer's step - 1); the model's
    # density is 1 - the schedule's sparsity at the last mask update (every 4 steps).
    resolved = schedule.resolve(3 * steps_per_epoch)
    for step, value in target:
        assert value == pytest.approx(resolved.sparsity(step - 1), abs=1e-6)
    for step, density in _series(events, "model/density"):
        updated = max(t for t in range(step) if resolved.should_prune(t))
        assert density == pytest.approx(1.0 - resolved.sparsity(updated), abs=0.005)
    by_epoch = _events(str(tmp_path / "epochs" / "compression"))
    for tag in events.Tags()["scalars"]:
        expected = [
            (s, pytest.approx(v)) for s, v in _series(events, tag) if s % steps_per_epoch == 0
        ]
        assert _series(by_epoch, tag) == expected and len(expected) == 3, tag
    # What the log says is what the model holds (the pruned kernels).
    for row in kc.summary(pruned, print_fn=None).rows:
        assert row.masked_nonzeros / row.masked_params == pytest.approx(
            _series(events, f"density/{row.name}")[-1][1], abs=1e-6
        )


def test_callbacks_without_log_dir_write_nothing_and_bad_settings_are_refused(tmp_path):
    scheme = kc.Prune(density=0.5)
    assert [type(c).__name__ for c in kc.callbacks(scheme)] == ["UpdateMasks"]
    with pytest.raises(ValueError, match="update_freq"):
        kc.callbacks(scheme, log_dir=str(tmp_path), update_freq=0)
    assert not os.listdir(tmp_path)


def test_missing_tensorboard_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        kc.callbacks(kc.Prune(density=0.5), log_dir=str(tmp_path))


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="the same subprocess on every backend; the JAX leg runs it",
)
def test_writing_needs_no_tensorflow(tmp_path):
    # A JAX-only machine: TensorFlow cannot be imported, the `tensorboard` package's stub stands in.
    script = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import keras_condensa as kc\n"
        "from keras_condensa.search.tensorboard import TrialLogs\n"
        "from keras_condensa.tensorboard_logs import EventWriter\n"
        "kc.callbacks(kc.Prune(density=0.5), log_dir=sys.argv[1])\n"
        "TrialLogs(sys.argv[1])\n"
        "with EventWriter(sys.argv[1]) as writer:\n"
        "    writer.scalars({'density/fc1': 0.25}, step=7)\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env)
    assert _series(_events(str(tmp_path)), "density/fc1") == [(7, 0.25)]


def test_search_command_takes_a_logdir():
    args = build_parser().parse_args(
        ["search", "m.keras", "--data", "d.npz", "--max-drop", "0.01", "--out", "o"]
        + ["--logdir", "tb"]
    )
    assert args.logdir == "tb"


@pytest.mark.parametrize(
    "where, match",
    [("out/tb", "inside --out"), ("a_file", "is a file")],
)
def test_a_bad_logdir_is_refused_before_any_work(tmp_path, capsys, digits, where, match):
    (tmp_path / "a_file").write_text("")
    keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)]).save(tmp_path / "m.keras")
    x_train, y_train, x_val, y_val = digits
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    argv = ["search", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz")]
    argv += [
        "--max-drop",
        "0.01",
        "--out",
        str(tmp_path / "out"),
        "--logdir",
        str(tmp_path / where),
    ]
    assert main(argv) == 2
    assert match in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["a_file", "d.npz", "m.keras"]  # nothing written


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="a whole search is slow here; the TensorFlow leg covers it (the writer is pure Python)",
)
def test_tuner_writes_each_trial_as_an_hparams_session(digits, mlp, tmp_path):
    x_train, y_train, x_val, y_val = digits
    logdir = tmp_path / "tb"
    tuner = CompressionTuner(
        mlp,
        scheme=lambda hp: kc.Prune(density=hp.Float("density", 0.05, 1.0, sampling="log")),
        train_data=(x_train, y_train),
        validation_data=(x_val, y_val),
        max_accuracy_drop=0.03,
        objective="nonzero_params",
        max_trials=2,
        fine_tune_epochs=2,
        early_stop_margin=None,
        directory=str(tmp_path / "runs"),
        project_name="tb",
        seed=0,
        logdir=str(logdir),
    )
    tuner.search()

    experiment = _hparams(
        _events(str(logdir)), metadata.EXPERIMENT_TAG, metadata.parse_experiment_plugin_data
    )
    assert [h.name for h in experiment.hparam_infos] == ["density"]
    assert experiment.hparam_infos[0].domain_interval.min_value == pytest.approx(0.05)
    listed = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert {("", "val_accuracy"), ("", "nonzero_params"), ("", "feasible")} <= listed
    assert {("train", "epoch_loss"), ("validation", "epoch_accuracy")} <= listed

    trials = tuner.oracle.trials
    assert len(trials) == 2
    for trial_id, trial in trials.items():
        run_dir = str(logdir / trial_id / EXECUTION)
        session = _events(run_dir)
        start = _hparams(
            session,
            metadata.SESSION_START_INFO_TAG,
            metadata.parse_session_start_info_plugin_data,
        )
        assert start.group_name == trial_id
        assert start.hparams["density"].number_value == pytest.approx(
            trial.hyperparameters.get("density")
        )
        end = _hparams(
            session, metadata.SESSION_END_INFO_TAG, metadata.parse_session_end_info_plugin_data
        )
        assert end.status == api_pb2.STATUS_SUCCESS
        for name in ("val_accuracy", "nonzero_params", "coded_bytes", "keras_latency_ms"):
            reported = trial.metrics.get_last_value(name)
            assert _series(session, name) == [(0, pytest.approx(reported, rel=1e-6))], name
        accuracy = trial.metrics.get_last_value("val_accuracy")
        assert _series(session, "feasible")[0][1] == float(accuracy >= tuner.accuracy_floor)
        assert _series(session, "floor_margin")[0][1] == pytest.approx(
            accuracy - tuner.accuracy_floor, abs=1e-6
        )
        # The fine-tuning's curves: one point per epoch, as keras.callbacks.TensorBoard lays out.
        loss = _series(_events(os.path.join(run_dir, "train")), "epoch_loss")
        assert [step for step, _ in loss] == [0, 1] and all(np.isfinite(v) for _, v in loss)
        curve = _series(_events(os.path.join(run_dir, "validation")), "epoch_accuracy")
        assert [step for step, _ in curve] == [0, 1]
        # The last epoch's model is the trial's (stripped: the same predictions).
        assert curve[-1][1] == pytest.approx(accuracy, abs=1e-6)
