"""Structured multi-hashing: `MultiHash` (fewer trainable variables, decoded kernels)."""

import math

import keras
import numpy as np
import pytest
from conftest import compile_classifier, small_cnn

import keras_condensa as kc
from keras_condensa import masking
from keras_condensa.operators.multi_hash import (
    MultiHash,
    decode,
    fit,
    hashed_variables,
    layout,
    permutations,
)
from keras_condensa.scheme_grammar import parse_scheme


def _images(digits):
    x_train, y_train, x_val, y_val = digits
    return x_train.reshape(-1, 8, 8, 1), y_train, x_val.reshape(-1, 8, 8, 1), y_val


def _size(variables):
    return sum(math.prod(v.shape) for v in variables)


@pytest.fixture(scope="module")
def trained_cnn(digits):
    x_train, y_train, _, _ = _images(digits)
    model = compile_classifier(small_cnn())
    model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
    return model


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu", name="fc1"),
            keras.layers.Dense(96, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


# -- the variable budget ------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.9])
def test_ratio_sets_the_trainable_variable_count(ratio):
    model = _mlp()
    hashed = MultiHash(ratio, exclude=["logits"]).apply(model)
    counts = hashed_variables(hashed)
    assert set(counts) == {"fc1/kernel", "fc2/kernel"}
    for variables, entries in counts.values():
        assert ratio * entries * 0.97 <= variables <= ratio * entries
    # The model itself trains that many fewer variables: the kernels are frozen.
    covered = sum(n for _, n in counts.values())
    kept = sum(v for v, _ in counts.values())
    assert _size(hashed.trainable_weights) == _size(model.trainable_weights) - covered + kept
    assert not any(w.layer.kernel.trainable for w in masking.iter_wrappers(hashed))


def test_layout_stays_within_the_budget_and_near_it():
    for size in (256, 640, 1000, 4608, 12_345, 32_768, 100_000):
        for ratio in (0.05, 0.1, 0.25, 0.5):
            for products, scales in ((1, 1), (2, 32), (3, 10)):
                found = layout(size, ratio, products, scales)
                budget = math.floor(ratio * size + 1e-9)
                if found is None:
                    m = math.isqrt(size - 1) + 1
                    assert budget < products * (m + math.ceil(size / m)) + scales
                    continue
                m, n, ranks = found
                count = sum(ranks) * (m + n) + scales
                assert m * n >= size and min(ranks) >= 1 and max(ranks) - min(ranks) <= 1
                assert count <= budget
                assert budget - count <= sum(ranks) + 2 * math.isqrt(size), (size, ratio)


# -- fine-tuning, strip, save and load ----------------------------------------------


def test_fine_tunes_the_digits_cnn_and_strips_to_its_predictions(trained_cnn, digits, tmp_path):
    x_train, y_train, x_val, y_val = _images(digits)
    hashed = MultiHash(0.25, exclude=["conv1"]).apply(trained_cnn)
    counts = hashed_variables(hashed)
    assert sum(v for v, _ in counts.values()) <= 0.25 * sum(n for _, n in counts.values())
    # The fit at apply time: each decoded kernel points along the trained one (a random
    # start has a cosine near 0), with the trained output channels' root mean squares.
    for wrapper in masking.iter_wrappers(hashed):
        trained = np.asarray(trained_cnn.get_layer(wrapper.layer.name).kernel)
        decoded = keras.ops.convert_to_numpy(wrapper.effective_value("kernel"))
        cosine = np.sum(decoded * trained) / np.linalg.norm(decoded) / np.linalg.norm(trained)
        assert cosine > 0.5
        axes = tuple(range(trained.ndim - 1))
        np.testing.assert_allclose(
            np.sqrt(np.mean(decoded**2, axes)), np.sqrt(np.mean(trained**2, axes)), rtol=1e-4
        )
    stored = np.asarray(hashed.get_layer("fc_compressed").layer.kernel).copy()
    compile_classifier(hashed).fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    accuracy = hashed.evaluate(x_val, y_val, verbose=0)[1]
    assert accuracy > 0.9
    np.testing.assert_array_equal(hashed.get_layer("fc_compressed").layer.kernel, stored)

    final = kc.strip(hashed)
    assert not list(masking.iter_wrappers(final))
    assert _size(final.trainable_weights) == _size(trained_cnn.trainable_weights)
    expected = np.asarray(hashed.predict(x_val, verbose=0))
    np.testing.assert_allclose(np.asarray(final.predict(x_val, verbose=0)), expected, atol=1e-5)

    path = tmp_path / "hashed.keras"
    hashed.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded.predict(x_val, verbose=0)), expected, atol=1e-6)
    assert _size(loaded.trainable_weights) == _size(hashed.trainable_weights)
    assert kc.scheme_of(loaded).get_config() == kc.scheme_of(hashed).get_config()
    wrapper = loaded.get_layer("fc_compressed")
    before = np.asarray(wrapper.states[(0, "kernel")]["u0"]).copy()
    loaded.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)  # compiled when saved
    assert not np.allclose(before, wrapper.states[(0, "kernel")]["u0"])
    np.testing.assert_array_equal(wrapper.layer.kernel, stored)
    assert loaded.evaluate(x_val, y_val, verbose=0)[1] > 0.85


