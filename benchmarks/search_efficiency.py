"""Does each oracle return a model that truly meets an accuracy floor, at a low cost?

One command, prints tables:

    .venv/bin/python benchmarks/search_efficiency.py              # about 12 minutes
    .venv/bin/python benchmarks/search_efficiency.py --ours-only --confidences ''  # 2 min
    .venv/bin/python benchmarks/search_efficiency.py --record lenet300  # re-record (6-10 min)

The ground truth is a recorded accuracy-versus-density curve of a real model:
LeNet-300-100 (Dense 300-100-10, relu) trained on scikit-learn's digits, then
pruned with `kc.Prune` under a `kc.PolynomialDecay` schedule and fine-tuned, at
32 densities from 0.005 to 1 (log-spaced), with repeated fine-tunings at a few
densities to measure the evaluation noise. It lives in
`benchmarks/data/lenet300_digits_density_curve.json`; `--record lenet300` rewrites
it. A second curve, a small CNN's (`--record cnn`, recorded the same way), is
one no constant of the search was tuned on.

Two search problems are built on it: one density (`Curve`), and two per-layer
densities whose accuracy is the curve's at a sensitivity-weighted mean density
(`Surface`). A trial returns the noise-free accuracy there plus Gaussian noise
of the measured size, and `nonzero_params` as the cost. Over 20 seeds (0-19;
the search's constants were tuned on seeds 100-159), each oracle is driven the
standard Keras Tuner way, and after 6 and after 10 trials (replicates count as
trials) we ask of the model `oracle.get_best_trials(1)` names: does it meet the
floor on the noise-free curve ("truly"), and at no more than 1.5x the
optimum's density? "located" (one density only): the lowest density that read
feasible is within 0.01 of the optimum, i.e. the boundary was found, whatever
is returned. "trials": the mean number run (ours may end early). Keras Tuner's
own oracles get the constraint the usual way, as a penalised objective
(`density` if feasible, else `1 + 10 * shortfall`), so their answer is the
cheapest trial whose reading met the floor. A second table varies our
`confidence`; last, the oracle's own time to propose a trial with 50 completed
trials. This file also runs against earlier versions of the library (for
"before" tables): it passes `confidence` only when asked to.
"""

import argparse
import functools
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
# A second recorded curve, a small CNN's, which no constant of the search was tuned on.
CNN_CURVE_PATH = HERE / "data" / "cnn_digits_density_curve.json"
ARCHITECTURES = {
    "lenet300": "LeNet-300-100 (Dense 300-100-10, relu)",
    "cnn": "a small CNN (Conv 16-32 3x3, Dense 64-10, relu)",
}
MIN_DENSITY, MAX_DENSITY = 0.005, 1.0
NUM_DENSITIES = 32
REPEAT_INDICES = (12, 16, 20, 24)  # densities ~0.030, 0.059, 0.116, 0.229
NUM_REPEATS = 5
DENSE_EPOCHS = 30
FINE_TUNE_EPOCHS = 10
BATCH_SIZE = 64
TOLERANCE = 0.01
# "Close to the optimum": a density at most this many times the optimum's.
CLOSE = 1.5
SEEDS = 20
MAX_TRIALS = 10


# ----------------------------------------------------------------------------
# Recording the curve (once).


