"""Pruning schedules: tfmot's meaning, fractions of the run, and honest warnings."""

import warnings

import pytest
from conftest import compile_classifier, lenet_300_100

import keras_condensa as kc


def test_polynomial_decay_follows_zhu_and_gupta():
    s = kc.PolynomialDecay(
        initial_sparsity=0.1, final_sparsity=0.9, begin_step=10, end_step=110, frequency=20
    )
    assert s(5) == (False, 0.0)
    assert s(10) == (True, pytest.approx(0.1))
    progress = 0.4
    assert s(50) == (True, pytest.approx(0.9 + (0.1 - 0.9) * (1 - progress) ** 3))
    assert s(60)[0] is False
    # end_step is not a multiple of frequency past begin_step: it still prunes there.
    assert s(110) == (True, pytest.approx(0.9))
    assert s(130) == (False, pytest.approx(0.9))


def test_constant_sparsity():
    s = kc.ConstantSparsity(0.8, begin_step=4, frequency=3)
    assert s(3) == (False, 0.0)
    assert s(4) == (True, 0.8) and s(7) == (True, 0.8) and s(8)[0] is False


def test_fractions_resolve_against_the_run():
    s = kc.PolynomialDecay(
        final_sparsity=0.5, begin_step=0.1, end_step=0.5, frequency=0.05
    ).resolve(200)
    assert (s.begin_step, s.end_step, s.frequency) == (20, 100, 10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        kc.PolynomialDecay(final_sparsity=0.5, end_step=0.5).resolve(None)


def test_density_sets_the_final_sparsity_and_must_agree():
    scheme = kc.Prune(0.1, schedule=kc.PolynomialDecay(end_step=100))
    assert scheme.schedule.final_sparsity == pytest.approx(0.9)
    with pytest.raises(ValueError, match="density=0.2 means sparsity 0.8"):
        kc.Prune(0.2, schedule=kc.PolynomialDecay(final_sparsity=0.9, end_step=100))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"end_step": 1.5}, "fraction of the training run"),
        ({"end_step": 10, "begin_step": 20}, "after begin_step"),
        ({"end_step": 10, "frequency": 0}, "frequency must be >= 1"),
        ({"end_step": 10, "initial_sparsity": 1.0}, "initial_sparsity must be in"),
    ],
)
def test_bad_schedules_say_what_to_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kc.PolynomialDecay(**kwargs)


def test_a_fit_that_ends_before_the_schedule_says_so(digits):
    x_train, y_train, _, _ = digits
    # 1347 samples / 64 = 22 steps: end_step=1000 is never reached (a classic tfmot trap).
    scheme = kc.Prune(0.1, schedule=kc.PolynomialDecay(begin_step=0, end_step=1000, frequency=5))
    pruned = compile_classifier(scheme.apply(lenet_300_100()))
    with pytest.warns(UserWarning, match=r"not its target 0\.900.*ends at step 1000.*22 steps"):
        pruned.fit(
            x_train, y_train, epochs=1, batch_size=64, verbose=0, callbacks=kc.callbacks(scheme)
        )
    density = kc.summary(pruned, print_fn=None).masked_density
    assert 0.5 < density < 1.0


def test_a_schedule_in_fractions_reaches_its_target_without_warning(digits):
    x_train, y_train, _, _ = digits
    scheme = kc.Prune(0.3, schedule=kc.PolynomialDecay(end_step=1.0, frequency=7))
    pruned = compile_classifier(scheme.apply(lenet_300_100()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pruned.fit(
            x_train, y_train, epochs=1, batch_size=64, verbose=0, callbacks=kc.callbacks(scheme)
        )
    assert abs(kc.summary(pruned, print_fn=None).masked_density - 0.3) < 0.005