def test_hashed_kernel_is_not_a_low_rank_factorization_of_itself(trained_cnn):
    hashed = MultiHash(0.25, exclude=["conv1"]).apply(trained_cnn)
    wrapper = hashed.get_layer("fc_compressed")
    state = wrapper.states[(0, "kernel")]
    assert sum(state["ranks"]) == 22
    kernel = keras.ops.convert_to_numpy(wrapper.effective_value("kernel"))  # (512, 64)
    assert np.linalg.matrix_rank(kernel) == 64  # full rank, from total rank 22
    first, second = state["perms"]
    assert len(np.unique(first)) == first.size and not np.array_equal(first, second)
    np.testing.assert_allclose(
        np.asarray(wrapper.finalized_value("kernel")), kernel, rtol=1e-5, atol=1e-6
    )


def test_fit_and_decode_are_deterministic():
    target = np.random.default_rng(0).standard_normal(3000)
    m, n, ranks = layout(3000, 0.25, 2, 1)
    perms = permutations(7, 3000, m, n, 2)
    assert all(
        np.array_equal(a, b) for a, b in zip(perms, permutations(7, 3000, m, n, 2), strict=True)
    )
    assert not np.array_equal(perms[0], permutations(8, 3000, m, n, 2)[0])
    factors = fit(target, perms, m, n, ranks)
    once, again = decode(factors, perms), decode(fit(target, perms, m, n, ranks), perms)
    np.testing.assert_array_equal(once, again)
    # Each sweep is a least-squares step: more sweeps never fit worse.
    one = np.linalg.norm(decode(fit(target, perms, m, n, ranks, sweeps=1), perms) - target)
    assert np.linalg.norm(once - target) <= one + 1e-9 < np.linalg.norm(target)


# -- configuration and bad input ----------------------------------------------------


def test_config_round_trip_and_scheme_word():
    op = MultiHash(0.1, products=3, scale="layer", seed=5, exclude=[keras.layers.Conv2D])
    again = MultiHash.from_config(op.get_config())
    assert again.get_config() == op.get_config()
    assert again.exclude == (keras.layers.Conv2D,)
    parsed = parse_scheme("hash:0.25")
    assert isinstance(parsed, MultiHash) and parsed.ratio == 0.25


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": -0.5}, "ratio"),
        ({"ratio": True}, "ratio"),
        ({"ratio": "0.25"}, "ratio"),
        ({"products": 0}, "products"),
        ({"products": 1.5}, "products"),
        ({"seed": -1}, "seed"),
        ({"scale": "row"}, "scale"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiHash(**kwargs)


def test_layer_too_small_names_it_and_the_fix():
    # Default coverage leaves a layer too small to hash dense; naming it is an error.
    assert set(hashed_variables(MultiHash(0.1).apply(_mlp()))) == {"fc1/kernel", "fc2/kernel"}
    with pytest.raises(
        ValueError, match=r"'logits'.*ratio to at least 0\.14\b.*exclude=\['logits'\]"
    ):
        MultiHash(0.1, include=["fc1", "logits"]).apply(_mlp())
    # Both fixes work: the ratio named, or leaving the layer out.
    assert "logits/kernel" in hashed_variables(MultiHash(0.14).apply(_mlp()))
    with pytest.raises(ValueError, match=r"'tiny'.*To fix it, leave the layer out"):
        MultiHash(0.5, include=["tiny"]).apply(
            keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="tiny")])
        )


def test_must_be_the_first_operator_of_a_weight():
    with pytest.raises(ValueError, match="first"):
        kc.Compose([kc.Prune(0.5), MultiHash(0.25, exclude=["logits"])]).apply(_mlp())
    with pytest.raises(ValueError, match="hashed twice"):
        kc.Compose([MultiHash(0.25), MultiHash(0.5)]).apply(_mlp())
    scheme = kc.Compose([MultiHash(0.25, exclude=["logits"]), kc.Quantize("int8")])
    assert set(hashed_variables(scheme.apply(_mlp()))) == {"fc1/kernel", "fc2/kernel"}
