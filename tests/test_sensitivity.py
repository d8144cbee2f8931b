"""`kc.sensitivity` and `keras-condensa analyze`: accuracy drop per layer per density."""

import csv
import io
import json
import os

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import weights_of
from sklearn.neural_network import MLPClassifier

import keras_condensa as kc
from keras_condensa.cli import main
from keras_condensa.sensitivity_result import Sensitivity

TF_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent (command line, tf.data, composed schemes); the TensorFlow leg "
    "covers it",
)


@pytest.fixture(scope="module")
def mlp(digits):
    """A 64-48-24-10 MLP (logits) trained by scikit-learn and copied into Keras: no Keras fit."""
    x_train, y_train, _, _ = digits
    clf = MLPClassifier(hidden_layer_sizes=(48, 24), max_iter=300, random_state=0)
    clf.fit(x_train, y_train)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(48, activation="relu", name="fc1"),
            keras.layers.Dense(24, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="mlp",
    )
    model.set_weights([w for pair in zip(clf.coefs_, clf.intercepts_, strict=True) for w in pair])
    return model


@pytest.fixture(scope="module")
def result(mlp, digits):
    _, _, x_val, y_val = digits
    return kc.sensitivity(mlp, data=(x_val, y_val), densities=(0.5, 0.02, 0.1), latency_runs=3)


