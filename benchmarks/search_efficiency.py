"""How fast does each oracle find the lowest density that meets an accuracy floor?

One command, prints tables:

    .venv/bin/python benchmarks/search_efficiency.py            # about 3 minutes
    .venv/bin/python benchmarks/search_efficiency.py --ours-only  # about 1 minute
    .venv/bin/python benchmarks/search_efficiency.py --record   # re-record the curve (6-10 min)

The ground truth is a recorded accuracy-versus-density curve of a real model:
LeNet-300-100 (Dense 300-100-10, relu) trained on scikit-learn's digits, then
pruned with `kc.Prune` under a `kc.PolynomialDecay` schedule and fine-tuned, at
32 densities from 0.005 to 1 (log-spaced), with repeated fine-tunings at a few
densities to measure the evaluation noise. It lives in
`benchmarks/data/lenet300_digits_density_curve.json`; `--record` rewrites it.

Each search asks for a density; the "trial" returns the curve's accuracy there
(interpolated in log-density between recorded points) plus Gaussian noise of
the measured size, and `nonzero_params = density * kernel weights` as the cost.
The optimum is the lowest density on the curve that meets the floor. Over 20
seeds, for each oracle, the tables show the share of runs whose best *feasible*
trial (as observed, noise included) after 6 and after 10 trials lies within
0.01 (absolute density) of the optimum, and the mean number of trials to first
get there. "truly" counts only the runs whose best trial also meets the floor
on the noise-free curve: a lucky reading just below the optimum is inside the
window, but the model it names does not meet the floor. "trials run" is the
mean number of trials a search used: ours ends early once another trial is
expected to save under 4% of the best cost. Keras Tuner's own
oracles get the constraint the usual way, as a penalised objective (`density`
if feasible, else `1 + 10 * shortfall`).
Last, the oracle's own time to propose a trial with 50 completed trials.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

CURVE_PATH = HERE / "data" / "lenet300_digits_density_curve.json"
MIN_DENSITY, MAX_DENSITY = 0.005, 1.0
NUM_DENSITIES = 32
REPEAT_INDICES = (12, 16, 20, 24)  # densities ~0.030, 0.059, 0.116, 0.229
NUM_REPEATS = 5
DENSE_EPOCHS = 30
FINE_TUNE_EPOCHS = 10
BATCH_SIZE = 64
TOLERANCE = 0.01
SEEDS = 20
MAX_TRIALS = 10


# ----------------------------------------------------------------------------
# Recording the curve (once).


def record(path=CURVE_PATH):
    """Trains LeNet-300-100 on digits, prunes and fine-tunes it at many densities."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import _digits  # noqa: PLC0415
    import keras  # noqa: PLC0415

    import keras_condensa as kc  # noqa: PLC0415

    x_train, y_train, x_val, y_val = _digits.load("lenet300")
    keras.utils.set_random_seed(0)
    dense = _digits.build("lenet300", keras)
    _digits.compile_model(dense, keras)
    start = time.time()
    dense.fit(x_train, y_train, epochs=DENSE_EPOCHS, batch_size=BATCH_SIZE, verbose=0)
    dense_accuracy = float(dense.evaluate(x_val, y_val, verbose=0)[1])
    dense_weights = dense.get_weights()
    total_kernel = sum(
        int(np.prod(w.shape)) for layer in dense.layers for w in layer.weights if "kernel" in w.path
    )
    print(f"dense LeNet-300-100: val_accuracy={dense_accuracy:.4f} ({time.time() - start:.0f}s)")

    def fine_tune(density, seed):
        keras.utils.set_random_seed(seed)
        base = _digits.build("lenet300", keras)
        base.set_weights(dense_weights)
        if density >= 1.0:  # the dense end: the same fine-tuning, nothing pruned
            model, callbacks = base, []
        else:
            scheme = kc.Prune(
                density=density,
                schedule=kc.PolynomialDecay(
                    initial_sparsity=0.0,
                    final_sparsity=1.0 - density,
                    begin_step=0,
                    end_step=0.7,
                    frequency=10,
                ),
            )
            model, callbacks = scheme.apply(base), kc.callbacks(scheme)
        _digits.compile_model(model, keras)
        model.fit(
            x_train,
            y_train,
            epochs=FINE_TUNE_EPOCHS,
            batch_size=BATCH_SIZE,
            verbose=0,
            callbacks=callbacks,
        )
        final = kc.strip(model) if callbacks else model
        _digits.compile_model(final, keras)
        accuracy = float(final.evaluate(x_val, y_val, verbose=0)[1])
        return accuracy, _digits.kernel_density(final)

    densities = np.geomspace(MIN_DENSITY, MAX_DENSITY, NUM_DENSITIES)
    points = []
    for density in densities:
        t = time.time()
        accuracy, measured = fine_tune(float(density), seed=1)
        points.append(
            {"density": float(density), "measured_density": measured, "val_accuracy": accuracy}
        )
        print(f"  density={density:.4f} val_accuracy={accuracy:.4f} ({time.time() - t:.1f}s)")
    repeats = []
    for index in REPEAT_INDICES:
        density = float(densities[index])
        values = [points[index]["val_accuracy"]]
        values += [fine_tune(density, seed=s)[0] for s in range(2, NUM_REPEATS + 1)]
        repeats.append({"density": density, "val_accuracy": values})
        print(f"  repeats at {density:.4f}: {np.round(values, 4).tolist()}")
    data = {
        "description": (
            "LeNet-300-100 (Dense 300-100-10, relu) on scikit-learn digits (pixels/16, "
            "stratified 75/25 split, random_state=0): validation accuracy after "
            "kc.Prune(density, PolynomialDecay(0 -> 1-density, end_step=0.7, frequency=10)) "
            f"and {FINE_TUNE_EPOCHS} epochs of fine-tuning (Adam 1e-3, batch {BATCH_SIZE}) "
            f"from one dense model trained {DENSE_EPOCHS} epochs. 'repeats' are fine-tunings "
            "of the same density with other seeds (the evaluation noise)."
        ),
        "recorded_with": {
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "keras_condensa": kc.__version__,
            "seconds": round(time.time() - start, 1),
        },
        "kernel_weights": total_kernel,
        "dense_val_accuracy": dense_accuracy,
        "points": points,
        "repeats": repeats,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path} ({time.time() - start:.0f}s)")


