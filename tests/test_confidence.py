"""The search's answer holds: feasible with confidence, not on one lucky reading.

`search.confidence` estimates each trial's noise-free metric from all
readings, with the noise measured from replicates; the oracle returns the
cheapest trial that meets the constraint with the stated confidence.
"""

import math

import keras_tuner
import numpy as np
import pytest
from scipy import stats

from keras_condensa.search import ConstrainedBayesianOracle, Constraint
from keras_condensa.search import confidence as confidence_module

FLOOR = 0.96
WEIGHTS = 50_000


def make_oracle(**kwargs):
    hp = keras_tuner.HyperParameters()
    hp.Float("density", 0.005, 1.0, sampling="log")
    oracle = ConstrainedBayesianOracle(
        objective=keras_tuner.Objective("nonzero_params", "min"),
        constraint=Constraint("val_accuracy", min_value=FLOOR),
        hyperparameters=hp,
        max_trials=kwargs.pop("max_trials", 20),
        seed=0,
        **kwargs,
    )
    oracle.verbose = 0
    return oracle


def feed(oracle, points):
    """Completes trials at given (density, accuracy) points, whatever was proposed."""
    for density, accuracy in points:
        trial = oracle.create_trial("tuner0")
        trial.hyperparameters.values["density"] = density
        metrics = {"nonzero_params": density * WEIGHTS, "val_accuracy": accuracy}
        oracle.update_trial(trial.trial_id, metrics)
        trial.status = "COMPLETED"
        oracle.end_trial(trial)


def density_of(trial):
    return trial.hyperparameters.get("density")


def test_a_lucky_single_reading_below_the_boundary_is_not_returned():
    # The boundary is near 0.12: the readings rise through the floor there.
    # 0.08 reads just above the floor once, while its neighbours read below:
    # a lucky reading. By readings alone it would be the answer.
    oracle = make_oracle()
    lucky = (0.08, FLOOR + 0.0005)
    feed(
        oracle,
        [(0.05, 0.950), (0.07, 0.955), lucky, (0.09, 0.957), (0.2, 0.975), (0.2, 0.972),
         (0.3, 0.977), (1.0, 0.978)],
    )
    best = oracle.get_best_trials(1)[0]
    assert density_of(best) == 0.2
    lucky_trial = next(t for t in oracle.trials.values() if density_of(t) == 0.08)
    assert oracle.is_feasible(lucky_trial)  # its reading does meet the floor
    assert oracle.feasibility(lucky_trial).probability < 0.5
    assert oracle.feasibility(best).probability >= 0.9
    assert oracle.measured_noise.source == "replicates"
    # With confidence 0.5 the estimate itself decides: 0.08 is still below it.
    assert density_of(make_oracle_with(lucky, confidence=0.5)) != 0.08


def make_oracle_with(lucky, confidence):
    oracle = make_oracle(confidence=confidence)
    feed(oracle, [(0.05, 0.950), lucky, (0.2, 0.975), (0.2, 0.972), (1.0, 0.978)])
    return oracle.get_best_trials(1)[0]


def test_replicates_average_and_firm_up_the_estimate():
    bound = Constraint("val_accuracy", min_value=FLOOR)
    noise = 0.004
    one, _ = confidence_module.estimate([[0.5]], [0.964], bound, 0.9, noise=noise)
    # One reading one noise above the floor: Phi(1), not 0.9.
    assert one[0].probability == pytest.approx(stats.norm.cdf(1.0))
    assert not one[0].confident(0.9)
    two, _ = confidence_module.estimate([[0.5], [0.5]], [0.964, 0.968], bound, 0.9, noise=noise)
    assert two[0].mean == pytest.approx(0.966)
    assert two[0].std == pytest.approx(noise / math.sqrt(2))
    assert two[0].readings == 2
    assert two[0].confident(0.9)
    assert two[0].low < 0.966 < two[0].high
    # Readings that straddle the floor average to it: a coin toss.
    split, _ = confidence_module.estimate([[0.5], [0.5]], [0.964, 0.956], bound, 0.9, noise=noise)
    assert split[0].probability == pytest.approx(0.5)


def test_the_noise_is_measured_from_replicates_or_given():
    bound = Constraint("val_accuracy", min_value=FLOOR)
    x = [[0.2], [0.5], [0.5], [0.8], [0.8], [1.0]]
    y = [0.90, 0.962, 0.958, 0.975, 0.971, 0.98]
    _, noise = confidence_module.estimate(x, y, bound, 0.9)
    assert noise.source == "replicates"
    assert noise.dof == 3  # two replicate pairs, and the model's fitted noise
    # Pooled: each pair's squared deviations sum to 8e-6; the fitted noise
    # adds its variance as the third degree of freedom.
    assert 3 * noise.std**2 >= 2 * 8e-6 - 1e-12
    assert noise.std < 0.005
    _, given = confidence_module.estimate(x, y, bound, 0.9, noise=0.003)
    assert (given.std, given.source, given.dof) == (0.003, "given", math.inf)
    # Nothing replicated: the Gaussian process's fitted noise, one degree of freedom.
    _, unmeasured = confidence_module.estimate(x[::2], y[::2], bound, 0.9)
    assert (unmeasured.source, unmeasured.dof) == ("model", 1)
    # A reading's own error (e.g. of a finite validation set) widens its estimate.
    errors = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.01])
    plain, _ = confidence_module.estimate(x, y, bound, 0.9, noise=0.003)
    wide, _ = confidence_module.estimate(x, y, bound, 0.9, noise=0.003, errors=errors)
    assert wide[-1].std > plain[-1].std


def sigmoid_accuracy(density, boundary=0.1, top=0.98):
    """Crosses FLOOR at `boundary`, in log-density."""
    frac = (FLOOR - 0.1) / (top - 0.1)
    centre = math.log(boundary) - math.log(frac / (1 - frac)) / 2.0
    return 0.1 + (top - 0.1) / (1 + math.exp(-2.0 * (math.log(density) - centre)))


def test_a_noisy_search_returns_a_model_that_truly_meets_the_floor():
    # Readings with noise of 0.004 (a few tenths of a point, as fine-tunings
    # vary): the answer must meet the floor on the noise-free curve, and
    # stay close to the boundary (1.5x its density).
    truly = close = 0
    seeds = range(6)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        oracle = make_oracle(max_trials=10)
        oracle.seed = seed
        for _ in range(10):
            trial = oracle.create_trial("tuner0")
            if trial.status != "RUNNING":
                break
            d = trial.hyperparameters.get("density")
            reading = sigmoid_accuracy(d) + rng.normal(0.0, 0.004)
            oracle.update_trial(
                trial.trial_id, {"nonzero_params": d * WEIGHTS, "val_accuracy": reading}
            )
            trial.status = "COMPLETED"
            oracle.end_trial(trial)
        answer = density_of(oracle.get_best_trials(1)[0])
        truly += sigmoid_accuracy(answer) >= FLOOR
        close += sigmoid_accuracy(answer) >= FLOOR and answer <= 1.5 * 0.1
    assert truly == len(seeds)
    assert close >= len(seeds) - 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.3}, "confidence"),
        ({"confidence": True}, "confidence"),
        ({"noise": 0.0}, "noise"),
        ({"noise": "0.01"}, "noise"),
    ],
)
def test_bad_confidence_or_noise_says_what_is_expected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_oracle(**kwargs)
