"""What keras-condensa promises under bad input and faults (issue 22).

One test per promise: schemes that cannot do what they say are refused,
pruned weights stay exactly zero whatever the data or the optimizer, no
result of another run is returned, no file is destroyed or half-written, and
every bad usage of the command line exits 2 with a message, before any work.
"""

import json
import os

import keras
import numpy as np
import pytest

import keras_condensa as kc
from keras_condensa import cli, masking
from keras_condensa.search import run as search_run

# A listener on the searches the command line runs: `(event, tuner, trial)` with
# event "trial_begin" or "trial_end" (a test raises KeyboardInterrupt from it).
_RUN_SEARCH = search_run.run_search


def _listen(monkeypatch, listener):
    """Adds `listener` to the listeners of every `run_search` the command line calls."""

    def run_search(*args, listeners=(), **kwargs):
        return _RUN_SEARCH(*args, listeners=[*listeners, listener], **kwargs)

    monkeypatch.setattr(search_run, "run_search", run_search)


# ----------------------------------------------------------------------
# Material: small digits models saved as .keras, their data as .npz.


def _dense(hidden, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(hidden, activation="tanh", name="fc1"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits):
    x_train, y_train, x_val, y_val = digits
    root = tmp_path_factory.mktemp("reliability")
    paths = {"root": root, "digits": digits}
    for name, hidden in (("model", 100), ("other", 32)):  # 7,510 and 2,410 parameters
        model = _dense(hidden)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
        paths[name] = str(root / f"{name}.keras")
        model.save(paths[name])
    paths["data"] = str(root / "data.npz")
    np.savez(paths["data"], x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    return paths


def _error_lines(capsys):
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith("keras-condensa")]


def _search_args(files, model, out, *extra):
    return [
        "search",
        model,
        "--data",
        files["data"],
        "--max-drop",
        "0.5",
        "--max-trials",
        "2",
        "--epochs",
        "0",
        "--objective",
        "nonzero_params",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


# ----------------------------------------------------------------------
# Schemes: refused when they cannot do what they say; any real number is a number.


def test_scheduled_pruning_fitted_without_its_callbacks_is_reported(digits):
    x, y, _, _ = digits
    scheme = kc.Prune(0.1, schedule=kc.PolynomialDecay(end_step=0.8, frequency=5))
    pruned = scheme.apply(_dense(32))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=1, batch_size=64, verbose=0)  # no callbacks=kc.callbacks(scheme)
    info = kc.summary(pruned, print_fn=None)
    assert "schedule has not run" in info.skipped["fc1"]
    with pytest.warns(
        UserWarning, match=r"pruning schedule that never ran.*callbacks=kc.callbacks"
    ):
        kc.strip(pruned)
    pruned.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=kc.callbacks(scheme))
    assert masking.never_pruned(pruned) == []
    assert kc.summary(pruned, print_fn=None).masked_density == pytest.approx(0.1, abs=0.01)


def test_exclude_naming_an_unknown_layer_is_refused_like_include():
    with pytest.raises(ValueError, match=r"exclude=\.\.\.\) names layers that are not in.*'logit'"):
        kc.Prune(0.5, exclude=["logit"]).apply(_dense(16))
    pruned = kc.Prune(0.5, exclude=["logits"]).apply(_dense(16))
    assert [w.layer.name for w in masking.iter_wrappers(pruned)] == ["fc1"]


def test_compose_refuses_post_training_quantization():
    scheme = kc.Compose([kc.Prune(0.5), kc.Quantize("int8", mode="post_training")])
    with pytest.raises(ValueError, match=r"post-training quantization.*kc\.strip"):
        scheme.apply(_dense(16))


@pytest.mark.parametrize("density", [np.float32(0.5), np.float64(0.25), np.int64(1)])
def test_density_accepts_numpy_scalars(density):
    assert kc.Prune(density).density == pytest.approx(float(density))


def test_schedules_and_floors_accept_numpy_scalars():
    schedule = kc.PolynomialDecay(
        initial_sparsity=np.float32(0.1), end_step=np.float64(0.5), frequency=np.int64(5)
    )
    assert (schedule.end_step, schedule.frequency) == (0.5, 5) and schedule.in_fractions
    assert kc.ConstantSparsity(np.float32(0.5), begin_step=np.int32(10)).begin_step == 10
    prune = kc.Prune(np.float32(0.2), min_layer_density=np.float32(0.05), schedule=schedule)
    assert prune.schedule.final_sparsity == pytest.approx(0.8)


