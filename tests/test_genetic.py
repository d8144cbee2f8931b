"""`GeneticChannelOracle`: layer-wise genetic channel pruning inside `CompressionTuner`."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier, small_cnn
from keras_tuner.engine import hyperparameters as hps

import keras_condensa as kc
from keras_condensa.search.evolution import Gene, evolve, gray, ungray

LAYERS = {"conv1": kc.FilterPrune, "conv2": kc.FilterPrune, "fc": kc.NeuronPrune}
GRID = [0.25, 0.5, 0.75, 1.0]


def scheme(hp):
    return kc.Compose(
        [
            op(density=hp.Float(f"keep_{name}", 0.25, 1.0, step=0.25), include=[name])
            for name, op in LAYERS.items()
        ]
    )


@pytest.fixture(scope="module")
def cnn(digits):
    x_train, y_train, x_val, y_val = digits
    x_train, x_val = x_train.reshape(-1, 8, 8, 1), x_val.reshape(-1, 8, 8, 1)
    model = compile_classifier(small_cnn(), learning_rate=3e-3)
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0)
    return model, (x_train, y_train), (x_val, y_val)


def make_tuner(cnn, tmp_path, oracle, name="ga", **kwargs):
    model, train, val = cnn
    kwargs.setdefault("max_accuracy_drop", 0.03)
    return kc.search.CompressionTuner(
        model,
        scheme,
        train,
        val,
        oracle=oracle,
        shrink=True,
        fine_tune_epochs=1,
        batch_size=64,
        seed=0,
        directory=str(tmp_path),
        project_name=name,
        **kwargs,
    )


def genes_of(trial):
    return {k: v for k, v in trial.hyperparameters.values.items() if k.startswith("keep_")}


def test_stages_follow_sensitivity_and_best_meets_floor(cnn, tmp_path):
    oracle = kc.search.GeneticChannelOracle(objective="flops", max_trials=2, survivors=1, seed=0)
    tuner = make_tuner(cnn, tmp_path, oracle)
    tuner.search()

    sensitivity = oracle.sensitivity
    assert oracle.order == sorted(sensitivity, key=lambda n: (sensitivity[n], n))
    assert [s["gene"] for s in oracle.stages] == oracle.order[:2]
    trials = [oracle.trials[i] for i in sorted(oracle.trials)]
    assert len(trials) == 2
    for trial in trials:
        values = genes_of(trial)
        assert set(values) == {f"keep_{n}" for n in LAYERS}
        assert all(v in GRID for v in values.values())
    # A first-stage trial changes only the most robust gene; the others stay whole.
    first = oracle.stages[0]
    for trial_id in first["trials"]:
        changed = {k for k, v in genes_of(oracle.trials[trial_id]).items() if v != 1.0}
        assert changed == {first["gene"]}

    best = tuner.best_trial()
    dense_flops = kc.flops(cnn[0])
    assert tuner.is_feasible(best)
    assert best.metrics.get_last_value("flops") < dense_flops
    assert oracle.get_best_trials(1)[0].metrics.get_last_value("flops") < dense_flops
    assert oracle.is_feasible(oracle.get_best_trials(1)[0])

    x_val, y_val = cnn[2]
    for start in ("dense", "trial"):
        final = kc.search.distill_best(tuner, epochs=1, start=start)
        assert kc.flops(final) == best.metrics.get_last_value("flops")
        assert np.mean(np.argmax(final.predict(x_val, verbose=0), -1) == y_val) > 0.5


def test_impossible_floor_completes_with_best_so_far(cnn, tmp_path):
    oracle = kc.search.GeneticChannelOracle(
        objective="flops",
        max_trials=2,
        constraint=kc.search.Constraint("val_accuracy", min_value=1.01),
        survivors=1,
        seed=1,
    )
    tuner = make_tuner(cnn, tmp_path, oracle, name="impossible")
    with pytest.warns(UserWarning, match="No trial met val_accuracy >= 1.01"):
        tuner.search()
    done = [t for t in oracle.trials.values() if t.status == "COMPLETED"]
    assert len(done) == 2
    assert oracle.fixed == {}  # no stage met the floor: every gene kept its value
    best = oracle.get_best_trials(1)[0]
    accuracies = [t.metrics.get_last_value("val_accuracy") for t in done]
    assert best.metrics.get_last_value("val_accuracy") == max(accuracies)
    assert not oracle.is_feasible(best)
    assert oracle.stages[-1]["gene"] != oracle.stages[0]["gene"]  # stages went on


def test_resume_goes_on_from_the_saved_stage(cnn, tmp_path):
    first = kc.search.GeneticChannelOracle(objective="flops", max_trials=1, survivors=1, seed=0)
    make_tuner(cnn, tmp_path, first, name="resume").search()

    second = kc.search.GeneticChannelOracle(objective="flops", max_trials=2, survivors=1, seed=0)
    tuner = make_tuner(cnn, tmp_path, second, name="resume")
    assert second.order == first.order
    assert len(second.stages) == len(first.stages)
    tuner.search()
    assert len(second.trials) == 2
    values = [tuple(sorted(genes_of(t).items())) for t in second.trials.values()]
    assert len(set(values)) == 2  # nothing proposed twice
    assert second.stages[1]["gene"] == first.order[1]
    assert second.stages[0]["trials"] == first.stages[0]["trials"]


def test_bad_arguments_raise_clear_errors(cnn, tmp_path):
    oracle = kc.search.GeneticChannelOracle
    with pytest.raises(ValueError, match="population"):
        oracle(objective="flops", population=0)
    with pytest.raises(ValueError, match="mutation_rate"):
        oracle(objective="flops", mutation_rate=1.5)
    with pytest.raises(ValueError, match="cost_weight"):
        oracle(objective="flops", cost_weight=0)
    with pytest.raises(ValueError, match="objective"):
        oracle(objective=None)
    with pytest.raises(ValueError, match="same metric"):
        oracle(objective="val_accuracy")
    with pytest.raises(TypeError, match="Constraint"):
        oracle(objective="flops", constraint="val_accuracy>0.9")
    with pytest.raises(RuntimeError, match="bind"):
        oracle(objective="flops").populate_space("0")
    with pytest.raises(TypeError, match="numeric"):
        Gene(hps.Choice("criterion", ["l1", "l2"]))
    with pytest.raises(TypeError, match="Float, Int"):
        Gene(hps.Boolean("on"))
    model, train, val = cnn
    no_genes = kc.search.CompressionTuner(
        model,
        lambda hp: kc.FilterPrune(density=hp.Fixed("d", 0.5)),
        train,
        val,
        oracle=oracle(objective="flops", max_trials=1),
        directory=str(tmp_path),
        project_name="none",
    )
    with pytest.raises(ValueError, match="no Float, Int or numeric Choice"):
        no_genes.oracle.populate_space("0")
    with pytest.raises(ValueError, match="epochs"):
        kc.search.distill_best(no_genes, epochs=0)
    with pytest.raises(ValueError, match="start"):
        kc.search.distill_best(no_genes, epochs=1, start="best")
    with pytest.raises(ValueError, match="shrink=True"):
        kc.search.distill_best(no_genes, epochs=1, start="trial")


def test_evolution_finds_the_fittest_grid_value():
    assert all(ungray(gray(i, 4), 16) == i for i in range(16))
    calls = []

    def fitness(i):
        calls.append(i)
        return -((i - 11) ** 2)

    ranked = evolve(fitness, 16, np.random.default_rng(0), population=8, generations=6)
    assert ranked[0] == (0.0, 11)
    assert len(calls) == len(set(calls))  # each value measured once
    log = Gene(hps.Float("a", 0.1, 1.0, sampling="log"), grid_size=5).grid
    assert len(log) == 5 and log[0] == 0.1 and log[-1] == 1.0
    assert np.allclose(np.diff(np.log(log)), np.log(10) / 4, atol=1e-4)
    assert Gene(hps.Int("b", 2, 8, step=2)).grid == [2, 4, 6, 8]
    assert Gene(hps.Choice("c", [0.5, 0.25, 1.0])).grid == [0.25, 0.5, 1.0]


def test_probe_cost_is_the_shrunk_flops_and_dense_stays_untouched(digits, tmp_path):
    x_train, y_train, x_val, y_val = digits
    x_train, x_val = x_train.reshape(-1, 8, 8, 1), x_val.reshape(-1, 8, 8, 1)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = inputs
    for name, filters in (("conv1", 8), ("conv2", 16)):
        h = keras.layers.Conv2D(filters, 3, name=name)(h)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization(name=f"{name}_bn")(h))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)  # untrained: the cost and the statistics are checked

    def two_convs(hp):
        return kc.Compose(
            [
                kc.FilterPrune(density=hp.Float(f"keep_{n}", 0.25, 1.0, step=0.25), include=[n])
                for n in ("conv1", "conv2")
            ]
        )

    oracle = kc.search.GeneticChannelOracle(objective="flops", max_trials=1, seed=0)
    tuner = kc.search.CompressionTuner(
        model,
        two_convs,
        (x_train, y_train),
        (x_val, y_val),
        accuracy_floor=0.0,
        oracle=oracle,
        shrink=True,
        directory=str(tmp_path),
        project_name="probe",
    )
    statistics = [np.array(w) for w in model.get_layer("conv1_bn").weights]
    values = {"keep_conv1": 0.75, "keep_conv2": 0.25}
    reading, cost = oracle.probe(oracle.hyperparameters, values)
    hp = oracle.hyperparameters.copy()
    hp.values = values
    shrunk = kc.strip(two_convs(hp).apply(model), shrink=True)
    assert cost == pytest.approx(kc.flops(shrunk) / kc.flops(model))
    assert 0.0 <= reading <= 1.0
    assert oracle.probe(oracle.hyperparameters, values) == (reading, cost)  # cached
    for before, after in zip(statistics, model.get_layer("conv1_bn").weights, strict=True):
        np.testing.assert_array_equal(before, np.array(after))
    assert tuner.oracle is oracle
