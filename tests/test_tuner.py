"""CompressionTuner: end-to-end searches on scikit-learn's digits (tiny model, few trials)."""

import os

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import trained_mlp

import keras_condensa as kc
from keras_condensa.bench import device_name
from keras_condensa.search.evidence import replicate_seed
from keras_condensa.search.run import trial_rows
from keras_condensa.search.tuner import CompressionTuner


def _density_scheme(hp):
    return kc.Prune(density=hp.Float("density", 0.01, 1.0, sampling="log"))


@pytest.fixture(scope="module")
def dense(digits):
    """A trained 64-32-10 model (logits), compiled, and its data."""
    x_train, y_train, x_val, y_val = digits
    return trained_mlp(digits, epochs=12), (x_train, y_train), (x_val, y_val)


def _tuner(dense, tmp_path, **kwargs):
    model, train, val = dense
    args = dict(
        scheme=_density_scheme,
        train_data=train,
        validation_data=val,
        max_accuracy_drop=0.03,
        objective="nonzero_params",
        max_trials=3,
        fine_tune_epochs=1,
        directory=str(tmp_path),
        project_name="digits",
        seed=0,
    )
    args.update(kwargs)
    return CompressionTuner(model, **args)


def _statuses(tuner):
    return [t.status for _, t in sorted(tuner.oracle.trials.items())]


def test_search_finds_feasible_sparse_model(dense, tmp_path):
    model, _, (x_val, y_val) = dense
    before = [w.copy() for w in model.get_weights()]
    tuner = _tuner(dense, tmp_path)
    assert tuner.dense_accuracy > 0.9
    assert tuner.accuracy_floor == pytest.approx(tuner.dense_accuracy - 0.03)
    tuner.search()

    assert _statuses(tuner) == ["COMPLETED"] * 3
    best = tuner.best_trial()
    accuracy = best.metrics.get_last_value("val_accuracy")
    assert accuracy >= tuner.accuracy_floor
    for name in ("nonzero_params", "params", "density", "keras_latency_ms"):
        assert best.metrics.exists(name)
    assert best.metrics.get_last_value("density") < 1.0
    # Each trial records the device its Keras latency was timed on.
    rows = trial_rows(tuner)
    assert tuner.device == device_name() and tuner.device.startswith("CPU (")
    assert [row["keras_device"] for row in rows] == [tuner.device] * 3

    final = tuner.best_model()
    assert not any(isinstance(layer, kc.CompressionWrapper) for layer in final.layers)
    predicted = np.argmax(final.predict(x_val, verbose=0), axis=-1)
    assert np.mean(predicted == y_val) == pytest.approx(accuracy)
    assert kc.summary(final, print_fn=None).nonzeros == best.metrics.get_last_value(
        "nonzero_params"
    )
    # The user's model is never modified.
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    front = tuner.pareto()
    costs = [t.score for t in front]
    assert front and costs == sorted(costs)
    # The answer: the cheapest trial feasible with confidence, if there is one;
    # else the cheapest whose reading met the floor (the front's first).
    done = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    sure = [t for t in done if tuner.feasibility(t).confident(tuner.confidence)]
    expected = min(sure, key=lambda t: t.score) if sure else front[0]
    assert best.trial_id == expected.trial_id
    assert best.metrics.get_last_value("val_accuracy_std") > 0
    text = tuner.results_summary(print_fn=None)
    assert "val_accuracy" in text and "nonzero_params" in text and best.trial_id in text


def test_tflite_bytes_match_exported_file(dense, tmp_path):
    try:
        import tflite_export
    except ImportError as e:
        pytest.skip(f"tflite_export is not importable yet: {e}")
    if not hasattr(tflite_export, "export"):
        pytest.skip(
            "`import tflite_export` found a namespace package without `export` (a stale "
            "editable install; reinstall with `pip install -e .` or run `python -m pytest`)"
        )
    tuner = _tuner(dense, tmp_path, objective="tflite_bytes", max_trials=2, fine_tune_epochs=0)
    tuner.search()
    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    assert len(completed) == 2
    for trial in completed:
        path = os.path.join(tuner.get_trial_dir(trial.trial_id), "model.tflite")
        assert trial.metrics.get_last_value("tflite_bytes") == os.path.getsize(path)
        assert 0 < trial.metrics.get_last_value("tflite_gzip_bytes")
        assert trial.metrics.get_last_value("litert_latency_ms") > 0


