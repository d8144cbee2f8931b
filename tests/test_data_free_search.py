"""Compressing and searching without the training data: `--data-free`, `data_free=`."""

import json

import keras
import numpy as np
import pytest

import keras_condensa as kc
from keras_condensa import cli
from keras_condensa.workflows.synthetic import synthetic_data


def _bn_mlp(digits):
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, name="fc1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(),
            keras.layers.Dense(32, name="fc2"),
            keras.layers.BatchNormalization(name="bn2"),
            keras.layers.ReLU(),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def bn_model(digits):
    return _bn_mlp(digits)


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits, bn_model):
    _, _, x_val, y_val = digits
    root = tmp_path_factory.mktemp("data_free")
    model_path = str(root / "model.keras")
    bn_model.save(model_path)
    val_path = str(root / "val.npz")
    np.savez(val_path, x_val=x_val, y_val=y_val)
    return {"root": root, "model": model_path, "val": val_path}


def test_synthetic_data_is_labelled_by_the_model_and_keeps_real_validation(digits, bn_model):
    _, _, x_val, y_val = digits
    data = synthetic_data(bn_model, {"x_val": x_val, "y_val": y_val}, {"n": 64, "steps": 20})
    assert data["x_train"].shape == (64, 64)
    predicted = np.argmax(bn_model.predict(data["x_train"], verbose=0), axis=-1)
    np.testing.assert_array_equal(data["y_train"], predicted)
    assert data["x_val"] is x_val and data["y_val"] is y_val
    alone = synthetic_data(bn_model, None, {"n": 64, "steps": 20})
    assert alone["x_val"].shape[1:] == (64,) and len(alone["x_val"]) == len(alone["y_val"])
    assert not np.allclose(alone["x_val"][:64], alone["x_train"])  # Another seed.


def test_compress_data_free_recovers_a_pruned_model_from_its_own_statistics(
    files, bn_model, digits, capsys
):
    _, _, x_val, y_val = digits
    dense = float(np.mean(np.argmax(bn_model.predict(x_val, verbose=0), -1) == y_val))
    out = str(files["root"] / "small.keras")
    argv = ["compress", files["model"], "--data", files["val"], "--data-free", "--json"]
    argv += ["--scheme", "prune:0.3", "--epochs", "6", "--out", out]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    small = keras.saving.load_model(out)
    accuracy = float(np.mean(np.argmax(small.predict(x_val, verbose=0), -1) == y_val))
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    # One-shot pruning to 30% of the weights, measured the same way, recovered only by
    # distillation on synthetic inputs: real validation labels judge it.
    one_shot = kc.strip(kc.Prune(density=0.3).apply(bn_model))
    before = float(np.mean(np.argmax(one_shot.predict(x_val, verbose=0), -1) == y_val))
    assert accuracy > before + 0.02, (before, accuracy, dense)


def test_data_free_errors_name_the_fix(files, tmp_path, capsys):
    out = str(tmp_path / "x.keras")
    assert cli.main(["compress", files["model"], "--scheme", "prune:0.5", "--out", out]) == 2
    assert "--data-free" in capsys.readouterr().err
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    plain_path = str(tmp_path / "plain.keras")
    plain.save(plain_path)
    argv = ["compress", plain_path, "--data-free", "batchnorm", "--scheme", "prune:0.5"]
    assert cli.main([*argv, "--out", out]) == 2
    assert "inception" in capsys.readouterr().err


def test_search_data_free_without_any_data_measures_agreement(bn_model, tmp_path):
    tuner = kc.search.CompressionTuner(
        bn_model,
        scheme=lambda hp: kc.Prune(density=hp.Float("density", 0.1, 1.0, sampling="log")),
        train_data=None,
        validation_data=None,
        data_free={"n": 128, "steps": 30},
        objective="nonzero_params",
        max_trials=2,
        fine_tune_epochs=1,
        seed=0,
        directory=str(tmp_path),
        project_name="p",
    )
    assert tuner.fine_tune == "distill"
    assert not tuner.recalibrate  # Synthetic inputs would skew the BatchNorm statistics.
    assert tuner.dense_accuracy == 1.0  # Agreement of the dense model with itself.
    assert len(tuner.x_train) == 128
    tuner.search()
    trials = tuner.oracle.get_best_trials(2)
    assert len(trials) == 2 and all(t.status == "COMPLETED" for t in trials)
    # The densest trial agrees with the dense model on most synthetic inputs.
    densest = max(trials, key=lambda t: t.hyperparameters.get("density"))
    assert densest.metrics.get_last_value("val_accuracy") > 0.5