def record(path=CURVE_PATH, model_name="lenet300"):
    """Trains a model on digits, prunes and fine-tunes it at many densities."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import _digits  # noqa: PLC0415
    import keras  # noqa: PLC0415

    import keras_condensa as kc  # noqa: PLC0415

    x_train, y_train, x_val, y_val = _digits.load(model_name)
    keras.utils.set_random_seed(0)
    dense = _digits.build(model_name, keras)
    _digits.compile_model(dense, keras)
    start = time.time()
    dense.fit(x_train, y_train, epochs=DENSE_EPOCHS, batch_size=BATCH_SIZE, verbose=0)
    dense_accuracy = float(dense.evaluate(x_val, y_val, verbose=0)[1])
    dense_weights = dense.get_weights()
    total_kernel = sum(
        int(np.prod(w.shape)) for layer in dense.layers for w in layer.weights if "kernel" in w.path
    )
    print(f"dense {model_name}: val_accuracy={dense_accuracy:.4f} ({time.time() - start:.0f}s)")

    def fine_tune(density, seed):
        keras.utils.set_random_seed(seed)
        base = _digits.build(model_name, keras)
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
            f"{ARCHITECTURES[model_name]} on scikit-learn digits (pixels/16, "
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
    """The recorded curve: accuracy and evaluation noise as functions of density.

    As a search problem: one hyperparameter, `density`.
    """

    def __init__(self, path=CURVE_PATH, name="1-D: density (LeNet-300-100)"):
        self.name = name
        data = json.loads(pathlib.Path(path).read_text())
        self.data = data
        points = sorted(data["points"], key=lambda p: p["density"])
        self.log_d = np.log([p["density"] for p in points])
        self.accuracies = np.array([p["val_accuracy"] for p in points])
        repeats = sorted(data["repeats"], key=lambda r: r["density"])
        self.noise_log_d = np.log([r["density"] for r in repeats])
        self.noise_std = np.array([np.std(r["val_accuracy"], ddof=1) for r in repeats])
        self.dense_accuracy = float(data["dense_val_accuracy"])
        self.kernel_weights = int(data["kernel_weights"])

    def at(self, density):
        """Noise-free accuracy, linear between recorded points in log-density."""
        return float(np.interp(np.log(density), self.log_d, self.accuracies))

    def noise_at(self, density):
        """Evaluation noise (std of repeated fine-tunings), interpolated in log-density."""
        return float(np.interp(np.log(density), self.noise_log_d, self.noise_std))

    def space(self):
        import keras_tuner  # noqa: PLC0415

        hp = keras_tuner.HyperParameters()
        hp.Float("density", MIN_DENSITY, MAX_DENSITY, sampling="log")
        return hp

    def density(self, values):
        return float(values["density"])

    def accuracy(self, values):
        return self.at(self.density(values))

    def noise(self, values):
        return self.noise_at(self.density(values))

    def optimum(self, floor):
        """The lowest density whose (interpolated) accuracy meets the floor."""
        grid = np.geomspace(MIN_DENSITY, MAX_DENSITY, 200_001)
        ok = np.interp(np.log(grid), self.log_d, self.accuracies) >= floor
        return float(grid[np.argmax(ok)]) if ok.any() else None


class Surface:
    """Per-layer densities of LeNet-300-100's two largest kernels, from the recorded curve.

    Two hyperparameters, `fc1_density` (64x300 kernel) and `fc2_density`
    (300x100). The model's accuracy is the recorded curve's at an effective
    density, the geometric mean of the two weighted by how sensitive the
    layers are (`SENSITIVITY`: fc1, the smaller layer, matters more); the
    noise is the curve's there. The cost is the overall kernel density (fc3
    kept dense), so the optimum prunes the large, less sensitive fc2 harder.
    """

    name = "2-D: per-layer densities (LeNet-300-100)"
    SIZES = {"fc1_density": 64 * 300, "fc2_density": 300 * 100}
    SENSITIVITY = {"fc1_density": 0.6, "fc2_density": 0.4}

    def __init__(self, curve):
        self.curve = curve
        self.dense_accuracy = curve.dense_accuracy
        self.kernel_weights = curve.kernel_weights
        self._dense = self.kernel_weights - sum(self.SIZES.values())

    def space(self):
        import keras_tuner  # noqa: PLC0415

        hp = keras_tuner.HyperParameters()
        for name in self.SIZES:
            hp.Float(name, MIN_DENSITY, MAX_DENSITY, sampling="log")
        return hp

    def _effective(self, values):
        return float(np.exp(sum(w * np.log(values[k]) for k, w in self.SENSITIVITY.items())))

    def density(self, values):
        nonzeros = self._dense + sum(values[k] * n for k, n in self.SIZES.items())
        return float(nonzeros / self.kernel_weights)

    def accuracy(self, values):
        return self.curve.at(self._effective(values))

    def noise(self, values):
        return self.curve.noise_at(self._effective(values))

    def optimum(self, floor):
        """The lowest density (cost) over a fine grid of the two densities that meets the floor."""
        grid = np.geomspace(MIN_DENSITY, MAX_DENSITY, 1201)
        d1, d2 = np.meshgrid(grid, grid, indexing="ij")
        values = {"fc1_density": d1, "fc2_density": d2}
        effective = np.exp(sum(w * np.log(values[k]) for k, w in self.SENSITIVITY.items()))
        ok = np.interp(np.log(effective), self.curve.log_d, self.curve.accuracies) >= floor
        nonzeros = self._dense + sum(values[k] * n for k, n in self.SIZES.items())
        return float(nonzeros[ok].min() / self.kernel_weights) if ok.any() else None


def make_ours(floor, seed, max_trials, space, confidence=None):
    import keras_tuner  # noqa: PLC0415

    import keras_condensa.search as search  # noqa: PLC0415

    # The oracle's default confidence unless one is given (this file also runs
    # against versions from before `confidence`, for "before" tables).
    options = {} if confidence is None else {"confidence": confidence}
    return search.ConstrainedBayesianOracle(
        objective=keras_tuner.Objective("nonzero_params", "min"),
        constraint=search.Constraint("val_accuracy", min_value=floor),
        hyperparameters=space,
        max_trials=max_trials,
        seed=seed + 1,
        **options,
    )


def make_kt_bayesian(floor, seed, max_trials, space):
    import keras_tuner  # noqa: PLC0415

    return keras_tuner.oracles.BayesianOptimizationOracle(
        objective=keras_tuner.Objective("penalised", "min"),
        hyperparameters=space,
        max_trials=max_trials,
        seed=seed + 1,
    )


def make_kt_random(floor, seed, max_trials, space):
    import keras_tuner  # noqa: PLC0415

    return keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("penalised", "min"),
        hyperparameters=space,
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


def run_search(make, problem, floor, seed, max_trials=MAX_TRIALS):
    """Drives one oracle the standard Keras Tuner way.

    `problem` is a `Curve` (one density) or a `Surface` (per-layer
    densities): it turns a trial's hyperparameter values into a density
    (the cost), a noise-free accuracy and the noise of one reading.

    Returns:
        `(history, answers)`: `[(density, observed accuracy)]` per trial, and
        the hyperparameter values of `oracle.get_best_trials(1)[0]` after
        each trial (the model the search would hand back if it ended there).
    """
    rng = np.random.default_rng(10_000 + seed)
    history, answers = [], []
    with tempfile.TemporaryDirectory() as directory:
        oracle = make(floor, seed, max_trials, problem.space())
        oracle._set_project_dir(directory, "search")
        oracle.verbose = 0
        for _ in range(max_trials):
            trial = oracle.create_trial("tuner0")
            if trial.status != "RUNNING":
                break
            values = trial.hyperparameters.values
            density = problem.density(values)
            accuracy = problem.accuracy(values) + rng.normal(0.0, problem.noise(values))
            metrics = {
                "nonzero_params": density * problem.kernel_weights,
                "val_accuracy": accuracy,
                "penalised": penalised(density, accuracy, floor),
            }
            oracle.update_trial(trial.trial_id, metrics)
            trial.status = "COMPLETED"
            oracle.end_trial(trial)
            history.append((density, accuracy))
            answers.append(dict(oracle.get_best_trials(1)[0].hyperparameters.values))
    return history, answers


def answer_after(answers, k):
    """The answer after `k` trials (the last one if the search ended sooner)."""
    return answers[min(k, len(answers)) - 1]


def truly(problem, floor, optimum_cost, answer, ratio=None):
    """Whether `answer` meets the floor on the noise-free problem (and costs <= ratio x optimum)."""
    ok = problem.accuracy(answer) >= floor
    if ratio is not None:
        ok = ok and problem.density(answer) <= ratio * optimum_cost
    return ok


def located(history, floor, optimum, k, tolerance=TOLERANCE):
    """Whether the lowest density that read feasible in the first `k` trials is within `tolerance`.

    The boundary was found; whether the search returns that trial (a lucky
    reading just below the optimum reads feasible too) is what `truly` asks.
    """
    feasible = [d for d, a in history[:k] if a >= floor]
    return bool(feasible) and abs(min(feasible) - optimum) <= tolerance


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
        hyperparameters=curve.space() if space == "density" else _three_dimensional_space(),
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
        accuracy = curve.at(density) + rng.normal(0.0, curve.noise_at(density))
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


def _row(name, make, problem, floor, seeds, one_dimensional):
    """One table row: the shares of seeds whose answer truly meets the floor, and more."""
    optimum = problem.optimum(floor)
    start = time.time()
    counts = dict.fromkeys(("located", "truly6", "close6", "truly10", "close10"), 0)
    lengths = []
    for seed in seeds:
        history, answers = run_search(make, problem, floor, seed)
        lengths.append(len(history))
        if one_dimensional:
            counts["located"] += located(history, floor, optimum, MAX_TRIALS)
        for k in (6, 10):
            answer = answer_after(answers, k)
            counts[f"truly{k}"] += truly(problem, floor, optimum, answer)
            counts[f"close{k}"] += truly(problem, floor, optimum, answer, ratio=CLOSE)
    shares = {key: f"{value / len(seeds):.0%}" for key, value in counts.items()}
    if not one_dimensional:
        shares["located"] = "-"
    return (
        f"  {name:34s} {shares['located']:>8s} {shares['truly6']:>8s} {shares['close6']:>8s} "
        f"{shares['truly10']:>9s} {shares['close10']:>9s} {np.mean(lengths):>7.1f} "
        f"{(time.time() - start) / len(seeds):>6.2f}"
    )


HEADER = (
    f"  {'oracle':34s} {'located':>8s} {'truly@6':>8s} {'<=1.5x@6':>8s} "
    f"{'truly@10':>9s} {'<=1.5x@10':>9s} {'trials':>7s} {'s/run':>6s}"
)


def benchmark(oracle_names, seeds, confidences, problem_names=("1-D", "2-D", "CNN")):
    curve = Curve()
    print(f"curve: {CURVE_PATH.relative_to(HERE.parent)}")
    print(
        f"  dense val_accuracy {curve.dense_accuracy:.4f}; evaluation noise (std of repeats) "
        + ", ".join(
            f"{np.exp(ld):.3f}: {s:.4f}"
            for ld, s in zip(curve.noise_log_d, curve.noise_std, strict=True)
        )
    )
    print(
        f"Columns ({len(seeds)} seeds from {seeds[0]}, {MAX_TRIALS} trials, replicates "
        "counted as trials): "
        f"'located': the lowest density that read feasible is within {TOLERANCE} of the "
        "optimum (1-D); 'truly@k': the model oracle.get_best_trials(1) returns after k "
        "trials meets the floor on the noise-free curve; '<=1.5x@k': and its density is at "
        f"most {CLOSE}x the optimum's; 'trials': mean trials run (ours may stop early)."
    )
    problems = [curve, Surface(curve)]
    if CNN_CURVE_PATH.exists():
        problems.append(Curve(CNN_CURVE_PATH, "CNN: density (a curve nothing was tuned on)"))
    problems = [p for p in problems if p.name.split(":")[0] in problem_names]
    for problem in problems:
        for label, drop in (("dense - 1 point", 0.01), ("dense - 0.5 point", 0.005)):
            floor = problem.dense_accuracy - drop
            print()
            print(
                f"{problem.name}, floor {floor:.4f} ({label}): optimum density "
                f"{problem.optimum(floor):.4f}"
            )
            print(HEADER)
            print("  " + "-" * (len(HEADER) - 2))
            for name in oracle_names:
                print(_row(name, ORACLES[name], problem, floor, seeds, isinstance(problem, Curve)))
    if confidences:
        print()
        print("ConstrainedBayesianOracle(confidence=...): what each confidence gets and costs")
        for problem in problems:
            for label, drop in (("dense - 1 point", 0.01), ("dense - 0.5 point", 0.005)):
                floor = problem.dense_accuracy - drop
                print(f"{problem.name}, floor {label}")
                print(HEADER.replace("oracle    ", "confidence"))
                for confidence in confidences:
                    make = functools.partial(make_ours, confidence=confidence)
                    one = isinstance(problem, Curve)
                    print(_row(f"{confidence:g}", make, problem, floor, seeds, one))
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
    parser.add_argument(
        "--record",
        choices=("lenet300", "cnn"),
        help="re-record a model's curve (lenet300: the main one; cnn: the held-out one)",
    )
    parser.add_argument("--seeds", type=int, default=SEEDS, help="searches per oracle and floor")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="the first seed (tuning used 100-159)"
    )
    parser.add_argument(
        "--problems",
        default="1-D,2-D,CNN",
        help="comma-separated: 1-D (density), 2-D (per layer), CNN (the held-out curve)",
    )
    parser.add_argument(
        "--ours-only", action="store_true", help="skip Keras Tuner's oracles (faster)"
    )
    parser.add_argument(
        "--confidences",
        default="0.8,0.9,0.95",
        help="comma-separated confidences of ours to compare ('' for none)",
    )
    args = parser.parse_args()
    if args.record:
        path = CURVE_PATH if args.record == "lenet300" else CNN_CURVE_PATH
        record(path, args.record)
        return
    warnings.filterwarnings("ignore")
    names = list(ORACLES)[:1] if args.ours_only else list(ORACLES)
    confidences = [float(c) for c in args.confidences.split(",") if c]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    benchmark(names, seeds, confidences, args.problems.split(","))


if __name__ == "__main__":
    main()