# ----------------------------------------------------------------------------
# The benchmark: oracles against the recorded curve.


class Curve:
    """The recorded curve: accuracy and evaluation noise as functions of density."""

    def __init__(self, path=CURVE_PATH):
        data = json.loads(pathlib.Path(path).read_text())
        self.data = data
        points = sorted(data["points"], key=lambda p: p["density"])
        self.log_d = np.log([p["density"] for p in points])
        self.accuracy = np.array([p["val_accuracy"] for p in points])
        repeats = sorted(data["repeats"], key=lambda r: r["density"])
        self.noise_log_d = np.log([r["density"] for r in repeats])
        self.noise_std = np.array([np.std(r["val_accuracy"], ddof=1) for r in repeats])
        self.dense_accuracy = float(data["dense_val_accuracy"])
        self.kernel_weights = int(data["kernel_weights"])

    def __call__(self, density):
        """Noise-free accuracy, linear between recorded points in log-density."""
        return float(np.interp(np.log(density), self.log_d, self.accuracy))

    def noise(self, density):
        """Evaluation noise (std of repeated fine-tunings), interpolated in log-density."""
        return float(np.interp(np.log(density), self.noise_log_d, self.noise_std))

    def optimum(self, floor):
        """The lowest density whose (interpolated) accuracy meets the floor."""
        grid = np.geomspace(MIN_DENSITY, MAX_DENSITY, 200_001)
        ok = np.interp(np.log(grid), self.log_d, self.accuracy) >= floor
        return float(grid[np.argmax(ok)]) if ok.any() else None


def _space():
    import keras_tuner  # noqa: PLC0415

    hp = keras_tuner.HyperParameters()
    hp.Float("density", MIN_DENSITY, MAX_DENSITY, sampling="log")
    return hp


def make_ours(floor, seed, max_trials=MAX_TRIALS):
    import keras_tuner  # noqa: PLC0415

    import keras_condensa.search as search  # noqa: PLC0415

    return search.ConstrainedBayesianOracle(
        objective=keras_tuner.Objective("nonzero_params", "min"),
        constraint=search.Constraint("val_accuracy", min_value=floor),
        hyperparameters=_space(),
        max_trials=max_trials,
        seed=seed + 1,
    )


