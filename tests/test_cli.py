"""The `keras-condensa` command line, run for real on small digits models."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import tensorflow_leg

import keras_condensa as kc
from keras_condensa import cli
from keras_condensa.bench import device_name
from keras_condensa.report import report_markdown
from keras_condensa.scheme_grammar import SchemeSyntaxError, parse_scheme
from keras_condensa.search import run as search_run

# A listener on the searches the command line runs: `(event, tuner, trial)` with
# event "trial_begin" or "trial_end" (a test raises KeyboardInterrupt from it).
_RUN_SEARCH = search_run.run_search


def _listen(monkeypatch, listener):
    """Adds `listener` to the listeners of every `run_search` the command line calls."""

    def run_search(*args, listeners=(), **kwargs):
        return _RUN_SEARCH(*args, listeners=[*listeners, listener], **kwargs)

    monkeypatch.setattr(search_run, "run_search", run_search)


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits):
    """A small trained digits model as .keras and its data as .npz."""
    x_train, y_train, x_val, y_val = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    root = tmp_path_factory.mktemp("cli")
    model_path = str(root / "model.keras")
    model.save(model_path)
    data_path = str(root / "data.npz")
    np.savez(data_path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    return {"root": root, "model": model_path, "data": data_path, "digits": digits}


def _error_lines(capsys):
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith("keras-condensa")]


def test_scheme_grammar_builds_operators_and_rejects_unknown_words():
    scheme = parse_scheme("filter:0.5+nm:2:4")
    assert isinstance(scheme, kc.Compose)
    assert [type(o) for o in scheme.operators()] == [kc.FilterPrune, kc.NMPrune]
    block = parse_scheme("block:0.25:2x4")
    assert isinstance(block, kc.BlockPrune) and tuple(block.block_size) == (2, 4)
    assert isinstance(parse_scheme("int8"), kc.Quantize)
    with pytest.raises(SchemeSyntaxError, match="valid terms: prune:D"):
        parse_scheme("prune:0.1+sparsify:3")
    with pytest.raises(SchemeSyntaxError, match="density"):
        parse_scheme("prune:1.5")


def test_help_documents_the_scheme_grammar(capsys):
    assert cli.main(["compress", "--help"]) == 0
    out = capsys.readouterr().out
    for term in ("prune:D", "block:D:RxC", "nm:N:M", "int4", "prune:0.1+int8"):
        assert term in out


def test_compress_writes_the_stripped_model(files, tmp_path, capsys):
    out = str(tmp_path / "small.keras")
    code = cli.main(
        ["compress", files["model"], "--data", files["data"], "--scheme", "prune:0.2",
         "--epochs", "1", "--out", out, "--json"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert os.listdir(tmp_path) == ["small.keras"]  # No temporary file left.
    model = keras.saving.load_model(out)
    summary = kc.summary(model, print_fn=None)
    assert summary.density == pytest.approx(0.2, abs=0.03)
    assert result["nonzeros"] == summary.nonzeros
    assert not any(isinstance(layer, kc.CompressionWrapper) for layer in model.layers)


def test_compress_to_kcz_then_export_reads_it(files, tmp_path, capsys):
    out = str(tmp_path / "small.kcz")
    code = cli.main(
        ["compress", files["model"], "--data", files["data"], "--scheme", "prune:0.2+cluster:8",
         "--epochs", "1", "--out", out, "--json"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["coded_bytes"] == os.path.getsize(out)
    decoded = kc.codec.load(out)
    kernel = np.asarray(decoded.get_layer("fc1").kernel)
    assert np.unique(kernel[kernel != 0]).size <= 8
    assert np.count_nonzero(kernel) / kernel.size < 0.3
    tflite = str(tmp_path / "small.tflite")
    assert cli.main(["export", out, "--data", files["data"], "--out", tflite, "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["bytes"] == os.path.getsize(tflite)
    assert exported["top1_agreement"] > 0.99
    with open(out, "r+b") as f:  # a damaged file: one line, exit 2
        f.seek(40)
        f.write(b"\xff\xff")
    assert cli.main(["export", out, "--out", str(tmp_path / "again.tflite")]) == 2
    assert any("cannot load model" in line for line in _error_lines(capsys))


def _bad_data(root, name, **arrays):
    path = str(root / name)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_model", "model file not found"),
        ("corrupt_model", "not a valid .keras archive"),
        ("missing_arrays", "lacks the arrays y_val"),
        ("wrong_shape", "expects (64,)"),
        ("label_too_big", "label 10"),
        ("unknown_scheme", "unknown scheme word 'sparsify'"),
    ],
)
def test_compress_bad_input_exits_2_with_one_line_and_no_output(
    files, tmp_path, capsys, case, message
):
    x_train, y_train, x_val, y_val = files["digits"]
    model, data, scheme = files["model"], files["data"], "prune:0.5"
    if case == "missing_model":
        model = str(tmp_path / "nope.keras")
    elif case == "corrupt_model":
        model = str(tmp_path / "corrupt.keras")
        with open(model, "wb") as f:
            f.write(b"not a zip archive")
    elif case == "missing_arrays":
        data = _bad_data(tmp_path, "d.npz", x_train=x_train, y_train=y_train, x_val=x_val)
    elif case == "wrong_shape":
        data = _bad_data(tmp_path, "d.npz", x_train=x_train[:, :32], y_train=y_train,
                         x_val=x_val[:, :32], y_val=y_val)
    elif case == "label_too_big":
        data = _bad_data(tmp_path, "d.npz", x_train=x_train, y_train=y_train + 1,
                         x_val=x_val, y_val=y_val)
    elif case == "unknown_scheme":
        scheme = "prune:0.5+sparsify:3"
    out = tmp_path / "out.keras"
    code = cli.main(
        ["compress", model, "--data", data, "--scheme", scheme, "--out", str(out)]
    )
    assert code == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_search_qat_without_int8_export_exits_2_and_writes_nothing(files, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        ["search", files["model"], "--data", files["data"], "--max-drop", "0.02",
         "--qat", "int4", "--out", str(out)]
    )
    assert code == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "--qat int4" in lines[0] and "--quantize int8" in lines[0], lines
    assert not out.exists()


@tensorflow_leg
def test_search_writes_outputs_then_refuses_the_finished_dir(files, tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["search", files["model"], "--data", files["data"], "--max-drop", "0.05",
            "--max-trials", "2", "--objective", "nonzero_params", "--out", out, "--quiet"]
    assert cli.main(args + ["--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # Nothing but the JSON object on stdout.
    assert captured.err.count("trial ") == 0  # --quiet
    for name in ("best.keras", "best.tflite", "report.md", "pareto.png", "trials.csv"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "trials.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and sum(r["best"] == "True" for r in rows) == 1
    assert {r["keras_device"] for r in rows} == {device_name()}
    assert result["trials"] == 2 and result["stop_reason"] is None  # both trials ran
    assert result["best"]["tflite"]["bytes"] == os.path.getsize(os.path.join(out, "best.tflite"))
    report = open(os.path.join(out, "report.md")).read()
    assert "pareto.png" in report and "| fc1 | Dense |" in report
    assert f"Keras latency timed on {device_name()}" in report

    assert cli.main(args) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "--overwrite" in lines[0]


def test_report_says_why_a_search_ended_early():
    info = {"model": "m.keras", "objective": "tflite_bytes", "dense_accuracy": 0.98,
            "floor": 0.97, "best": None, "exported": None, "max_trials": 10}
    rows = [{"trial": k, "feasible": k % 2 == 0} for k in range(6)]
    assert "ended" not in report_markdown(info, rows, [])
    reason = "the boundary is located: a further trial was expected to save less than 4%"
    text = report_markdown({**info, "stop_reason": reason}, rows, [])
    assert f"- ended after 6 of 10 trials: {reason}" in text


@tensorflow_leg
def test_search_resumes_after_a_real_interrupt(files, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    args = ["search", files["model"], "--data", files["data"], "--max-drop", "0.05",
            "--max-trials", "2", "--epochs", "1", "--objective", "nonzero_params", "--out", out]
    finished = []

    def interrupt_second_trial(event, tuner, trial):
        if event == "trial_end":
            finished.append((trial.trial_id, trial.metrics.get_last_value("val_accuracy")))
        elif event == "trial_begin" and finished:
            raise KeyboardInterrupt  # As Ctrl-C would, while trial 2 starts.

    _listen(monkeypatch, interrupt_second_trial)
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert "run `keras-condensa search" in err and "again to resume" in err
    assert sorted(os.listdir(out)) == ["search"]
    assert len(finished) == 1

    resumed = []

    def count_trials(event, tuner, trial):
        if event == "trial_end":
            resumed.append(trial.trial_id)

    _listen(monkeypatch, count_trials)
    assert cli.main(args + ["--json"]) == 0
    captured = capsys.readouterr()
    assert "1 finished trial(s) kept" in captured.err
    assert json.loads(captured.out)["trials"] == 2  # Only the JSON object on stdout.
    assert len(resumed) == 1  # Only the missing trial ran.
    with open(os.path.join(out, "trials.csv")) as f:
        rows = {r["trial"]: r for r in csv.DictReader(f)}
    kept_id, kept_accuracy = finished[0]
    assert len(rows) == 2
    assert float(rows[str(int(kept_id))]["val_accuracy"]) == pytest.approx(float(kept_accuracy))


def test_export_then_bench_the_tflite_and_keras_files(files, tmp_path, capsys):
    out = str(tmp_path / "model.tflite")
    code = cli.main(
        ["export", files["model"], "--quantize", "int8", "--data", files["data"], "--out", out,
         "--json"]
    )
    assert code == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["bytes"] == os.path.getsize(out)
    assert exported["top1_agreement"] > 0.9

    assert cli.main(["bench", out, "--runs", "20", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert bench["bytes"] == os.path.getsize(out)
    assert bench["p50_ms"] <= bench["p90_ms"] <= bench["p99_ms"]

    assert cli.main(["bench", files["model"], "--data", files["data"], "--runs", "5",
                     "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert bench["p50_ms"] > 0 and bench["val_accuracy"] > 0.8


def test_export_int8_without_data_exits_2(files, tmp_path, capsys):
    out = tmp_path / "model.tflite"
    assert cli.main(["export", files["model"], "--quantize", "int8", "--out", str(out)]) == 2
    assert len(_error_lines(capsys)) == 1
    assert not out.exists()


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="under JAX every trial's export converts in a TensorFlow subprocess (covered by "
    "test_tflite_export); the demo runs once, on TensorFlow, to keep CI within its budget",
)
def test_demo_reports_the_bytes_it_wrote(tmp_path, capsys):
    out = str(tmp_path / "demo")
    code = cli.main(
        ["demo", "--max-trials", "3", "--epochs", "1", "--dense-epochs", "5", "--out", out,
         "--json", "--quiet"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trials"] == 3
    assert result["best_table"]["tflite_bytes"] == os.path.getsize(os.path.join(out, "best.tflite"))
    assert result["dense"]["params"] == 50_610
    assert os.path.exists(os.path.join(out, "report.md"))
    assert os.path.exists(os.path.join(out, "pareto.png"))


def test_entry_point_runs_as_a_program(files):
    script = os.path.join(os.path.dirname(sys.executable), "keras-condensa")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "keras_condensa.cli"]
    done = subprocess.run(
        command + ["search", files["model"], "--data", files["data"], "--max-drop", "0.05",
                   "--out", str(files["root"]), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "exists" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("fine_tune", ["lc", "distill"])
def test_compress_fine_tunes_with_lc_or_distillation(files, tmp_path, capsys, fine_tune):
    out = str(tmp_path / f"{fine_tune}.keras")
    code = cli.main(
        ["compress", files["model"], "--data", files["data"], "--scheme", "prune:0.2",
         "--epochs", "6", "--fine-tune", fine_tune, "--out", out, "--json"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    model = keras.saving.load_model(out)
    summary = kc.summary(model, print_fn=None)
    assert summary.density == pytest.approx(0.2, abs=0.03)
    assert result["nonzeros"] == summary.nonzeros
    assert not any(isinstance(layer, kc.CompressionWrapper) for layer in model.layers)
    _, _, x_val, y_val = files["digits"]
    assert np.mean(np.argmax(model.predict(x_val, verbose=0), -1) == y_val) > 0.85


def test_compress_lc_without_epochs_exits_2(files, tmp_path, capsys):
    out = tmp_path / "out.keras"
    code = cli.main(
        ["compress", files["model"], "--data", files["data"], "--scheme", "prune:0.2",
         "--epochs", "0", "--fine-tune", "lc", "--out", str(out)]
    )
    assert code == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "--fine-tune lc trains" in lines[0], lines
    assert not out.exists()


@tensorflow_leg
def test_search_fine_tunes_trials_with_lc(files, tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["search", files["model"], "--data", files["data"], "--max-drop", "0.1",
            "--max-trials", "1", "--epochs", "4", "--fine-tune", "lc",
            "--objective", "nonzero_params", "--out", out, "--quiet", "--json"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    best = keras.saving.load_model(os.path.join(out, "best.keras"))
    assert kc.summary(best, print_fn=None).nonzeros == result["best"]["nonzero_params"]
    assert result["best"]["nonzero_params"] < kc.summary(best, print_fn=None).params


def test_compress_shrink_writes_a_model_with_fewer_neurons(files, tmp_path, capsys):
    out = str(tmp_path / "small.keras")
    code = cli.main(
        ["compress", files["model"], "--data", files["data"], "--scheme", "neuron:0.25",
         "--epochs", "1", "--shrink", "--out", out]
    )
    assert code == 0
    model = keras.saving.load_model(out)
    assert model.get_layer("fc1").units == 16  # 64 neurons, a quarter kept
    assert model.get_layer("logits").units == 10
    # The same function as the masked model: accuracy is what compress printed.
    x_val, y_val = files["digits"][2], files["digits"][3]
    accuracy = float(np.mean(np.argmax(model.predict(x_val, verbose=0), axis=1) == y_val))
    assert f"-> {accuracy:.4f} compressed" in capsys.readouterr().out


def test_compress_shrink_with_int8_exits_2_and_writes_nothing(files, tmp_path, capsys):
    out = tmp_path / "small.keras"
    code = cli.main(
        ["compress", files["model"], "--data", files["data"], "--scheme", "neuron:0.5+int8",
         "--shrink", "--out", str(out)]
    )
    assert code == 2
    assert "--shrink" in _error_lines(capsys)[-1]
    assert not out.exists()


@tensorflow_leg
def test_search_over_neurons_writes_a_shrunk_best_model(files, tmp_path, capsys):
    out = str(tmp_path / "run")
    code = cli.main(
        ["search", files["model"], "--data", files["data"], "--max-drop", "0.3",
         "--max-trials", "3", "--epochs", "2", "--objective", "params", "--prune", "neuron",
         "--out", out, "--quiet", "--json"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    best = keras.saving.load_model(os.path.join(out, "best.keras"))
    # The first trial keeps every neuron; a feasible later one fewer, and it is the best.
    assert result["best"]["feasible"]
    assert best.get_layer("fc1").units < 64
    assert result["best"]["params"] == best.count_params()
    report = open(os.path.join(out, "report.md")).read()
    assert "neuron prune (channels removed" in report
    units = best.get_layer("fc1").units
    assert f"| fc1 | Dense | 4,160 | {64 * units + units:,} |" in report  # dense 64x64 + 64


def test_search_structured_with_qat_exits_2(files, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        ["search", files["model"], "--data", files["data"], "--max-drop", "0.05",
         "--prune", "filter", "--qat", "int8", "--quantize", "int8", "--out", str(out)]
    )
    assert code == 2
    assert "--prune filter" in _error_lines(capsys)[-1]
    assert not out.exists()


@tensorflow_leg
def test_search_checks_the_answer_on_held_out_test_data(files, tmp_path, capsys):
    x_train, y_train, x_val, y_val = files["digits"]
    data = str(tmp_path / "with_test.npz")
    np.savez(data, x_train=x_train, y_train=y_train, x_val=x_val[1::2], y_val=y_val[1::2],
             x_test=x_val[::2], y_test=y_val[::2])
    out = str(tmp_path / "run")
    args = ["search", files["model"], "--data", data, "--max-drop", "0.05", "--max-trials",
            "2", "--objective", "nonzero_params", "--out", out, "--quiet"]
    assert cli.main([*args, "--confidence", "1.2"]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "--confidence" in lines[0] and "[0.5, 1)" in lines[0], lines
    assert not os.path.exists(out)

    assert cli.main([*args, "--confidence", "0.8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    check = result["held_out"]
    best = keras.saving.load_model(os.path.join(out, "best.keras"))
    expected = np.mean(np.argmax(best.predict(x_val[::2], verbose=0), axis=-1) == y_val[::2])
    assert check["test_accuracy"] == pytest.approx(expected)
    assert check["holds"] == (check["test_accuracy"] >= check["test_floor"])
    assert result["confidence"] == 0.8 and result["noise"]["std"] >= 0
    assert 0 <= result["best"]["p_feasible"] <= 1 and result["best"]["readings"] >= 1
    report = open(os.path.join(out, "report.md")).read()
    assert f"- held-out check: the floor {'holds' if check['holds'] else 'does NOT hold'}" in (
        report
    )
    assert f"test accuracy {check['test_accuracy']:.4f}" in report
    assert "- confidence: 0.8" in report and "P(val_accuracy >= floor)" in report
    with open(os.path.join(out, "trials.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {"estimate", "estimate_low", "estimate_high", "p_feasible", "readings"} <= set(rows[0])
