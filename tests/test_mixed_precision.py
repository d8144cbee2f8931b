"""Mixed precision: one bit-width per layer as hyperparameters, one LiteRT file per layout."""

import re

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import compile_classifier, quantized_weights, small_cnn, trained_mlp

import keras_condensa as kc
from keras_condensa import masking

TENSORFLOW_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="LiteRT export converts under TensorFlow; the TensorFlow leg covers it",
)


def _mlp4(seed=0):
    """64 -> fc1 -> fc2 -> dropout -> fc3 -> logits: four quantizable layers in a chain."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(48, activation="relu", name="fc1"),
            keras.layers.Dense(40, activation="relu", name="fc2"),
            keras.layers.Dropout(0.1, name="drop"),
            keras.layers.Dense(32, activation="relu", name="fc3"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="mlp4",
    )


def _dtypes_of(wrapped):
    """`{layer: quantizer dtype}` of the weights a `kc.Quantize` transforms in a wrapped model."""
    found = {}
    for wrapper in masking.iter_wrappers(wrapped):
        for path in quantized_weights(wrapper):
            (op,) = [op for op, _ in wrapper.chain(path) if isinstance(op, kc.Quantize)]
            found[wrapper.layer.name] = op.dtype
    return found


def _file_weights(path, layers):
    """`{layer: kernel tensor}` of a LiteRT file, from the tensor names the converter keeps."""
    import tflite_export as te

    found = {}
    for tensor in te.inspect_tflite(path):
        if not tensor.bytes or len(tensor.shape) < 2:
            continue
        parts = tensor.name.split(";")[0].split("/")
        for name in layers:
            if any(re.fullmatch(rf"{name}(_compressed)?(_\d+)?", part) for part in parts):
                found[name] = tensor
    return found


def _file_dtypes(path, layers):
    return {name: t.dtype for name, t in _file_weights(path, layers).items()}


def test_one_ordered_bits_choice_per_layer_quantize_covers():
    model = small_cnn()
    scheme = kc.search.mixed_precision_scheme(model, choices=("int8", "skip", "int4"))
    assert scheme.layers == ("conv1", "conv2", "fc", "logits")
    hp = keras_tuner.HyperParameters()
    default = scheme(hp)
    assert [p.name for p in hp.space] == ["bits/conv1", "bits/conv2", "bits/fc", "bits/logits"]
    assert all(p.values == [4, 8, 32] and p.ordered and p.default == 8 for p in hp.space)
    # Every layer at int8 is the uniform scheme itself, which kc.Quantize("int8") would be.
    assert default.get_config() == kc.Quantize("int8").get_config()

    narrowed = kc.search.mixed_precision_scheme(model, include=["conv2", "fc"], exclude="fc")
    assert narrowed.layers == ("conv2",)


def test_each_layer_trains_with_the_quantizer_of_its_bits(digits, tmp_path):
    x_train, y_train, x_val, _ = digits
    x_train, x_val = x_train.reshape(-1, 8, 8, 1), x_val.reshape(-1, 8, 8, 1)
    model = small_cnn()
    scheme = kc.search.mixed_precision_scheme(model, choices=("int4", "int8", "skip"))
    values = {"bits/conv1": 8, "bits/conv2": 4, "bits/fc": 4, "bits/logits": 32}
    assert scheme.resolve(values) == {
        "conv1": "int8",
        "conv2": "int4",
        "fc": "int4",
        "logits": "float32",
    }
    ops = scheme.build(values)
    # Two Quantize operators with disjoint layers compose: the exclusivity check allows them.
    assert [(op.dtype, op.include) for op in ops.operators()] == [
        ("int4", ("conv2", "fc")),
        ("int8", ()),
    ]
    wrapped = compile_classifier(ops.apply(model))
    assert _dtypes_of(wrapped) == {"conv1": "int8", "conv2": "int4", "fc": "int4"}
    wrapped.fit(x_train[:128], y_train[:128], epochs=1, batch_size=64, verbose=0)
    final = kc.strip(wrapped)
    assert _dtypes_of(final) == {"conv1": "int8", "conv2": "int4", "fc": "int4"}
    path = tmp_path / "mixed.keras"
    final.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x_val, verbose=0), final.predict(x_val, verbose=0))


@pytest.mark.parametrize("loaded", [False, True])
def test_skip_between_quantized_layers_resolves_to_int8(loaded, tmp_path):
    model = _mlp4()
    if loaded:  # a Sequential loaded from a file keeps the nodes of its partial rebuilds
        model.save(tmp_path / "mlp.keras")
        model = keras.saving.load_model(tmp_path / "mlp.keras")
    scheme = kc.search.mixed_precision_scheme(model, choices=("int4", "int8", "skip"))

    def resolved(*bits):
        return list(scheme.resolve(dict(zip(scheme.layers, bits, strict=True))).values())

    # fc2 sits between two quantized tensors: the converter would quantize it anyway.
    assert resolved(8, 32, 8, 8) == ["int8"] * 4
    # Two float neighbours keep each other float; the first and last layers touch float
    # model inputs and outputs.
    assert resolved(8, 32, 32, 8) == ["int8", "float32", "float32", "int8"]
    assert resolved(32, 4, 8, 32) == ["float32", "int4", "int8", "float32"]
    # Words work too, and a layer-by-name dict.
    assert scheme.resolve({"fc1": "skip", "fc2": "int4", "fc3": "skip", "logits": "int8"}) == {
        "fc1": "float32",
        "fc2": "int4",
        "fc3": "int8",
        "logits": "int8",
    }


@TENSORFLOW_ONLY
def test_the_litert_file_stores_each_layer_at_its_resolved_type(digits, tmp_path):
    import tflite_export as te

    x_train, y_train, x_val, _ = digits
    model = compile_classifier(_mlp4())
    model.fit(x_train, y_train, epochs=6, batch_size=32, verbose=0)
    scheme = kc.search.mixed_precision_scheme(model, choices=("int4", "int8", "skip"))
    values = {"fc1": "skip", "fc2": "int4", "fc3": "skip", "logits": "int8"}
    ops = scheme.build(values)
    wrapped = compile_classifier(ops.apply(model))
    wrapped.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0, callbacks=kc.callbacks(ops))
    final = kc.strip(wrapped)
    with pytest.warns(te.ExportWarning, match=r"\['FULLY_CONNECTED'\] still compute in float"):
        result = te.export(final, tmp_path / "mixed.tflite", quantize="int8")
    # One file, three types: fc1 float32 (fed by the float model input), fc2 packed int4,
    # fc3 int8 (its "skip" was between two quantized tensors), logits int8.
    assert _file_dtypes(result.path, scheme.layers) == scheme.resolve(values)
    kernels = _file_weights(result.path, scheme.layers)
    assert kernels["fc1"].bytes == 64 * 48 * 4  # float32
    assert kernels["fc2"].bytes == 48 * 40 // 2  # two 4-bit weights a byte
    check = te.verify(result, final, x_val)
    assert check.top1_agreement >= 0.99, check


@TENSORFLOW_ONLY
def test_a_short_search_meets_the_floor_with_fewer_bytes_than_uniform_int8(digits, tmp_path):
    x_train, y_train, x_val, y_val = digits
    model = trained_mlp(digits, epochs=8)
    scheme = kc.search.mixed_precision_scheme(model)
    assert scheme.choices == ("int4", "int8", "skip")
    tuner = kc.search.CompressionTuner(
        model,
        scheme=scheme,
        train_data=(x_train, y_train),
        validation_data=(x_val, y_val),
        max_accuracy_drop=0.02,
        objective="tflite_bytes",
        quantize="int8",
        max_trials=3,
        fine_tune_epochs=1,
        seed=0,
        directory=str(tmp_path),
        project_name="bits",
    )
    tuner.search()
    trials = {tuple(t.hyperparameters.values.values()): t for t in tuner.oracle.trials.values()}
    # The oracle proposes values of the ordered choices only. Its first point, the maximum
    # corner, leaves every layer float: that trial fails at once (nothing to quantize).
    assert set(trials) <= {(a, b) for a in (4, 8, 32) for b in (4, 8, 32)}, list(trials)
    assert trials[(32, 32)].status == "FAILED"
    assert "Every layer is left float" in trials[(32, 32)].message
    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    assert len(completed) >= 2 and (8, 8) in trials, list(trials)
    for trial in completed:  # Every trial's file holds the types its values resolve to.
        trial_file = tmp_path / "bits" / f"trial_{trial.trial_id}" / "model.tflite"
        assert _file_dtypes(trial_file, scheme.layers) == scheme.resolve(trial.hyperparameters)
    uniform_int8 = trials[(8, 8)].metrics.get_last_value("tflite_bytes")
    best = tuner.best_trial()
    assert best.metrics.get_last_value("val_accuracy") >= tuner.accuracy_floor
    layout = scheme.resolve(best.hyperparameters)
    # On digits an int4 fc1 meets a 2-point floor: the answer is smaller than uniform int8.
    assert "int4" in layout.values(), layout
    assert best.metrics.get_last_value("tflite_bytes") < uniform_int8, layout


@TENSORFLOW_ONLY
def test_a_trials_skip_next_to_the_output_stays_float32_in_its_file(digits, tmp_path):
    import tflite_export as te

    x_train, y_train, x_val, y_val = digits
    model = trained_mlp(digits, epochs=8)
    scheme = kc.search.mixed_precision_scheme(model)
    fixed = keras_tuner.HyperParameters()
    fixed.Fixed("bits/fc1", 8)
    fixed.Fixed("bits/logits", 32)  # "skip": logits feeds the float model output
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("tflite_bytes", "min"),
        max_trials=1,
        hyperparameters=fixed,
        tune_new_entries=False,
    )
    tuner = kc.search.CompressionTuner(
        model,
        scheme=scheme,
        train_data=(x_train, y_train),
        validation_data=(x_val, y_val),
        max_accuracy_drop=0.02,
        quantize="int8",
        fine_tune_epochs=1,
        seed=0,
        oracle=oracle,
        directory=str(tmp_path),
        project_name="skip",
    )
    tuner.search()
    (trial,) = tuner.oracle.trials.values()
    assert trial.status == "COMPLETED", trial.message
    assert scheme.resolve(trial.hyperparameters) == {"fc1": "int8", "logits": "float32"}
    # The trial's file is converted from the model's own ranges, not calibrated on
    # train_data (which would quantize the float logits layer too).
    trial_dir = tmp_path / "skip" / f"trial_{trial.trial_id}"
    kernels = _file_weights(trial_dir / "model.tflite", scheme.layers)
    assert {name: t.dtype for name, t in kernels.items()} == {"fc1": "int8", "logits": "float32"}
    assert kernels["logits"].bytes == 32 * 10 * 4
    trained = keras.saving.load_model(trial_dir / "model.keras")
    check = te.verify(str(trial_dir / "model.tflite"), trained, x_val)
    assert check.top1_agreement >= 0.99, check


@pytest.mark.parametrize(
    ("choices", "match"),
    [
        (("int4", "int2"), r"Unknown choice 'int2': each layer chooses among \('int4', 'int8'"),
        (("int8", "float16"), r"cannot hold 'float16': float16 weights are a whole-file mode"),
        (("int8",), r"at least two choices .* kc.Quantize\(dtype\)"),
        (("int8", "int8"), r"at least two choices"),
    ],
)
def test_bad_choices_say_what_is_allowed(choices, match):
    with pytest.raises(ValueError, match=match):
        kc.search.mixed_precision_scheme(small_cnn(), choices=choices)


def test_bad_models_layers_and_values_get_clear_errors():
    keras.utils.set_random_seed(0)
    weightless = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()], name="flat")
    with pytest.raises(ValueError, match=r"Model 'flat' has no layer that kc.Quantize covers"):
        kc.search.mixed_precision_scheme(weightless)
    with pytest.raises(ValueError, match=r"include= names layers that are not in model .*'fc9'"):
        kc.search.mixed_precision_scheme(small_cnn(), include=["fc", "fc9"])
    with pytest.raises(TypeError, match="Expected a keras.Model"):
        kc.search.mixed_precision_scheme("model.keras")

    scheme = kc.search.mixed_precision_scheme(small_cnn(), choices=("int4", "skip"))
    with pytest.raises(ValueError, match=r"Every layer is left float"):
        scheme.build(dict.fromkeys(scheme.layers, "skip"))
    with pytest.raises(ValueError, match=r"No bit-width for layer 'logits': give 'bits/logits'"):
        scheme.build({"conv1": 4, "conv2": 4, "fc": 4})
    with pytest.raises(ValueError, match=r"layer 'fc' must be one of \[4, 32\].*Received: 8"):
        scheme.build({"conv1": 4, "conv2": 4, "fc": 8, "logits": 4})