def make_kt_bayesian(floor, seed, max_trials=MAX_TRIALS):
    import keras_tuner  # noqa: PLC0415

    return keras_tuner.oracles.BayesianOptimizationOracle(
        objective=keras_tuner.Objective("penalised", "min"),
        hyperparameters=_space(),
        max_trials=max_trials,
        seed=seed + 1,
    )


def make_kt_random(floor, seed, max_trials=MAX_TRIALS):
    import keras_tuner  # noqa: PLC0415

    return keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("penalised", "min"),
        hyperparameters=_space(),
        max_trials=max_trials,
        seed=seed + 1,
    )


ORACLES = {
    "ConstrainedBayesianOracle (ours)": make_ours,
    "KT BayesianOptimizationOracle": make_kt_bayesian,
    "KT RandomSearchOracle": make_kt_random,
}


def penalised(density, accuracy, floor):
    """The usual workaround: the cost if feasible, else worse than any feasible cost."""
    return density if accuracy >= floor else 1.0 + 10.0 * (floor - accuracy)


def run_search(make, curve, floor, seed, max_trials=MAX_TRIALS):
    """Drives one oracle the standard Keras Tuner way; returns [(density, observed acc)]."""
    rng = np.random.default_rng(10_000 + seed)
    history = []
    with tempfile.TemporaryDirectory() as directory:
        oracle = make(floor, seed, max_trials)
        oracle._set_project_dir(directory, "search")
        oracle.verbose = 0
        for _ in range(max_trials):
            trial = oracle.create_trial("tuner0")
            if trial.status != "RUNNING":
                break
            density = float(trial.hyperparameters.get("density"))
            accuracy = curve(density) + rng.normal(0.0, curve.noise(density))
            metrics = {
                "nonzero_params": density * curve.kernel_weights,
                "val_accuracy": accuracy,
                "penalised": penalised(density, accuracy, floor),
            }
            oracle.update_trial(trial.trial_id, metrics)
            trial.status = "COMPLETED"
            oracle.end_trial(trial)
            history.append((density, accuracy))
    return history


def first_hit(history, floor, optimum, tolerance=TOLERANCE):
    """1-based trial after which the best feasible trial is within `tolerance`; or None."""
    best = None
    for k, (density, accuracy) in enumerate(history, start=1):
        if accuracy >= floor and (best is None or density < best):
            best = density
        if best is not None and abs(best - optimum) <= tolerance:
            return k
    return None


def hit_within(history, floor, optimum, k, tolerance=TOLERANCE, curve=None):
    """Whether the best observed-feasible of the first `k` trials is within `tolerance`.

    With `curve`, that trial must also meet the floor on the noise-free curve:
    a noisy reading can make a density just below the optimum look feasible
    (the winner's curse), which the plain count takes as a success.
    """
    feasible = [d for d, a in history[:k] if a >= floor]
    if not feasible or abs(min(feasible) - optimum) > tolerance:
        return False
    return curve is None or curve(min(feasible)) >= floor


def _three_dimensional_space():
    import keras_tuner  # noqa: PLC0415

    hp = keras_tuner.HyperParameters()
    hp.Float("fc1_density", MIN_DENSITY, MAX_DENSITY, sampling="log")
    hp.Float("fc2_density", MIN_DENSITY, MAX_DENSITY, sampling="log")
    hp.Choice("scheme", ["unstructured", "block"])
    return hp