def test_resumption_keeps_completed_trials(dense, tmp_path):
    first = _tuner(dense, tmp_path, max_trials=2, fine_tune_epochs=0)
    first.search()
    done = {tid: t.hyperparameters.values for tid, t in first.oracle.trials.items()}
    assert len(done) == 2

    second = _tuner(dense, tmp_path, max_trials=3, fine_tune_epochs=0)
    assert len(second.oracle.trials) == 2
    ran = []
    original = second.run_trial

    def counting(trial, *args, **kwargs):
        ran.append(trial.trial_id)
        return original(trial, *args, **kwargs)

    second.run_trial = counting
    second.search()
    assert len(ran) == 1 and ran[0] not in done
    assert len(second.oracle.trials) == 3
    for tid, values in done.items():
        assert second.oracle.trials[tid].hyperparameters.values == values
    assert _statuses(second) == ["COMPLETED"] * 3


def test_floor_above_dense_accuracy_is_an_error(dense, tmp_path):
    with pytest.raises(ValueError, match=r"accuracy_floor=1\.0000.*\(0\.\d{4}\)"):
        _tuner(dense, tmp_path, max_accuracy_drop=None, accuracy_floor=1.0)
    assert not os.path.exists(tmp_path / "digits")


@pytest.mark.filterwarnings("ignore:No trial met the constraint")
def test_failing_scheme_builder_fails_its_trial_only(dense, tmp_path):
    def scheme(hp):
        density = hp.Float("density", 0.01, 1.0, sampling="log")
        if abs(density - 0.1) < 1e-6:  # The oracle's first trial: the log range's middle.
            raise ValueError(f"density {density} is too high for this test")
        return kc.Prune(density=density)

    tuner = _tuner(dense, tmp_path, scheme=scheme, fine_tune_epochs=0)
    tuner.search()
    statuses = _statuses(tuner)
    assert len(statuses) == 3
    assert statuses[0] == "FAILED" and "COMPLETED" in statuses
    for trial in tuner.oracle.trials.values():
        if trial.status == "FAILED":
            assert "too high for this test" in trial.message
    assert tuner.best_trial().status == "COMPLETED"


def test_argument_errors(dense, tmp_path):
    with pytest.raises(ValueError, match="max_trials"):
        _tuner(dense, tmp_path, max_trials=0)
    with pytest.raises(ValueError, match="nonzero_params"):
        _tuner(dense, tmp_path, objective="joules")
    with pytest.raises(ValueError, match="not both"):
        _tuner(dense, tmp_path, accuracy_floor=0.5)
    with pytest.raises(TypeError, match="callable"):
        _tuner(dense, tmp_path, scheme=kc.Prune(density=0.5))
    assert isinstance(
        _tuner(dense, tmp_path, objective=keras_tuner.Objective("density", "min")).oracle,
        kc.search.ConstrainedBayesianOracle,
    )


def _single_density(value):
    return lambda hp: kc.Prune(density=hp.Choice("density", [value]))


def test_early_stop_reports_infeasible_trial(dense, tmp_path):
    tuner = _tuner(
        dense, tmp_path, scheme=_single_density(0.01), max_trials=1, fine_tune_epochs=3,
        max_accuracy_drop=0.0, early_stop_margin=0.0,
    )
    with pytest.warns(UserWarning, match="No trial met the constraint"):
        tuner.search()
    (trial,) = tuner.oracle.trials.values()
    assert trial.status == "COMPLETED"
    assert trial.metrics.get_last_value("fine_tune_epochs") == 1
    assert trial.metrics.get_last_value("val_accuracy") < tuner.accuracy_floor
    assert not tuner.pareto()
    assert tuner.best_trial().trial_id == trial.trial_id  # The closest to feasible.


def test_a_rate_weight_that_collapses_the_model_is_an_infeasible_trial(dense, tmp_path):
    def collapsing(hp):
        rate = hp.Float("rate_weight", 1e6, 1e7, sampling="log")
        return kc.EntropyCoded(rate_weight=rate, init_step=4.0)  # a coarse grid: it collapses

    tuner = _tuner(
        dense, tmp_path, scheme=collapsing, objective="coded_bytes", max_trials=1,
        max_accuracy_drop=0.05,
    )
    with pytest.warns(UserWarning, match="No trial met the constraint"):
        tuner.search()
    (trial,) = tuner.oracle.trials.values()
    assert trial.status == "COMPLETED"  # recorded, not crashed
    assert trial.metrics.get_last_value("val_accuracy") < tuner.accuracy_floor
    assert 0 < trial.metrics.get_last_value("coded_bytes") < kc.codec.coded_bytes(dense[0])
    assert not tuner.pareto()


