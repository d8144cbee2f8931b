"""The shared workflows: one fine-tune dispatch, one metrics helper, one atomic write,
the scheme grammar from the operators' declarations, reports over any hyperparameters."""

import csv
import io
import os

import keras
import numpy as np
import pytest
from conftest import trained_mlp

import keras_condensa as kc
from keras_condensa import report, scheme_grammar
from keras_condensa.files import save_model_atomically, write_atomically
from keras_condensa.outputs import looks_like_probabilities
from keras_condensa.workflows import SchemeError, compress, fine_tune
from keras_condensa.workflows.measure import accuracy


@pytest.fixture(scope="module")
def dense(digits):
    return trained_mlp(digits, epochs=8), digits


def test_mask_fine_tuning_returns_the_stripped_model_and_leaves_the_dense_one(dense):
    model, (x_train, y_train, x_val, y_val) = dense
    before = [w.copy() for w in model.get_weights()]
    tuned = fine_tune(model, kc.Prune(density=0.3), x_train, y_train, epochs=1)
    assert tuned.epochs_run == 1
    assert not any(isinstance(layer, kc.CompressionWrapper) for layer in tuned.model.layers)
    assert kc.summary(tuned.model, print_fn=None).density == pytest.approx(0.3, abs=0.02)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_diverged_fine_tuning_raises_for_every_caller(dense):
    model, (x_train, y_train, _, _) = dense
    with pytest.raises(FloatingPointError, match="diverged|NaN or infinite"):
        fine_tune(
            model,
            kc.Prune(density=0.5),
            x_train,
            y_train,
            epochs=1,
            optimizer=keras.optimizers.SGD(1e30),
        )


def test_early_stop_ends_training_below_the_floor(dense):
    model, (x_train, y_train, x_val, y_val) = dense
    tuned = fine_tune(
        model,
        kc.Prune(density=0.5),
        x_train[:200],
        y_train[:200],
        epochs=3,
        early_stop=(x_val, y_val, 1.01),  # no model reaches it
    )
    assert tuned.epochs_run == 1


def test_a_scheme_that_cannot_run_is_a_scheme_error(dense):
    model, (x_train, y_train, _, _) = dense
    scheduled = kc.Prune(density=0.5, schedule=kc.PolynomialDecay(end_step=1.0))
    with pytest.raises(SchemeError, match="lc"):
        fine_tune(model, scheduled, x_train, y_train, method="lc", epochs=1)
    with pytest.raises(ValueError, match="must be one of"):
        fine_tune(model, kc.Prune(density=0.5), x_train, y_train, method="qat")


def test_compress_measures_and_saves_atomically(dense, tmp_path):
    model, (x_train, y_train, x_val, y_val) = dense
    data = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}
    out = str(tmp_path / "small.keras")
    result = compress(model, kc.NeuronPrune(density=0.5), data, epochs=1, shrink=True, out=out)
    assert os.listdir(tmp_path) == ["small.keras"]
    saved = keras.saving.load_model(out)
    assert saved.get_layer("fc1").units == 16
    predicted = np.argmax(saved.predict(x_val, verbose=0), axis=-1)
    assert result.accuracy == pytest.approx(float(np.mean(predicted == y_val)))
    assert result.dense_accuracy > 0.85 and "fc1" in result.summary_text


def test_accuracy_and_logits_detection():
    assert accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1])) == 0.5
    assert accuracy(np.array([[0.0, 1.0]]), np.array([[0.0, 1.0]])) == 1.0  # one-hot
    assert accuracy(np.array([-2.0, 3.0]), np.array([0, 1])) == 1.0  # one logit unit
    assert looks_like_probabilities(np.array([[0.25, 0.75]]))
    assert not looks_like_probabilities(np.array([[-2.0, 3.0]]))


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / "report.md")
    write_atomically(path, "old")

    class Unsavable(keras.Model):
        def save(self, filepath):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model_atomically(Unsavable(), str(tmp_path / "m.keras"))
    assert sorted(os.listdir(tmp_path)) == ["report.md"]
    assert open(path).read() == "old"


def test_scheme_grammar_comes_from_the_operators_declarations():
    for cls in (
        kc.Prune,
        kc.NeuronPrune,
        kc.FilterPrune,
        kc.StructurePrune,
        kc.BlockPrune,
        kc.NMPrune,
        kc.Quantize,
    ):
        assert "scheme_word" in vars(cls) and cls.scheme_help
    lines = scheme_grammar.table_lines()
    structure = next(line for line in lines if line.startswith("structure:D"))
    assert "neurons and filters" in structure and "input" not in structure
    assert scheme_grammar.terms()[:2] == ["prune:D", "neuron:D"]
    assert "| `block:D:RxC` | `kc.BlockPrune` |" in scheme_grammar.markdown_table()
    assert isinstance(scheme_grammar.parse_scheme("structure:0.5"), kc.StructurePrune)
    with pytest.raises(scheme_grammar.SchemeSyntaxError, match=r"takes 2 arguments \(nm:N:M\)"):
        scheme_grammar.parse_scheme("nm:2")


def test_a_users_operator_joins_the_grammar():
    class Halve(kc.Prune):
        scheme_word = "halve"
        scheme_args = ()
        scheme_help = "keep half the weights"

        def __init__(self):
            super().__init__(density=0.5)

    assert "halve" in scheme_grammar.terms()
    assert isinstance(scheme_grammar.parse_scheme("halve+int8").operators()[0], Halve)


def test_reports_show_every_hyperparameter(tmp_path):
    rows = [
        {
            "trial": 0,
            "status": "COMPLETED",
            "val_accuracy": 0.9,
            "nonzero_params": 100.0,
            "hyperparameters": {"density_fc1": 0.5, "density_fc2": 0.25, "bits": 4},
            "feasible": True,
            "best": True,
        },
        {
            "trial": 1,
            "status": "FAILED",
            "hyperparameters": {"density_fc1": 0.1, "bits": 8},
            "feasible": False,
            "best": False,
        },
    ]
    table = list(csv.DictReader(io.StringIO(report.trials_csv(rows))))
    assert table[0]["hp:density_fc2"] == "0.25" and table[1]["hp:bits"] == "8"
    assert table[1]["hp:density_fc2"] == ""
    info = {"objective": "tflite_bytes", "dense_accuracy": 0.95, "floor": 0.9, "best": rows[0]}
    text = report.report_markdown(info, rows, [])
    assert "| hp:density_fc1 | hp:density_fc2 | hp:bits |" in text
    assert "density_fc1 0.5, density_fc2 0.25, bits 4" in text
    # No trial reports tflite_bytes: the plot uses the first numeric hyperparameter.
    assert report.plot_axis(rows, "tflite_bytes") == "hp:density_fc1"
    report.pareto_png(rows, "tflite_bytes", 0.9, str(tmp_path / "p.png"))
    assert os.path.getsize(tmp_path / "p.png") > 0
