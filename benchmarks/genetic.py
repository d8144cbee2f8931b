"""Genetic channel pruning (Hu et al. 2018) vs the constrained Bayesian oracle, same trials.

The ResNet-style CNN of `benchmarks/structured.py` (stem conv 32 + BatchNorm, two residual
blocks of 3x3 conv + BN + ReLU, 1x1 conv + BN, `Add`) is trained on scikit-learn's digits
(the `_digits` split; 300 of its training samples are held out as the test set) with Keras'
default BatchNorm momentum (0.99); its BatchNorm moving statistics are then re-estimated
once on the training inputs (`kc.recalibrate_batchnorm`: at 0.99 they lag the last epochs'
weights and the dense model read 0.7 point under what it can do, which would lower the
floor). Each trial's are re-estimated the same way by the fine-tune workflow after its short
fine-tune (two epochs, 66 steps, would leave them behind the pruned weights). The scheme
has one `FilterPrune` keep-ratio per prunable channel group, `hp.Float(0.1, 1.0, step=0.1)`:
`keep_stem` (the stem and both blocks' 1x1 convolutions, coupled by the residual adds, one
group), `keep_b0_conv1`, `keep_b1_conv1`. Both searches run in a `CompressionTuner` with
`shrink=True`, objective `flops` (of the shrunk model), a floor 1 point under the dense
validation accuracy, the same fine-tune per trial and the same number of trials:

- GA: `kc.search.GeneticChannelOracle` (sensitivity order, a genetic algorithm per layer on
  the cheap batch fitness, 2 survivors per stage fine-tuned as trials);
- Bayes: the tuner's default `ConstrainedBayesianOracle` over the same three ratios.

Each pair runs with seeds 0 and 1 (`--seeds`: the oracles' and the fine-tunes' seed; the
dense model is the same). For each: the lowest FLOPs whose validation reading meets the
floor (ratio to dense), its validation and test accuracy, trials and wall time of the search
(the GA's cheap fitness included); then the final fine-tune of that winner by distillation
from the dense model (`kc.search.distill_best`, `--distill-epochs` epochs), both ways: from
the dense weights with the winner's ratios applied again (the paper's recipe, the default)
and from the winner's own fine-tuned, shrunk model (`start="trial"`). When one search took
less than 0.8x the other's time, it is resumed with more trials to about the same time, and
that row is added ("+ time").

Run: `KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/genetic.py`
(`--trials`, `--fine-tune-epochs`, `--distill-epochs`, `--epochs`, `--seeds`; about 5
minutes on 2 shared cores).
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _digits  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from structured import flops as structured_flops  # noqa: E402
from structured import resnet  # noqa: E402

import keras_condensa as kc  # noqa: E402

GROUPS = {
    "keep_stem": ["stem", "b0_conv2", "b1_conv2"],
    "keep_b0_conv1": ["b0_conv1"],
    "keep_b1_conv1": ["b1_conv1"],
}


def scheme(hp):
    return kc.Compose(
        [
            kc.FilterPrune(density=hp.Float(name, 0.1, 1.0, step=0.1), include=layers)
            for name, layers in GROUPS.items()
        ]
    )


def search(name, oracle, data, args, directory, max_trials, seed, resume=False):
    model, train, val, _ = data
    start = time.perf_counter()
    tuner = kc.search.CompressionTuner(
        model,
        scheme,
        train,
        val,
        max_accuracy_drop=0.01,
        objective="flops",
        max_trials=max_trials,
        fine_tune_epochs=args.fine_tune_epochs,
        shrink=True,
        batch_size=32,
        seed=seed,
        oracle=oracle,
        directory=directory,
        project_name=name,
        overwrite=not resume,
    )
    tuner.search()
    return tuner, time.perf_counter() - start


def cheapest_feasible(tuner):
    done = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    feasible = [t for t in done if tuner.is_feasible(t)]
    if feasible:
        return min(feasible, key=lambda t: t.metrics.get_last_value("flops"))
    return max(done, key=lambda t: t.metrics.get_last_value("val_accuracy"))


def row(label, tuner, seconds, data, dense_flops, args):
    _, _, (x_val, y_val), (x_test, y_test) = data
    best = cheapest_feasible(tuner)
    model = tuner.load_model(best)
    if kc.flops(model) != structured_flops(model):  # the conv formula, written out
        print(f"# {label}: kc.flops {kc.flops(model):,} != {structured_flops(model):,}")
    start = time.perf_counter()
    final = kc.search.distill_best(tuner, epochs=args.distill_epochs, trial=best)
    distill_seconds = time.perf_counter() - start
    further = kc.search.distill_best(tuner, epochs=args.distill_epochs, trial=best, start="trial")
    done = sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    flops = kc.flops(model)
    ratios = {k: v for k, v in best.hyperparameters.values.items() if k in GROUPS}
    return dict(
        label=label,
        feasible=tuner.is_feasible(best),
        flops=flops,
        ratio=flops / dense_flops,
        keep=" ".join(f"{v:.1f}" for v in ratios.values()),
        val=_digits.accuracy(model, x_val, y_val),
        test=_digits.accuracy(model, x_test, y_test),
        trials=done,
        seconds=seconds,
        final_flops=kc.flops(final),
        final_val=_digits.accuracy(final, x_val, y_val),
        final_test=_digits.accuracy(final, x_test, y_test),
        further_val=_digits.accuracy(further, x_val, y_val),
        further_test=_digits.accuracy(further, x_test, y_test),
        distill_seconds=distill_seconds,
    )


def table(rows, dense, floor):
    lines = [
        f"dense: FLOPs {dense['flops']:,}, val {dense['val']:.4f}, test {dense['test']:.4f}; "
        f"floor val >= {floor:.4f}",
        "",
        "| search | keep (stem b0 b1) | FLOPs meeting the floor (x dense) | val | test "
        "| trials | search s | distilled from dense: val | test | s "
        "| distilled from the trial: val | test |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "" if r["feasible"] else " (none met the floor: most accurate)"
        lines.append(
            f"| {r['label']} | {r['keep']} | {r['flops']:,} ({r['ratio']:.3f}x){mark} "
            f"| {r['val']:.4f} | {r['test']:.4f} | {r['trials']} | {r['seconds']:.0f} "
            f"| {r['final_val']:.4f} | {r['final_test']:.4f} | {r['distill_seconds']:.0f} "
            f"| {r['further_val']:.4f} | {r['further_test']:.4f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--distill-epochs", type=int, default=8)
    parser.add_argument("--seeds", default="0,1", help="search and fine-tune seeds")
    parser.add_argument("--searches", default="GA,Bayes", help="GA, Bayes or both")
    parser.add_argument("--directory", default=None, help="keep the projects here")
    args = parser.parse_args()
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, no GPU used")
    x_train, y_train, x_val, y_val = _digits.load("cnn")
    x_train, x_test, y_train, y_test = train_test_split(
        x_train, y_train, test_size=300, stratify=y_train, random_state=1
    )
    keras.utils.set_random_seed(0)
    dense = resnet()
    _digits.compile_model(dense, keras)
    dense.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    kc.recalibrate_batchnorm(dense, x_train)  # statistics of the final weights (see above)
    data = (dense, (x_train, y_train), (x_val, y_val), (x_test, y_test))
    dense_row = dict(
        flops=kc.flops(dense),
        val=_digits.accuracy(dense, x_val, y_val),
        test=_digits.accuracy(dense, x_test, y_test),
    )

    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        directory = args.directory or temporary
        for seed in (int(s) for s in args.seeds.split(",")):

            def ga(max_trials, seed=seed):
                return kc.search.GeneticChannelOracle(
                    objective="flops", max_trials=max_trials, seed=seed
                )

            makers, tuners = {"GA": ga, "Bayes": lambda n: None}, {}
            for label in args.searches.split(","):
                name = f"{label} seed {seed}"
                oracle = makers[label](args.trials)
                tuner, seconds = search(name, oracle, data, args, directory, args.trials, seed)
                tuners[label] = (tuner, seconds)
                rows.append(row(name, tuner, seconds, data, dense_row["flops"], args))
                print(f"# {name}: {seconds:.0f} s", flush=True)
            timed = sorted(tuners.items(), key=lambda kv: kv[1][1])
            (fast, (_, t_fast)), (_, (_, t_slow)) = timed[0], timed[-1]
            if t_fast < 0.8 * t_slow:
                more = min(int(round(args.trials * t_slow / t_fast)), 3 * args.trials)
                name = f"{fast} seed {seed}"
                tuner, extra = search(
                    name, makers[fast](more), data, args, directory, more, seed, resume=True
                )
                rows.append(
                    row(f"{name} + time", tuner, t_fast + extra, data, dense_row["flops"], args)
                )
            floor = tuner.accuracy_floor
    print(table(rows, dense_row, floor))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