def test_nan_loss_fails_the_trial(dense, tmp_path):
    tuner = _tuner(
        dense, tmp_path, scheme=_single_density(0.5), max_trials=1,
        optimizer=keras.optimizers.SGD(1e30),
    )
    tuner.search()
    (trial,) = tuner.oracle.trials.values()
    assert trial.status == "FAILED"
    assert "not finite" in trial.message or "diverged" in trial.message


def test_max_time_stops_new_trials(dense, tmp_path):
    tuner = _tuner(dense, tmp_path, max_time=1e-9)
    tuner.search()
    assert not tuner.oracle.trials


@pytest.mark.parametrize(
    "fine_tune, options",
    [("lc", {"steps": 6, "mu_init": 0.05, "lr_end": 3e-3}), ("distill", {"alpha": 0.5})],
)
def test_fine_tune_lc_and_distill_trials_report_their_compressed_models(
    dense, tmp_path, fine_tune, options
):
    model, _, (x_val, y_val) = dense
    before = [w.copy() for w in model.get_weights()]
    tuner = _tuner(
        dense,
        tmp_path,
        scheme=_single_density(0.3),
        max_trials=1,
        fine_tune_epochs=3,
        fine_tune=fine_tune,
        fine_tune_options=options,
    )
    tuner.search()
    assert _statuses(tuner) == ["COMPLETED"]
    trial = tuner.best_trial()
    assert trial.metrics.get_last_value("fine_tune_epochs") == 3
    final = tuner.best_model()
    kernels = [np.asarray(keras.ops.convert_to_numpy(layer.kernel)) for layer in final.layers]
    density = sum(np.count_nonzero(k) for k in kernels) / sum(k.size for k in kernels)
    assert density == pytest.approx(0.3, abs=0.01)
    accuracy = float(np.mean(np.argmax(final.predict(x_val, verbose=0), -1) == y_val))
    assert accuracy == pytest.approx(trial.metrics.get_last_value("val_accuracy"))
    assert accuracy > tuner.dense_accuracy - 0.05
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fine_tune_argument_errors(dense, tmp_path):
    with pytest.raises(ValueError, match=r"`fine_tune` must be one of .*Received: fine_tune='qat'"):
        _tuner(dense, tmp_path, fine_tune="qat")
    with pytest.raises(ValueError, match=r"fine_tune='distill' takes .*unknown keys: \['steps'\]"):
        _tuner(dense, tmp_path, fine_tune="distill", fine_tune_options={"steps": 3})
    # Bad L-C numbers are refused before any trial runs (each trial would fail the same way).
    with pytest.raises(ValueError, match=r"mu_init must be a finite number > 0. Received: mu_init"):
        _tuner(dense, tmp_path, fine_tune="lc", fine_tune_options={"mu_init": -1})
    assert not os.path.exists(os.path.join(tmp_path, "digits"))


def test_fine_tune_lc_fails_a_trial_whose_scheme_it_cannot_project(dense, tmp_path):
    scheduled = lambda hp: kc.Prune(  # noqa: E731
        density=hp.Choice("density", [0.5]), schedule=kc.PolynomialDecay(end_step=1.0)
    )
    tuner = _tuner(
        dense, tmp_path, scheme=scheduled, max_trials=1, fine_tune="lc",
        max_consecutive_failed_trials=1,
    )
    with pytest.raises(Exception, match="Prune with a schedule"):
        tuner.search()
    assert _statuses(tuner) == ["FAILED"]


def test_shrink_measures_and_saves_the_model_without_its_pruned_neurons(dense, tmp_path):
    def neurons(hp):
        return kc.NeuronPrune(density=hp.Float("density", 0.25, 1.0, sampling="log"))

    tuner = _tuner(dense, tmp_path, scheme=neurons, objective="params", shrink=True)
    tuner.search()
    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    assert len(completed) == 3
    for trial in completed:
        saved = tuner.load_model(trial)
        units = saved.get_layer("fc1").units
        # The reported parameters are the saved model's: pruned neurons are gone.
        assert trial.metrics.get_last_value("params") == saved.count_params()
        expected = round(trial.hyperparameters.get("density") * 32)
        assert abs(units - expected) <= 1
    best = tuner.best_model()
    assert best.get_layer("fc1").units < 32
    assert best.get_layer("logits").units == 10  # outputs are never removed


def test_shrink_needs_a_graph_model_and_a_bool(dense, tmp_path):
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(10)

        def call(self, x):
            return self.fc(x)

    model, train, val = dense
    with pytest.raises(ValueError, match="functional or Sequential"):
        CompressionTuner(
            Subclassed(), _density_scheme, train, val, shrink=True, directory=str(tmp_path)
        )
    with pytest.raises(TypeError, match="shrink"):
        _tuner(dense, tmp_path, shrink="yes")


