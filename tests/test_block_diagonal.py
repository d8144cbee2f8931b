"""kc.BlockDiagonalPrune (MPDCompress): permuted block-diagonal masks, and kc.BlockDense."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier, slow_on_jax

import keras_condensa as kc
from keras_condensa import masking
from keras_condensa.block_dense import BlockDense
from keras_condensa.operators.block_diagonal import BlockDiagonalPrune, block_ids
from keras_condensa.scheme_grammar import SchemeSyntaxError, parse_scheme

TF_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="converts to LiteRT in-process"
)


def _mlp(hidden=(64, 32), seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((64,))]
    layers += [
        keras.layers.Dense(n, activation="relu", name=f"fc{i}") for i, n in enumerate(hidden)
    ]
    layers.append(keras.layers.Dense(10, name="logits"))
    return keras.Sequential(layers, name="mlp")


def _wrapper(model, name):
    return next(w for w in masking.iter_wrappers(model) if w.layer.name == name)


def _permutations(model, name):
    state = _wrapper(model, name).chain("kernel")[0][1]
    return (
        keras.ops.convert_to_numpy(state["rows"]),
        keras.ops.convert_to_numpy(state["cols"]),
    )


def _mask(model, name):
    return keras.ops.convert_to_numpy(_wrapper(model, name).masks["kernel"])


def _max_error(a, b, x):
    return float(
        np.max(np.abs(keras.ops.convert_to_numpy(a(x)) - keras.ops.convert_to_numpy(b(x))))
    )


def test_mask_is_block_diagonal_after_undoing_the_permutations():
    pruned = BlockDiagonalPrune(blocks=4, seed=0, exclude=["logits"]).apply(_mlp())
    for name in ("fc0", "fc1"):
        mask = _mask(pruned, name)
        rows, cols = _permutations(pruned, name)
        undone = mask[np.ix_(rows, cols)]  # rows and columns back in block order
        a, b = mask.shape[0] // 4, mask.shape[1] // 4
        expected = np.kron(np.eye(4), np.ones((a, b)))
        np.testing.assert_array_equal(undone, expected)
        assert mask.mean() == 0.25
        assert not np.array_equal(rows, np.arange(len(rows)))  # really permuted
    assert kc.summary(pruned).masked_density == 0.25


def test_uneven_sizes_give_blocks_differing_by_at_most_one():
    pruned = BlockDiagonalPrune(blocks=8, seed=0).apply(_mlp(hidden=(30,)))
    mask = _mask(pruned, "fc0")  # 64 x 30: rows 8 per block, columns 4 or 3
    rows, cols = _permutations(pruned, "fc0")
    row_ids, col_ids = block_ids(rows, 8), block_ids(cols, 8)
    np.testing.assert_array_equal(mask, row_ids[:, None] == col_ids[None, :])
    assert sorted(np.bincount(col_ids).tolist()) == [3] * 2 + [4] * 6
    assert mask.sum() == 8 * 30


def test_permutations_are_set_by_the_seed_and_survive_save_load_and_strip(tmp_path):
    model = _mlp()
    first = BlockDiagonalPrune(blocks=4, seed=7).apply(model)
    again = BlockDiagonalPrune(blocks=4, seed=7).apply(model)
    other = BlockDiagonalPrune(blocks=4, seed=8).apply(model)
    for a, b in zip(_permutations(first, "fc0"), _permutations(again, "fc0"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(_mask(first, "fc0"), _mask(other, "fc0"))

    unseeded = BlockDiagonalPrune(blocks=4).apply(model)
    unseeded.save(tmp_path / "wrapped.keras")
    loaded = keras.saving.load_model(tmp_path / "wrapped.keras")
    for name in ("fc0", "fc1", "logits"):
        for a, b in zip(_permutations(unseeded, name), _permutations(loaded, name), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(_mask(unseeded, name), _mask(loaded, name))
    assert kc.scheme_of(loaded).get_config() == kc.scheme_of(unseeded).get_config()

    stripped = kc.strip(loaded)
    kernel = keras.ops.convert_to_numpy(stripped.get_layer("fc0").kernel)
    np.testing.assert_array_equal(kernel != 0, _mask(unseeded, "fc0") != 0)


def test_training_keeps_the_mask_and_shrink_gives_block_layers(digits, tmp_path):
    x_train, y_train, x_val, y_val = digits
    scheme = BlockDiagonalPrune(blocks=4, seed=0, exclude=["logits"])
    pruned = compile_classifier(scheme.apply(_mlp()), learning_rate=1e-2)
    pruned.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0)
    assert pruned.evaluate(x_val, y_val, verbose=0)[1] > 0.8
    stripped = kc.strip(pruned)
    for name in ("fc0", "fc1"):
        kernel = keras.ops.convert_to_numpy(stripped.get_layer(name).kernel)
        np.testing.assert_array_equal(kernel != 0, _mask(pruned, name) != 0)

    small = kc.strip(pruned, shrink=True)
    assert [type(layer).__name__ for layer in small.layers] == [
        "BlockDense",
        "BlockDense",
        "Dense",
    ]
    assert small.get_layer("fc1").input_index is not None  # between two block layers
    assert small.get_layer("fc1").output_index is None  # folded into the logits' rows
    assert _max_error(small, stripped, x_val) < 1e-5
    covered = 64 * 64 + 64 * 32
    kernels = sum(int(np.prod(small.get_layer(n).kernel.shape)) for n in ("fc0", "fc1"))
    assert kernels == covered // 4

    small.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras", compile=False)
    assert _max_error(loaded, stripped, x_val) < 1e-5


def test_shrink_covers_1x1_convolutions_and_functional_branches():
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((6, 6, 8))
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inputs)
    h = layers.ReLU()(layers.Conv2D(32, 1, name="pw1")(h))
    h = layers.Conv2D(16, 1, activation="relu", name="pw2")(h)
    h = layers.Flatten()(layers.Conv2D(8, 3, name="conv3")(h))
    a = layers.Dense(32, activation="relu", name="d1")(h)
    h = layers.Add()([a, layers.Dense(32, name="d2")(a)])
    outputs = layers.Dense(10, activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs)
    pruned = BlockDiagonalPrune(blocks=4, seed=1).apply(model)
    wrapped = {w.layer.name for w in masking.iter_wrappers(pruned)}
    assert wrapped == {"pw1", "pw2", "d1", "d2", "out"}  # not the 3x3 convolutions
    small = kc.shrink(pruned)
    kinds = {layer.name: type(layer).__name__ for layer in small.layers}
    assert {n for n, k in kinds.items() if k == "BlockDense"} == {"pw1", "pw2", "d1", "d2", "out"}
    assert small.get_layer("pw1").input_index is None  # folded into conv's filters
    assert small.get_layer("d1").output_index is not None  # two consumers: gathered
    x = np.random.default_rng(0).random((4, 6, 6, 8)).astype("float32")
    assert _max_error(small, kc.strip(pruned), x) < 1e-5


def test_shrink_reads_blocks_from_zeros_and_leaves_unstructured_layers_dense():
    x = np.random.default_rng(0).random((8, 64)).astype("float32")
    stripped = kc.strip(BlockDiagonalPrune(blocks=4, seed=0, exclude=["logits"]).apply(_mlp()))
    kernel = keras.ops.convert_to_numpy(stripped.get_layer("fc0").kernel).copy()
    kernel[3], kernel[:, 5] = 0, 0  # an input and an output with no weight left
    stripped.get_layer("fc0").kernel.assign(kernel)
    small = kc.shrink(stripped)
    assert isinstance(small.get_layer("fc0"), BlockDense)
    assert _max_error(small, stripped, x) < 1e-5

    unstructured = kc.shrink(kc.Prune(0.25, exclude=["logits"]).apply(_mlp()))
    assert not any(isinstance(layer, BlockDense) for layer in unstructured.layers)


@TF_ONLY
def test_shrunk_model_exports_to_litert_and_matches(tmp_path):
    import tflite_export as te  # noqa: PLC0415 - TensorFlow only

    pruned = BlockDiagonalPrune(blocks=4, seed=0, exclude=["logits"]).apply(_mlp())
    small = kc.shrink(pruned)
    path = tmp_path / "small.tflite"
    te.export(small, path)
    assert te.op_counts(path)["BATCH_MATMUL"] == 2
    x = np.random.default_rng(0).random((8, 64)).astype("float32")
    assert te.verify(path, small, x).max_abs_error < 1e-5


def test_block_dense_checks_its_input_width():
    layer = BlockDense(blocks=2, block_inputs=3, block_units=2)
    with pytest.raises(ValueError, match="takes 6 inputs in block order"):
        layer(np.zeros((1, 5), "float32"))
    with pytest.raises(ValueError, match="input_index must be a list of 6 ints"):
        BlockDense(blocks=2, block_inputs=3, block_units=2, input_index=[0, 1])


@pytest.mark.parametrize("blocks", [1, 0, 2.5, True, "8", None])
def test_blocks_must_be_an_int_of_at_least_two(blocks):
    with pytest.raises(ValueError, match="blocks must be an int >= 2"):
        BlockDiagonalPrune(blocks=blocks)


def test_a_layer_smaller_than_the_blocks_is_left_dense_unless_named():
    pruned = BlockDiagonalPrune(blocks=16).apply(_mlp())
    wrapped = [
        layer.layer.name for layer in pruned.layers if isinstance(layer, kc.CompressionWrapper)
    ]
    assert "logits" not in wrapped and wrapped  # 10 outputs cannot make 16 blocks
    with pytest.raises(ValueError, match=r"'logits'.*32 inputs x 10 outputs cannot split"):
        BlockDiagonalPrune(blocks=16, include=["logits"]).apply(_mlp())


def test_other_layers_are_left_dense_and_naming_them_is_an_error():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    pruned = BlockDiagonalPrune(blocks=2).apply(model)
    assert [w.layer.name for w in masking.iter_wrappers(pruned)] == ["logits"]
    with pytest.raises(ValueError, match="not a Dense or 1x1 convolution"):
        BlockDiagonalPrune(blocks=2, include=["conv"]).apply(model)


def test_scheme_grammar_word():
    scheme = parse_scheme("blockdiag:4")
    assert isinstance(scheme, BlockDiagonalPrune) and scheme.blocks == 4
    with pytest.raises(SchemeSyntaxError, match="blocks must be an int >= 2"):
        parse_scheme("blockdiag:1")


def _mobilenet_v2():
    model = keras.applications.MobileNetV2(
        (32, 32, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:  # at their initial values, wrongly permuted statistics hide
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in (layer.moving_mean, layer.beta):
                v.assign(rng.normal(0.0, 0.3, v.shape).astype("float32"))
            for v in (layer.moving_variance, layer.gamma):
                v.assign(rng.uniform(0.5, 2.0, v.shape).astype("float32"))
    x = np.random.default_rng(1).uniform(0.0, 1.0, (2, 32, 32, 3)).astype("float32")
    return model, x, ("block_2_add", "predictions"), ["predictions"]  # early add, logits


def _gpt2():
    keras_hub = pytest.importorskip("keras_hub")
    model = keras_hub.models.GPT2Backbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64
    )
    rng = np.random.default_rng(1)
    x = {"token_ids": rng.integers(0, 100, (2, 16)), "padding_mask": np.ones((2, 16), "int32")}
    return model, x, (model.layers[-1].name,), ["position_embedding"]  # no prunable weights


@pytest.mark.parametrize(
    "build", [pytest.param(_mobilenet_v2, marks=slow_on_jax), _gpt2], ids=["mobilenet_v2", "gpt2"]
)
def test_models_we_did_not_write_shrink_to_the_masked_function(build):
    keras.utils.set_random_seed(0)
    model, x, compared, exclude = build()
    pruned = BlockDiagonalPrune(blocks=4, seed=0, exclude=exclude).apply(model)
    assert kc.summary(pruned).masked_density == 0.25
    small = kc.shrink(pruned)
    for name in compared:
        a, b = (keras.Model(m.input, m.get_layer(name).output) for m in (pruned, small))
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(b(x)), keras.ops.convert_to_numpy(a(x)), atol=1e-4
        )
    if build is _gpt2:  # Dense layers inside the transformer blocks are masked (left Dense)
        assert len(list(masking.iter_wrappers(pruned))) == 2
        return
    pointwise = {w.layer.name for w in masking.iter_wrappers(pruned)}
    assert {n.name for n in small.layers if isinstance(n, BlockDense)} == pointwise
    # expand -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> project: no gather after expand.
    assert small.get_layer("block_1_expand").output_index is None
    kernels = [
        keras.ops.convert_to_numpy(m.get_layer("block_1_depthwise").kernel) for m in (pruned, small)
    ]
    assert not np.array_equal(*kernels)  # its channels permuted with expand's outputs