def residual_cnn():
    """stem -> branch, added to a 1x1 skip from the input: branch and skip are coupled."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    stem = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    branch = keras.layers.Conv2D(8, 3, padding="same", name="branch")(stem)
    skip = keras.layers.Conv2D(8, 1, name="skip")(inputs)
    h = keras.layers.ReLU()(keras.layers.Add(name="add")([branch, skip]))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="head")(h)
    outputs = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(h))
    return keras.Model(inputs, outputs, name="residual_cnn")


def test_drops_grow_as_density_shrinks_and_shares_sum_to_one(mlp, digits, result):
    _, _, x_val, y_val = digits
    predicted = np.argmax(keras.ops.convert_to_numpy(mlp(x_val)), axis=-1)
    assert result.dense_accuracy == pytest.approx(np.mean(predicted == y_val))
    assert result.dense_accuracy > 0.9
    assert result.densities == (0.02, 0.1, 0.5)
    assert [r["layer"] for r in result.rows] == ["fc1", "fc2", "logits"]
    for row in result.rows:
        drops = row["drops"]
        # Keeping 2% of a layer's weights wrecks it; keeping half barely matters.
        assert drops[0.02] > drops[0.5] + 0.05, row
        assert drops[0.02] > 0.1, row
        assert drops[0.5] < 0.05, row
    mean = [np.mean([r["drops"][d] for r in result.rows]) for d in result.densities]
    assert mean[0] > mean[1] > mean[2]
    for key in ("params_share", "flops_share", "latency_share"):
        assert sum(r[key] for r in result.rows) == pytest.approx(1.0)
        assert all(r[key] > 0 for r in result.rows)
    assert [r["params"] for r in result.rows] == [64 * 48 + 48, 48 * 24 + 24, 24 * 10 + 10]
    assert sum(r["flops"] for r in result.rows) == kc.flops(mlp)
    assert result.rows[0]["params_share"] == pytest.approx(3120 / (3120 + 1176 + 250))


def test_table_csv_plot_and_bounds(result, tmp_path):
    lines = result.to_text().splitlines()
    assert lines[0].split() == [
        "layer", "params", "params%", "flops%", "latency%", "drop@0.02", "drop@0.1", "drop@0.5"
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:4]] == ["fc1", "fc2", "logits"]
    assert len({len(line) for line in lines[:4]}) == 1  # aligned: every column right-justified
    assert "dense accuracy" in lines[-1]
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert [r["layer"] for r in rows] == ["fc1", "fc2", "logits"]
    assert float(rows[1]["drop@0.02"]) == pytest.approx(result.rows[1]["drops"][0.02])
    path = tmp_path / "sensitivity.png"
    result.plot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["sensitivity.png"]  # written atomically: no temporary left
    assert result.bounds(1.0) == {"fc1": 0.02, "fc2": 0.02, "logits": 0.02}
    assert result.bounds(0.0) == {
        name: 1.0 if row["drops"][0.5] > 0 else 0.5
        for name, row in zip(("fc1", "fc2", "logits"), result.rows, strict=True)
    }
    middle = result.bounds(0.05)
    assert all(middle[r["layer"]] > 0.02 for r in result.rows)  # every 2% drop exceeds 0.05
    with pytest.raises(ValueError, match="max_drop"):
        result.bounds(-0.1)


@TF_ONLY
def test_search_scheme_floors_each_layer_at_its_bound(mlp, digits, result, tmp_path):
    bounds = result.bounds(0.05)
    scheme = result.search_scheme(0.05)
    hp = keras_tuner.HyperParameters()
    scheme(hp)
    assert hp.space[0].name == "density" and hp.space[0].min_value == min(bounds.values())
    hp.values["density"] = min(bounds.values())  # the lowest: every layer at its own bound
    ops = scheme(hp).operators()
    assert {op.get_config()["include"][0]: op.density for op in ops} == bounds
    # A short search keeps every trial's fragile layers at their measured density.
    x_train, y_train, x_val, y_val = digits
    tuner = kc.search.CompressionTuner(
        mlp,
        scheme=scheme,
        train_data=(x_train, y_train),
        validation_data=(x_val, y_val),
        objective="nonzero_params",
        max_accuracy_drop=0.05,
        max_trials=2,
        fine_tune_epochs=0,
        directory=str(tmp_path),
        seed=0,
    )
    tuner.search()
    for trial in tuner.oracle.trials.values():
        density = trial.hyperparameters.get("density")
        model = tuner.load_model(trial)
        for layer, bound in bounds.items():
            kernel = keras.ops.convert_to_numpy(model.get_layer(layer).kernel)
            expected = max(density, bound)
            assert np.mean(kernel != 0) == pytest.approx(expected, abs=1.0 / kernel.size + 1e-3)
    grouped = kc.sensitivity(mlp, data=(x_val, y_val), densities=(0.5,), groups=True)
    with pytest.raises(ValueError, match="groups=True"):
        grouped.search_scheme(0.05)
    fragile = Sensitivity(
        [{"layer": "fc1", "layers": ("fc1",), "drops": {0.5: 0.2}}], 0.9, (0.5,), samples=450
    )
    with pytest.raises(ValueError, match="nothing to prune"):
        fragile.search_scheme(0.01)


def test_a_quantize_scheme_fn(mlp, digits):
    _, _, x_val, y_val = digits
    calls = []

    def int4(name, density):
        calls.append((name, density))
        return kc.Quantize("int4", activations=False, include=[name])

    int4_result = kc.sensitivity(mlp, int4, (x_val, y_val), densities=(1.0,), latency_runs=1)
    assert calls == [("fc1", 1.0), ("fc2", 1.0), ("logits", 1.0)]
    assert all(abs(r["drops"][1.0]) < 0.03 for r in int4_result.rows)  # int4 weights barely hurt


@TF_ONLY
def test_a_composed_scheme_fn_with_activation_quantizers(mlp, digits):
    _, _, x_val, y_val = digits

    def pruned_int8(name, density):
        return kc.Compose([kc.Prune(density, include=[name]), kc.Quantize("int8", include=[name])])

    both = kc.sensitivity(
        mlp, pruned_int8, (x_val, y_val), densities=(0.02,), layers=["fc2"], latency_runs=1
    )
    assert [r["layer"] for r in both.rows] == ["fc2"]
    assert both.rows[0]["drops"][0.02] > 0.05


@pytest.fixture(scope="module")
def cnn_analyses(digits):
    """The residual CNN, its weights before, and three analyses of it: groups, default, layers."""
    _, _, x_val, y_val = digits
    model = residual_cnn()
    before = weights_of(model)
    data = (x_val.reshape(-1, 8, 8, 1), y_val)
    seen = []

    def filters(names, density):
        seen.append(names)
        return kc.FilterPrune(density, include=list(names))

    options = dict(densities=(0.5,), latency_runs=1)
    grouped = kc.sensitivity(model, filters, data, groups=True, **options)
    default = kc.sensitivity(model, data=data, groups=True, **options)
    per_layer = kc.sensitivity(model, data=data, **options)
    return model, before, seen, grouped, default, per_layer


def test_a_coupled_group_is_one_row(cnn_analyses):
    _, _, seen, grouped, default, per_layer = cnn_analyses
    # logits reaches the output: it has no row; branch and skip meet at the Add: one row.
    assert [r["layer"] for r in grouped.rows] == ["stem", "branch+skip", "head"]
    assert grouped.rows[1]["layers"] == ("branch", "skip")
    assert grouped.rows[1]["params"] == (3 * 3 * 8 * 8 + 8) + (1 * 1 * 1 * 8 + 8)
    assert sum(r["flops_share"] for r in grouped.rows) == pytest.approx(1.0)
    assert seen == [("stem",), ("branch", "skip"), ("head",)]  # scheme_fn gets a group's names
    bounds = grouped.bounds(1.0)
    assert bounds["branch"] == bounds["skip"] == 0.5
    assert "logits" not in bounds
    assert grouped.skipped == {"logits": "its channels reach the model output"}
    assert grouped.to_text().splitlines()[-1] == (
        "no row: logits (its channels reach the model output)"
    )
    assert [r["layer"] for r in default.rows] == ["stem", "branch+skip", "head"]
    assert [r["layer"] for r in per_layer.rows] == ["stem", "branch", "skip", "head", "logits"]


def test_the_users_model_is_never_modified(cnn_analyses):
    model, before, *_ = cnn_analyses
    after = weights_of(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert not any(isinstance(layer, kc.CompressionWrapper) for layer in model.layers)
    assert all(len(layer._inbound_nodes) == 1 for layer in model.layers)  # no copy called them


@TF_ONLY
def test_layers_nested_in_a_custom_layer_are_rows_of_their_own():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(50, 8, name="emb")(inputs)
    h = keras.layers.Bidirectional(keras.layers.LSTM(8, name="lstm"), name="bi")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(h))
    x, y = np.random.default_rng(0).integers(0, 50, (40, 12)), np.arange(40) % 3
    analysis = kc.sensitivity(model, data=(x, y), densities=(0.5,), latency_runs=2)
    rows = {r["layer"]: r for r in analysis.rows}
    assert set(rows) == {"emb", "bi/forward_lstm", "bi/backward_lstm", "out"}
    assert sum(r["flops"] for r in analysis.rows) == kc.flops(model)  # the LSTM cells counted
    # The Bidirectional is timed as a whole, and split between its LSTMs by their FLOPs.
    forward, backward = rows["bi/forward_lstm"], rows["bi/backward_lstm"]
    assert forward["latency_ms"] > 0
    assert forward["latency_ms"] == pytest.approx(backward["latency_ms"])
    assert sum(r["latency_share"] for r in analysis.rows) == pytest.approx(1.0)


def test_data_as_batches_gives_the_same_result(mlp, digits):
    _, _, x_val, y_val = digits
    batches = ((x_val[i : i + 100], y_val[i : i + 100]) for i in range(0, len(x_val), 100))
    options = dict(densities=(0.1,), layers=["logits"], latency_runs=1)
    from_batches = kc.sensitivity(mlp, data=batches, **options)
    from_arrays = kc.sensitivity(mlp, data=(x_val, y_val), **options)
    assert from_batches.samples == len(x_val)
    assert from_batches.rows[0]["drops"] == from_arrays.rows[0]["drops"]
    assert from_batches.dense_accuracy == from_arrays.dense_accuracy


@TF_ONLY
def test_a_tf_data_dataset(mlp, digits):
    import tensorflow as tf

    _, _, x_val, y_val = digits
    dataset = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(64)
    options = dict(densities=(0.1,), layers=["fc2"], latency_runs=1)
    result = kc.sensitivity(mlp, data=dataset, **options)
    assert result.samples == len(x_val)
    with pytest.raises(ValueError, match=r"infinite dataset.*take\(n\)"):
        kc.sensitivity(mlp, data=dataset.repeat(), **options)


def _prune_everything(name, density):
    return kc.Prune(density)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(scheme_fn="prune"), TypeError, "scheme_fn must be a callable"),
        (dict(scheme_fn=(1, 2)), TypeError, "give scheme_fn=None first"),
        (dict(densities=()), ValueError, r"densities must be .* in \(0, 1\]"),
        (dict(densities=(0.0, 0.5)), ValueError, r"Received: densities=\(0.0, 0.5\)"),
        (dict(densities=(1.5,)), ValueError, "densities must be"),
        (dict(densities=0.5), TypeError, "densities takes a sequence"),
        (dict(data=None), ValueError, r"data is required: pass data=\(x, y\)"),
        (dict(data=(np.zeros((0, 64)), np.zeros(0))), ValueError, "data is empty"),
        (dict(data=iter([])), ValueError, "data is empty: it yielded no batches"),
        (dict(data=(np.zeros((3, 64)), np.zeros(2))), ValueError, "one label per sample"),
        (dict(data=[np.zeros((3, 64))]), ValueError, r"must be an \(x, y\) pair"),
        (dict(data={"x": 1}), TypeError, "data takes"),
        (dict(data=([np.zeros((3, 64))], np.zeros(3))), TypeError, "x must be one array"),
        (dict(layers=["nope"]), ValueError, r"layers= names .*\['nope'\]"),
        (
            dict(scheme_fn=lambda name, d: kc.Prune(d, include=["fc9"])),
            ValueError,
            r"scheme_fn\('fc1', 0.5\) returned .* not in model 'mlp': \['fc9'\]",
        ),
        (dict(scheme_fn=_prune_everything), ValueError, r"also covers \['fc2', 'logits'\]"),
        (
            dict(scheme_fn=lambda name, d: kc.Prune(d, include=["fc2"])),
            ValueError,
            r"scheme_fn\('fc1', 0.5\) .* does not cover \['fc1'\]",
        ),
        (dict(scheme_fn=lambda name, d: None), TypeError, "must return a kc operator"),
        (dict(latency_runs=0), ValueError, "latency_runs must be a positive int"),
    ],
)
def test_bad_input_is_a_clear_error(mlp, digits, kwargs, error, match):
    _, _, x_val, y_val = digits
    arguments = dict(data=(x_val[:50], y_val[:50]), densities=(0.5,), latency_runs=1)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        kc.sensitivity(mlp, **arguments)


@TF_ONLY
def test_cli_analyze_prints_the_table_and_writes_png_and_csv(mlp, digits, tmp_path, capsys):
    x_train, y_train, x_val, y_val = digits
    model_path, data_path = str(tmp_path / "mlp.keras"), str(tmp_path / "data.npz")
    mlp.save(model_path)
    np.savez(data_path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    out = tmp_path / "report"
    argv = ["analyze", model_path, "--data", data_path, "--densities", "0.5,0.02"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[-2:] == ["drop@0.02", "drop@0.5"]
    assert [line.split()[0] for line in printed.splitlines()[1:4]] == ["fc1", "fc2", "logits"]
    assert {"sensitivity.csv", "sensitivity.png"} <= set(os.listdir(out))
    rows = list(csv.DictReader(open(out / "sensitivity.csv")))
    assert [r["layer"] for r in rows] == ["fc1", "fc2", "logits"]
    assert all(float(r["drop@0.02"]) > float(r["drop@0.5"]) for r in rows)
    assert main([*argv[:4], "--densities", "0,0.5", "--out", str(out)]) == 2
    assert "each in (0, 1]" in capsys.readouterr().err
    assert main([*argv, "--groups", "--out", str(out)]) == 0  # the neurons of fc1 and fc2
    printed = capsys.readouterr().out
    assert [line.split()[0] for line in printed.splitlines()[1:3]] == ["fc1", "fc2"]
    assert "no row: logits (its channels reach the model output)" in printed
    # Which layers can take 4 bits: each quantized alone, one column.
    assert main([*argv[:4], "--quantize", "int4", "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["layer"] for r in rows] == ["fc1", "fc2", "logits"]
    assert all(list(r["drops"]) == ["1.0"] and abs(r["drops"]["1.0"]) < 0.05 for r in rows)
    assert main([*argv[:4], "--quantize", "int4", "--groups", "--out", str(out)]) == 2