def test_density_too_small_for_one_weight_per_layer_names_the_smallest():
    model = _dense(16)  # kernels of 1,024 and 160 weights
    with pytest.raises(
        ValueError, match=r"no item would be kept.*smallest density is 0\.00169 \(2 of 1184\)"
    ):
        kc.Prune(1e-5).apply(model)


# ----------------------------------------------------------------------
# Pruned weights: exactly zero whatever the weight holds, under every optimizer.


def test_pruned_positions_are_zero_even_where_the_weight_is_nan():
    model = _dense(16)
    pruned = kc.Prune(0.5).apply(model)
    wrapper = next(masking.iter_wrappers(pruned))
    mask = np.asarray(wrapper.masks["kernel"])
    kernel = np.asarray(wrapper.weight("kernel")).copy()
    kernel[mask == 0] = np.nan
    wrapper.weight("kernel").assign(kernel)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(pruned(np.ones((2, 64), "float32")))))
    stripped = np.asarray(kc.strip(pruned).get_layer("fc1").kernel)
    assert np.all(stripped[mask == 0] == 0) and np.all(np.isfinite(stripped))


def test_lc_refuses_non_finite_training_data(digits):
    x_train, y_train, _, _ = digits
    model = _dense(16)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = x_train[:64].copy()
    x[5, 3] = np.nan
    with pytest.raises(ValueError, match="x holds 1 non-finite value.*sample 5"):
        kc.LC(kc.Prune(0.5), steps=2).fit(model, x, y_train[:64])


def test_tuner_refuses_non_finite_data(digits, tmp_path):
    x_train, y_train, x_val, y_val = digits
    x = x_train.copy()
    x[0, 0] = np.inf
    with pytest.raises(ValueError, match="train_data` x holds 1 non-finite"):
        kc.search.CompressionTuner(
            _dense(16),
            scheme=lambda hp: kc.Prune(hp.Float("density", 0.1, 1.0)),
            train_data=(x, y_train),
            validation_data=(x_val, y_val),
            objective="nonzero_params",
            directory=str(tmp_path),
            project_name="p",
        )


_OPTIMIZERS = {
    "rmsprop_centered": lambda: keras.optimizers.RMSprop(centered=True),
    "rmsprop_momentum": lambda: keras.optimizers.RMSprop(momentum=0.9, centered=True),
    "adam_amsgrad_ema": lambda: keras.optimizers.Adam(amsgrad=True, use_ema=True),
    "adamax": lambda: keras.optimizers.Adamax(),
    "nadam": lambda: keras.optimizers.Nadam(),
    "lion": lambda: keras.optimizers.Lion(1e-4),
    "adafactor": lambda: keras.optimizers.Adafactor(),
    "ftrl": lambda: keras.optimizers.Ftrl(0.1),
    "sgd_nesterov": lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "loss_scale_rmsprop_centered": lambda: keras.optimizers.LossScaleOptimizer(
        keras.optimizers.RMSprop(centered=True)
    ),
    "loss_scale_lion": lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Lion(1e-4)),
}


@pytest.mark.parametrize("name", sorted(_OPTIMIZERS))
def test_gradual_pruning_stays_finite_and_exactly_zero_under_every_optimizer(digits, name):
    x_train, y_train, _, _ = digits
    # Noise keeps every input alive: Adafactor divides 0 by 0 on inputs that are always 0,
    # dense model or not.
    x = x_train[:256] + np.random.default_rng(0).normal(0, 0.05, (256, 64)).astype("float32")
    scheme = kc.Prune(
        0.2,
        schedule=kc.PolynomialDecay(initial_sparsity=0.0, begin_step=0, end_step=1.0, frequency=2),
    )
    pruned = scheme.apply(_dense(16))
    pruned.compile(
        _OPTIMIZERS[name](), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    history = pruned.fit(
        x, y_train[:256], epochs=2, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme)
    )
    assert np.all(np.isfinite(history.history["loss"]))
    kept = []
    for wrapper in masking.iter_wrappers(pruned):
        kernel = np.asarray(wrapper.weight("kernel"))
        mask = np.asarray(wrapper.masks["kernel"])
        assert np.all(np.isfinite(kernel))
        assert np.all(kernel[mask == 0] == 0)
        kept.append(mask.ravel())
    assert np.concatenate(kept).mean() == pytest.approx(0.2, abs=0.01)  # the schedule ran


# ----------------------------------------------------------------------
# Searches: never a result of another run; state that survives interruption.


def _interrupt_first_trial(event, tuner, trial):
    if event == "trial_begin":
        raise KeyboardInterrupt


