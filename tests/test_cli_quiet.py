"""Quiet by default: the command line prints its own lines; what libraries print goes to a log."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import trained_mlp

from keras_condensa import cli, library_log

tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="exports convert in-process on TensorFlow only; the TensorFlow leg covers it",
)
once = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the program runs on TensorFlow whatever the backend; the TensorFlow leg runs it",
)


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("quiet")
    model_path = str(root / "model.keras")
    trained_mlp(digits, epochs=1).save(model_path)
    x_train, y_train, x_val, y_val = digits
    data_path = str(root / "data.npz")
    np.savez(data_path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    return {"model": model_path, "data": data_path}


def _program(*args):
    """Runs `keras-condensa ARGS` as a program, with the converter's logs on (no log level)."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "keras_condensa.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_library_log_captures_descriptors_and_children_but_not_our_lines(monkeypatch, capfd):
    # sys.stdout on descriptor 1, as in a terminal (pytest's own capture replaces it).
    monkeypatch.setattr(sys, "stdout", open(1, "w", closefd=False))  # noqa: SIM115
    log = library_log.LibraryLog().start()
    try:
        os.write(1, b"native stdout\n")
        os.write(2, b"native stderr\n")
        print("a library's print", flush=True)
        child = "import os; os.write(2, b'child process\\n')"
        subprocess.run([sys.executable, "-c", child], check=True)
        print("our line", file=library_log.terminal("stdout"), flush=True)
    finally:
        text = log.stop()
    os.write(2, b"after the capture\n")
    out, err = capfd.readouterr()
    for line in ("native stdout", "native stderr", "a library's print", "child process"):
        assert line in text
    assert "our line" not in text
    assert out == "our line\n" and err == "after the capture\n"
    assert library_log.current() is None


@once
def test_export_prints_only_its_own_lines_and_logs_the_converter(files, tmp_path):
    out = str(tmp_path / "small.tflite")
    done = _program(
        "export", files["model"], "--data", files["data"], "--quantize", "int8", "--out", out
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    assert lines[0].startswith(f"wrote {out}: ") and lines[1].startswith("LiteRT against Keras: ")
    assert done.stderr == ""  # no TensorFlow, absl or converter notice, at import or later
    with open(out + ".log") as f:
        log = f.read()
    assert log.startswith("# ") and "keras-condensa export" in log.splitlines()[0]
    assert "fully_quantize: 0, inference_type: 6" in log  # the converter's C++ print
    assert "wrote" not in log


@once
def test_an_error_is_one_line_on_stderr(files, tmp_path):
    out = str(tmp_path / "x.tflite")
    done = _program("export", files["model"], "--data", "nowhere:load", "--out", out)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("keras-condensa export: error: --data nowhere:load: no module")
    assert len(done.stderr.splitlines()) == 1


@tensorflow_only
@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_shows_the_library_lines_instead_of_logging_them(files, tmp_path, capfd, verbose):
    out = str(tmp_path / "small.tflite")
    args = ["export", files["model"], "--data", files["data"], "--quantize", "int8", "--out", out]
    assert cli.main(args + (["--verbose"] if verbose else [])) == 0
    printed = "".join(capfd.readouterr())
    assert f"wrote {out}" in printed
    assert ("fully_quantize" in printed) == verbose
    assert os.path.exists(out + ".log") != verbose
