"""kc.LC: Condensa's L-C optimizer on LeNet-300-100 and digits."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier, lenet_300_100, slow_on_torch, weights_of

import keras_condensa as kc
from keras_condensa import masking
from keras_condensa.lc import LCPenalty

EPOCHS = 10  # the fine-tuning budget of benchmarks/accuracy.py


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def _kernel_density(model):
    kernels = [
        np.asarray(keras.ops.convert_to_numpy(layer.kernel))
        for layer in model.layers
        if hasattr(layer, "kernel")
    ]
    return sum(int(np.count_nonzero(k)) for k in kernels) / sum(k.size for k in kernels)


def _lc(model, digits, density, seed=0):
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(seed)
    lc = kc.LC(kc.Prune(density=density), steps=20)  # the default mu schedule and lr_end
    return lc, lc.fit(model, x_train, y_train, epochs=EPOCHS, batch_size=32, seed=seed)


@pytest.fixture(scope="module")
def lc_run(trained_lenet, digits):
    """L-C to density 0.05 from the trained LeNet (EPOCHS epochs), and the model it started from."""
    model, _ = trained_lenet
    before = weights_of(model)
    lc, result = _lc(model, digits, 0.05)
    return lc, result, before


def _gradual(model, digits, density):
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    scheme = kc.Prune(
        density, schedule=kc.PolynomialDecay(begin_step=0.0, end_step=0.7, frequency=10)
    )
    pruned = compile_classifier(scheme.apply(model))
    pruned.fit(
        x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme)
    )
    return kc.strip(pruned)


@pytest.fixture(scope="module")
def more_lenets(digits):
    """Two more dense LeNets (seeds 1 and 2), trained as `trained_lenet` is."""
    x_train, y_train, _, _ = digits
    models = []
    for seed in (1, 2):
        model = compile_classifier(lenet_300_100(seed))
        model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
        models.append(model)
    return models


@slow_on_torch
def test_lc_at_density_005_is_at_least_as_accurate_as_gradual_pruning(
    lc_run, trained_lenet, more_lenets, digits
):
    """Same epochs, from three dense LeNets: on average L-C is at least as accurate.

    One model's comparison is within the noise of 450 validation digits (a
    point is 4.5 digits), so the test averages three.
    """
    _, _, x_val, y_val = digits
    lc_accuracies, gradual_accuracies = [], []
    for i, model in enumerate([trained_lenet[0], *more_lenets]):
        result = lc_run[1] if i == 0 else _lc(model, digits, 0.05)[1]
        assert _kernel_density(result) == pytest.approx(0.05, abs=0.002)
        lc_accuracies.append(_accuracy(result, x_val, y_val))
        gradual_accuracies.append(_accuracy(_gradual(model, digits, 0.05), x_val, y_val))
    assert np.mean(lc_accuracies) >= np.mean(gradual_accuracies), (
        lc_accuracies,
        gradual_accuracies,
    )


@slow_on_torch
def test_lc_at_density_002_beats_gradual_pruning(trained_lenet, digits):
    model, _ = trained_lenet
    _, result = _lc(model, digits, 0.02)
    gradual = _gradual(model, digits, 0.02)
    assert _kernel_density(result) == pytest.approx(0.02, abs=0.002)
    lc_accuracy = _accuracy(result, digits[2], digits[3])
    gradual_accuracy = _accuracy(gradual, digits[2], digits[3])
    assert lc_accuracy >= gradual_accuracy + 0.01, (lc_accuracy, gradual_accuracy)


@slow_on_torch
def test_penalty_beats_training_then_projecting(lc_run, trained_lenet, digits):
    """With mu = 0, L-C is plain training plus a final projection: the penalty must do better."""
    model, _ = trained_lenet
    x_train, y_train, x_val, y_val = digits
    _, result, _ = lc_run
    keras.utils.set_random_seed(0)
    plain = compile_classifier(kc.strip(model))
    plain.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
    projected = kc.strip(kc.Prune(density=0.05).apply(plain))
    assert _kernel_density(projected) == pytest.approx(0.05, abs=0.002)
    assert _accuracy(result, x_val, y_val) > _accuracy(projected, x_val, y_val) + 0.1


def test_lc_returns_a_plain_compiled_model_and_leaves_the_input_alone(
    lc_run, trained_lenet, digits
):
    model, _ = trained_lenet
    lc, result, before = lc_run
    for a, b in zip(before, weights_of(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not list(masking.iter_wrappers(result))
    assert result is not model and result.optimizer is not None
    assert result.evaluate(digits[2], digits[3], verbose=0)[1] > 0.9  # compiled with accuracy
    # mu grew geometrically from mu_init, one value per step (plus the initial projection)
    assert lc.mus[0] == pytest.approx(lc.mu_init)
    assert lc.mus[-1] == pytest.approx(lc.mu_init * lc.mu_multiplier**lc.steps)


def test_lc_projects_onto_prune_and_int8(trained_lenet, digits):
    model, _ = trained_lenet
    x_train, y_train, x_val, y_val = digits
    scheme = kc.Compose([kc.Prune(density=0.1), kc.Quantize("int8")])
    result = kc.LC(scheme, steps=10, mu_init=0.1).fit(model, x_train, y_train, epochs=4, seed=0)
    assert _kernel_density(result) == pytest.approx(0.1, abs=0.005)
    for layer in result.layers:
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel))
        # symmetric per-tensor int8: every value is an integer multiple of one scale
        scale = np.abs(kernel).max() / 127
        np.testing.assert_allclose(kernel / scale, np.round(kernel / scale), atol=1e-3)
    assert _accuracy(result, x_val, y_val) > 0.8


def test_lc_penalty_and_distillation_compose_through_one_loss_mechanism(trained_lenet, digits):
    model, _ = trained_lenet
    x_train, y_train, x_val, y_val = digits
    lc = kc.LC(kc.Prune(density=0.1), steps=4, mu_init=0.1)
    # The penalty is an operator's loss: a layer loss of the model being trained.
    trained = LCPenalty(lc.scheme).apply(model)
    trained(x_val[:4])
    assert len(trained.losses) == 3  # one term per penalized kernel
    result = lc.fit(model, x_train, y_train, epochs=2, seed=0, teacher=model, alpha=0.5)
    assert _kernel_density(result) == pytest.approx(0.1, abs=0.005)
    assert _accuracy(result, x_val, y_val) > 0.8
    assert len(lc.history.history["loss"]) == 4 and all(np.isfinite(lc.history.history["loss"]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mu_init": 0.0}, "mu_init must be a finite number > 0. Received: mu_init=0.0"),
        ({"mu_init": -1e-3}, "mu_init"),
        ({"mu_multiplier": 0.5}, "mu_multiplier must be a finite number >= 1"),
        ({"mu_cap": 0}, "mu_cap must be a finite number > 0"),
        ({"mu_init": 1.0, "mu_cap": 0.1}, "mu_cap must be >= mu_init"),
        ({"steps": 0}, "steps .* positive integer. Received: steps=0"),
    ],
)
def test_bad_mu_parameters_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kc.LC(kc.Prune(0.1), **kwargs)


def test_schemes_lc_cannot_project_name_the_operator():
    with pytest.raises(ValueError, match="L-C cannot run Prune with a schedule.*Drop schedule="):
        kc.LC(kc.Prune(0.1, schedule=kc.PolynomialDecay(end_step=100)))
    with pytest.raises(ValueError, match=r"cannot project onto Quantize\(mode='post_training'\)"):
        kc.LC(kc.Compose([kc.Prune(0.1), kc.Quantize("int8", mode="post_training")]))
    with pytest.raises(TypeError, match="LC takes a keras_condensa scheme"):
        kc.LC("prune:0.1")
    uncompiled = lenet_300_100()
    with pytest.raises(ValueError, match="is not compiled"):
        kc.LC(kc.Prune(0.1)).fit(uncompiled, np.zeros((4, 64)), np.zeros(4))


def test_lc_batches_gather_from_the_arrays_and_cover_each_pass_once():
    """LC.fit's mini-batches index the caller's arrays: no copy of the data per step or epoch."""
    from keras_condensa.lc import _Batches  # noqa: PLC0415

    x = np.arange(20, dtype="float32").reshape(10, 2)
    y = np.arange(10)
    batches = _Batches(x, y, batch_size=4, count=5, seed=0)  # 20 samples: two passes
    assert batches.x is x and batches.y is y and len(batches) == 5
    seen = np.concatenate([batches[i][1] for i in range(len(batches))])
    np.testing.assert_array_equal(np.sort(seen[:10]), y)
    np.testing.assert_array_equal(np.sort(seen[10:]), y)
    np.testing.assert_array_equal(batches[2][0], x[batches[2][1]])
    again = _Batches(x, y, batch_size=4, count=5, seed=0)
    np.testing.assert_array_equal(again.order, batches.order)