def test_search_refuses_a_directory_holding_another_models_search(
    files, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    _listen(monkeypatch, _interrupt_first_trial)
    assert cli.main(_search_args(files, files["model"], out)) == 130
    capsys.readouterr()
    assert cli.main(_search_args(files, files["other"], out)) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "another model" in lines[0] and "7,510" in lines[0], lines
    assert "--overwrite" in lines[0]
    # --overwrite starts afresh (interrupted again at once: only the check is under test).
    assert cli.main(_search_args(files, files["other"], out, "--overwrite")) == 130


def test_tuner_refuses_a_project_of_other_data(files, tmp_path):
    x_train, y_train, x_val, y_val = files["digits"]
    model = keras.saving.load_model(files["model"])

    def make(x):
        return kc.search.CompressionTuner(
            model,
            scheme=lambda hp: kc.Prune(hp.Float("density", 0.1, 1.0)),
            train_data=(x, y_train),
            validation_data=(x_val, y_val),
            max_accuracy_drop=0.5,
            objective="nonzero_params",
            directory=str(tmp_path),
            project_name="p",
        )

    make(x_train).save()
    with pytest.raises(ValueError, match="other data.*overwrite=True"):
        make(x_train * 0.5)
    make(x_train)  # the same inputs resume


def test_search_resumes_when_a_crash_emptied_its_oracle_state(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    finished = []

    def interrupt_second_trial(event, tuner, trial):
        if event == "trial_end":
            finished.append(trial.trial_id)
        elif event == "trial_begin" and finished:
            raise KeyboardInterrupt

    _listen(monkeypatch, interrupt_second_trial)
    assert cli.main(_search_args(files, files["model"], out)) == 130
    oracle_json = out / "search" / "oracle.json"
    oracle_json.write_text("")  # what a kill during a non-atomic write leaves
    resumed = []
    _listen(monkeypatch, lambda event, tuner, trial: resumed.append(event))
    assert cli.main(_search_args(files, files["model"], out, "--json")) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trials"] == 2 and resumed == ["trial_begin", "trial_end"]  # one trial kept
    assert [r["status"] for r in result["trial_rows"]] == ["COMPLETED", "COMPLETED"]


def test_search_state_is_written_through_a_temporary_name(files, tmp_path, monkeypatch):
    x_train, y_train, x_val, y_val = files["digits"]
    tuner = kc.search.CompressionTuner(
        keras.saving.load_model(files["model"]),
        scheme=lambda hp: kc.Prune(hp.Float("density", 0.1, 1.0)),
        train_data=(x_train, y_train),
        validation_data=(x_val, y_val),
        max_accuracy_drop=0.5,
        objective="nonzero_params",
        directory=str(tmp_path),
        project_name="p",
    )
    tuner.save()
    project = tmp_path / "p"
    before = {name: (project / name).read_text() for name in ("oracle.json", "tuner0.json")}

    def killed(src, dst):
        raise KeyboardInterrupt  # as a Ctrl-C between writing and renaming

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        tuner.save()
    monkeypatch.undo()
    for name, text in before.items():
        assert (project / name).read_text() == text
        json.loads(text)
    assert not [p for p in os.listdir(project) if p.startswith(".tmp-")]


# ----------------------------------------------------------------------
# Files: inputs are never destroyed; bad or unwritable paths exit 2 before any work.


def test_export_refuses_to_write_over_its_input(files, tmp_path, capsys):
    model = tmp_path / "m.keras"
    model.write_bytes(open(files["model"], "rb").read())
    before = model.read_bytes()
    assert cli.main(["export", str(model), "--out", str(model)]) == 2
    assert "is the input model file" in _error_lines(capsys)[0]
    assert model.read_bytes() == before


@pytest.mark.parametrize(
    "command, out, message",
    [
        ("export", "m.keras.bak", "export writes a LiteRT (.tflite) file"),
        ("compress", "small.tflite", "compress writes a .keras model"),
    ],
)
def test_outputs_must_have_the_extension_of_what_is_written(
    files, tmp_path, capsys, command, out, message
):
    args = [command, files["model"], "--out", str(tmp_path / out)]
    if command == "compress":
        args += ["--data", files["data"], "--scheme", "prune:0.5"]
    assert cli.main(args) == 2
    assert message in _error_lines(capsys)[0]
    assert not os.listdir(tmp_path)


def test_truncated_keras_file_is_reported_as_truncated_not_missing(files, tmp_path, capsys):
    truncated = tmp_path / "t.keras"
    data = open(files["model"], "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    assert cli.main(["bench", str(truncated)]) == 2
    line = _error_lines(capsys)[0]
    assert "truncated or corrupt" in line and "not found" not in line


def test_compress_refuses_non_finite_data_and_writes_nothing(files, tmp_path, capsys):
    x_train, y_train, x_val, y_val = files["digits"]
    x = x_train.copy()
    x[7, 2] = np.nan
    data = tmp_path / "nan.npz"
    np.savez(data, x_train=x, y_train=y_train, x_val=x_val, y_val=y_val)
    out = tmp_path / "out.keras"
    args = [
        "compress",
        files["model"],
        "--data",
        str(data),
        "--scheme",
        "prune:0.5",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 2
    assert "x_train holds 1 non-finite value" in _error_lines(capsys)[0]
    assert not out.exists()


def _unwritable_args(files, command, target):
    return {
        "compress": [
            "compress",
            files["model"],
            "--data",
            files["data"],
            "--scheme",
            "prune:0.5",
            "--out",
            str(target / "o.keras"),
        ],
        "export": ["export", files["model"], "--out", str(target / "o.tflite")],
        "search": _search_args(files, files["model"], target / "run"),
    }[command]


@pytest.mark.parametrize("command", ["compress", "export", "search"])
def test_unwritable_output_directory_exits_2_before_any_work(
    files, tmp_path, monkeypatch, capsys, command
):
    target = tmp_path / "locked"
    target.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(target) else real_access(p, mode)
    )
    monkeypatch.setattr(cli, "load_model", None)  # any work would fail with a TypeError
    assert cli.main(_unwritable_args(files, command, target)) == 2
    assert "cannot write to" in _error_lines(capsys)[0]
    assert not os.listdir(target)


@pytest.mark.parametrize("command", ["compress", "search"])
def test_output_under_a_regular_file_exits_2_before_any_work(
    files, tmp_path, monkeypatch, capsys, command
):
    target = tmp_path / "a_file"
    target.write_text("")
    monkeypatch.setattr(cli, "load_model", None)
    assert cli.main(_unwritable_args(files, command, target)) == 2
    assert str(target) in _error_lines(capsys)[0]


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories"
)
def test_chmod_read_only_output_directory_exits_2(files, tmp_path, capsys):
    target = tmp_path / "locked"
    target.mkdir()
    target.chmod(0o555)
    try:
        assert cli.main(_unwritable_args(files, "export", target)) == 2
    finally:
        target.chmod(0o755)
    assert "cannot write to" in _error_lines(capsys)[0]


# ----------------------------------------------------------------------
# Usage: one validation layer, exit 2 and a message naming the argument, on every subcommand.


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["bench", "{model}", "--runs", "0"], "--runs"),
        (["bench", "{model}", "--threads", "0"], "--threads"),
        (
            [
                "compress",
                "{model}",
                "--data",
                "{data}",
                "--scheme",
                "prune:0.5",
                "--epochs",
                "-1",
                "--out",
                "o.keras",
            ],
            "--epochs",
        ),
        (
            [
                "compress",
                "{model}",
                "--data",
                "{data}",
                "--scheme",
                "prune:0.5",
                "--batch-size",
                "0",
                "--out",
                "o.keras",
            ],
            "--batch-size",
        ),
        (
            ["search", "{model}", "--data", "{data}", "--max-drop", "1.5", "--out", "r"],
            "--max-drop",
        ),
        (
            [
                "search",
                "{model}",
                "--data",
                "{data}",
                "--max-drop",
                "0.1",
                "--max-trials",
                "0",
                "--out",
                "r",
            ],
            "--max-trials",
        ),
        (["demo", "--max-trials", "0"], "--max-trials"),
        (["demo", "--epochs", "-2"], "--epochs"),
    ],
)
def test_bad_counts_exit_2_naming_the_argument(files, capsys, argv, flag):
    argv = [a.format(model=files["model"], data=files["data"]) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err


# ----------------------------------------------------------------------
# Compiled models: a loss need not be serializable to be compressed.


def test_apply_works_on_a_model_compiled_with_a_plain_python_loss():
    def my_loss(y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_true - y_pred))

    model = _dense(16)
    model.compile("adam", my_loss)
    pruned = kc.Prune(0.5).apply(model)
    assert pruned.loss is my_loss
    assert kc.strip(pruned).loss is my_loss


def test_integer_qat_folds_batchnorm_of_a_model_compiled_with_a_plain_python_loss():
    def my_loss(y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_true - y_pred))

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(h))
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(h)))
    model.compile("adam", my_loss, loss_weights=[0.5])
    qat = kc.Quantize("int8", exclude=["bn"]).apply(model)  # the folded BN's name is still known
    assert qat.loss is my_loss and qat._compile_config.config["loss_weights"] == [0.5]
    assert "bn" not in [layer.name for layer in qat.layers]  # folded into the convolution