def propose_seconds(curve, space="density", completed=50, repeats=7):
    """Median time of our oracle's `populate_space` with `completed` trials done.

    `space` is `"density"` (the 1-D search above) or `"3-D"` (two per-layer
    densities and a scheme Choice, which takes the expected-improvement path).
    """
    import keras_tuner  # noqa: PLC0415

    import keras_condensa.search as search  # noqa: PLC0415

    floor = curve.dense_accuracy - 0.01
    oracle = search.ConstrainedBayesianOracle(
        objective=keras_tuner.Objective("nonzero_params", "min"),
        constraint=search.Constraint("val_accuracy", min_value=floor),
        hyperparameters=_space() if space == "density" else _three_dimensional_space(),
        max_trials=completed + 10,
        num_initial_points=completed,  # fill quickly with design points
        seed=0,
    )
    oracle.verbose = 0
    rng = np.random.default_rng(0)
    sizes = {"fc1_density": 0.4, "fc2_density": 0.6}  # shares of the weights
    for _ in range(completed):
        trial = oracle.create_trial("tuner0")
        values = trial.hyperparameters.values
        if space == "density":
            density = values["density"]
        else:
            density = sum(values[k] * share for k, share in sizes.items())
        accuracy = curve(density) + rng.normal(0.0, curve.noise(density))
        if values.get("scheme") == "block":
            accuracy -= 0.01
        oracle.update_trial(
            trial.trial_id,
            {"nonzero_params": density * curve.kernel_weights, "val_accuracy": accuracy},
        )
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    oracle.num_initial_points = None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        oracle.populate_space(f"{completed}")
        times.append(time.perf_counter() - start)
    return float(np.median(times)), times


def benchmark(oracle_names, seeds):
    curve = Curve()
    print(f"curve: {CURVE_PATH.relative_to(HERE.parent)}")
    print(
        f"  dense val_accuracy {curve.dense_accuracy:.4f}; evaluation noise (std of repeats) "
        + ", ".join(
            f"{np.exp(ld):.3f}: {s:.4f}"
            for ld, s in zip(curve.noise_log_d, curve.noise_std, strict=True)
        )
    )
    floors = {
        "dense - 1 point": curve.dense_accuracy - 0.01,
        "dense - 0.5 point": curve.dense_accuracy - 0.005,
    }
    for label, floor in floors.items():
        optimum = curve.optimum(floor)
        print()
        print(
            f"floor {floor:.4f} ({label}): optimum density {optimum:.4f}; success = best "
            f"feasible trial within {TOLERANCE} of it ({seeds} seeds, {MAX_TRIALS} trials)"
        )
        header = (
            f"  {'oracle':34s} {'<=6 trials':>10s} {'<=10 trials':>11s} "
            f"{'<=10 truly':>10s} {'mean trials to hit':>19s} {'trials run':>10s} {'s/run':>6s}"
        )
        print(header)
        print("  " + "-" * (len(header) - 2))
        for name in oracle_names:
            make = ORACLES[name]
            start = time.time()
            hits6 = hits10 = truly10 = 0
            firsts, lengths = [], []
            for seed in range(seeds):
                history = run_search(make, curve, floor, seed)
                hits6 += hit_within(history, floor, optimum, 6)
                hits10 += hit_within(history, floor, optimum, 10)
                truly10 += hit_within(history, floor, optimum, 10, curve=curve)
                firsts.append(first_hit(history, floor, optimum))
                lengths.append(len(history))
            reached = [f for f in firsts if f is not None]
            mean = f"{np.mean(reached):.1f} ({len(reached)}/{seeds})" if reached else "never"
            print(
                f"  {name:34s} {hits6 / seeds:>10.0%} {hits10 / seeds:>11.0%} "
                f"{truly10 / seeds:>10.0%} {mean:>19s} {np.mean(lengths):>10.1f} "
                f"{(time.time() - start) / seeds:>6.2f}"
            )
    print()
    print("ConstrainedBayesianOracle: time to propose a trial with 50 completed trials")
    for space in ("density", "3-D"):
        median, times = propose_seconds(curve, space)
        label = "1-D (density)" if space == "density" else "3-D (2 densities + Choice)"
        print(
            f"  {label:28s} median {median * 1e3:4.0f} ms "
            f"(runs: {', '.join(f'{t * 1e3:.0f}' for t in times)} ms)"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="re-record the curve")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="searches per oracle and floor")
    parser.add_argument(
        "--ours-only", action="store_true", help="skip Keras Tuner's oracles (faster)"
    )
    args = parser.parse_args()
    if args.record:
        record()
        return
    warnings.filterwarnings("ignore")
    names = list(ORACLES)[:1] if args.ours_only else list(ORACLES)
    benchmark(names, args.seeds)


if __name__ == "__main__":
    main()