def test_any_keras_tuner_oracle_drives_the_search(dense, tmp_path):
    model, _, (x_val, y_val) = dense
    hp = keras_tuner.HyperParameters()
    hp.Float("density", 0.2, 1.0)
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("nonzero_params", "min"),
        max_trials=2,
        hyperparameters=hp,
        seed=0,
    )
    tuner = _tuner(dense, tmp_path, oracle=oracle, objective=None, max_accuracy_drop=0.5)
    assert tuner.oracle is oracle
    tuner.search()

    assert _statuses(tuner) == ["COMPLETED"] * 2
    densities = [t.hyperparameters.get("density") for t in tuner.oracle.trials.values()]
    assert all(0.2 <= d <= 1.0 for d in densities)
    best = tuner.best_trial()
    assert tuner.is_feasible(best)  # the floor is the tuner's, whatever the oracle
    cheapest = min(
        t.metrics.get_last_value("nonzero_params") for t in tuner.oracle.trials.values()
    )
    assert best.metrics.get_last_value("nonzero_params") == cheapest
    final = tuner.best_model()
    predicted = np.argmax(final.predict(x_val, verbose=0), axis=-1)
    assert np.mean(predicted == y_val) == pytest.approx(best.metrics.get_last_value("val_accuracy"))
    assert [t.trial_id for t in tuner.pareto()][0] == best.trial_id
    assert "density=" in tuner.results_summary(print_fn=None)


def test_oracle_must_be_a_keras_tuner_oracle_with_the_same_objective(dense, tmp_path):
    with pytest.raises(TypeError, match="keras_tuner.Oracle"):
        _tuner(dense, tmp_path, oracle="random")
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("params", "min"), max_trials=1
    )
    with pytest.raises(ValueError, match="differs from the oracle's"):
        _tuner(dense, tmp_path, oracle=oracle, objective="nonzero_params")


def test_held_out_check_evaluates_the_returned_model_on_the_test_data(dense, tmp_path):
    model, train, (x_val, y_val) = dense
    test = (x_val[::2], y_val[::2])
    tuner = _tuner(
        dense,
        tmp_path,
        validation_data=(x_val[1::2], y_val[1::2]),
        test_data=test,
        max_trials=2,
        fine_tune_epochs=1,
        confidence=0.8,
    )
    assert tuner.oracle.confidence == 0.8
    tuner.search()

    check = tuner.held_out_check()
    best = tuner.best_model()
    expected = np.mean(np.argmax(best.predict(test[0], verbose=0), axis=-1) == test[1])
    dense_test = np.mean(np.argmax(model.predict(test[0], verbose=0), axis=-1) == test[1])
    assert check["trial"] == tuner.best_trial().trial_id
    assert check["test_accuracy"] == pytest.approx(expected)
    assert check["dense_test_accuracy"] == pytest.approx(dense_test)
    assert check["test_floor"] == pytest.approx(dense_test - 0.03)
    assert check["holds"] == (check["test_accuracy"] >= check["test_floor"])

    # The table: the answer first, with its estimate, interval, probability and readings.
    text = tuner.results_summary(print_fn=None)
    header, _, first = text.splitlines()[1:4]
    assert "confidence 0.8" in text.splitlines()[0] and "noise std" in text.splitlines()[0]
    assert "estimate [0.8 interval]" in header and "P(>=floor)" in header
    assert "readings" in header
    assert first.split()[0] == tuner.best_trial().trial_id
    estimate = tuner.feasibility(tuner.best_trial())
    assert f"{estimate.mean:.4f} [" in first and f"{estimate.probability:.3f}" in first
    assert 0.0 <= estimate.probability <= 1.0 and estimate.readings >= 1
    assert _tuner(dense, tmp_path / "other", max_trials=1).held_out_check() is None
    with pytest.raises(ValueError, match="confidence"):
        _tuner(dense, tmp_path / "bad", confidence=1.0)


def test_replicates_fine_tune_with_the_next_seeds():
    def trial(trial_id, density):
        hp = keras_tuner.HyperParameters()
        hp.values["density"] = density
        return keras_tuner.engine.trial.Trial(hyperparameters=hp, trial_id=trial_id)

    trials = {t.trial_id: t for t in map(trial, ["0", "1", "2", "3"], [0.1, 0.2, 0.1, 0.1])}
    seeds = [replicate_seed(5, t, trials) for _, t in sorted(trials.items())]
    assert seeds == [5, 5, 6, 7]  # the k-th repeat of 0.1 fine-tunes with seed 5 + k
    assert replicate_seed(None, trials["3"], trials) is None
    assert replicate_seed(5, trials["3"], None) == 8  # no history: a seed per trial
