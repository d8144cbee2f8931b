"""Learned sparsity on digits: STR, channel gates and HSPG against magnitude/uniform pruning.

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/learned.py            # 3 seeds
    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/learned.py --quick    # seed 0

1. `kc.SoftThresholdPrune` (STR) on LeNet-300-100 at densities 0.05, 0.02, 0.01, with
   the budget of `accuracy.py` (20 dense epochs, 10 fine-tuning epochs from the dense
   weights, Adam 1e-3, batch 32): columns dense, magnitude mask fine-tuning (`kc.Prune`,
   PolynomialDecay as accuracy.py), L-C (`kc.LC`, as accuracy.py) and STR; then the
   per-layer densities STR learned (the median seed's).
2. `kc.ChannelGates(cost="flops")` on the digits CNN and the ResNet-style CNN of
   structured.py at FLOPs budgets 0.5 and 0.25, against uniform `kc.FilterPrune` +
   `kc.NeuronPrune` (structured.py's gradual schedule) at the density whose shrunk FLOPs
   are nearest the gates' shrunk FLOPs; the same fine-tuning epochs from the same dense
   weights. Then `cost="latency"` at budget 0.5 with `kc.latency_table` timed on LiteRT
   (the whole model with one channel group narrowed; batch 1, 500 runs): the shrunk model's
   LiteRT p50 over the dense one's against the budget, per seed, next to the ratio the cost
   model predicted for the kept channels (model error vs measurement noise).
3. `kc.optimizers.HSPG` (if importable) on the same CNNs with `scope="layer"` (each group
   zeroes the same fraction: like-for-like with uniform FilterPrune) and `scope="global"`:
   channels zeroed (`kc.optimizers.zero_channels`), accuracy after `kc.shrink` against
   uniform FilterPrune at the same channel sparsity and epochs, shrunk latency.

FLOPs are structured.py's `flops` (2 x multiply-adds of conv/dense kernels) of the shrunk
models; latency is LiteRT p50 (float32, batch 1, 1 thread). Cells are medians over the
seeds (the seed changes the dense init, the shuffling and everything after).
"""

import argparse
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _digits  # noqa: E402
import accuracy  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import structured  # noqa: E402

import keras_condensa as kc  # noqa: E402

STR_DENSITIES = (0.05, 0.02, 0.01)
FLOPS_BUDGETS = (0.5, 0.25)
LATENCY_BUDGET = 0.5
HSPG_SPARSITY = 0.5
HSPG_SCOPES = ("layer", "global")


def _median(values):
    return float(np.median(values))


# ---------------------------------------------------------------- 1. STR on LeNet-300-100


def _lenet_ctx(args, n_train):
    """accuracy.py's Context with its default budget."""
    ns = argparse.Namespace(
        batch_size=32,
        epochs=args.epochs,
        begin=0.0,
        end=0.7,
        frequency=10,
        qat_epochs=2,
        lc_steps=20,
        lc_lr_end=None,
        temperature=2.0,
        alpha=0.5,
    )
    return accuracy.Context(ns, n_train)


def kc_str(model, density, data, ctx):
    """SoftThresholdPrune(density), its default schedule, the same epochs as the other columns."""
    scheme = kc.SoftThresholdPrune(density=density)
    pruned = scheme.apply(model)
    _digits.compile_model(pruned, keras)
    pruned.fit(
        data[0],
        data[1],
        batch_size=ctx.batch_size,
        epochs=ctx.epochs,
        verbose=0,
        callbacks=kc.callbacks(scheme),
    )
    layers = {r.name: r.density for r in kc.summary(pruned, print_fn=None).rows}
    final = kc.strip(pruned)
    return {
        "acc": accuracy.evaluate(final, data),
        "density": _digits.kernel_density(final),
        "layers": layers,
    }


STR_METHODS = (("magnitude", accuracy.kc_prune), ("L-C", accuracy.kc_lc), ("STR", kc_str))


def run_str(seeds, args):
    accuracy.MODEL = "lenet300"
    data = _digits.load("lenet300")
    ctx = _lenet_ctx(args, len(data[0]))
    dense_acc, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            path = os.path.join(tmp, f"dense{seed}.npz")
            dense_acc.append(accuracy.train_dense(seed, data, args, path))
            for density in STR_DENSITIES:
                for name, fn in STR_METHODS:
                    job = {"seed": seed, "weights": path, "density": density}
                    results[(name, density, seed)] = accuracy.InProcess(name, fn).run_one(
                        job, data, ctx
                    )
    lines = [
        f"\n### 1. STR on LeNet-300-100 (digits; dense {args.dense_epochs} epochs, "
        f"{args.epochs} fine-tuning epochs, median of seeds {list(seeds)})",
        "| target density | dense acc | magnitude acc (dens) | L-C acc (dens) | STR acc (dens) |",
        "|---|---|---|---|---|",
    ]
    for d in STR_DENSITIES:
        cells = []
        for name, _ in STR_METHODS:
            accs = [results[(name, d, s)]["acc"] for s in seeds]
            dens = [results[(name, d, s)]["density"] for s in seeds]
            cells.append(
                f"{_median(accs):.4f} [{min(accs):.3f}-{max(accs):.3f}] ({_median(dens):.4f})"
            )
        lines.append(f"| {d:g} | {_median(dense_acc):.4f} | " + " | ".join(cells) + " |")
    lines.append("\nPer-layer densities STR learned (the median-accuracy seed):")
    lines.append("| target | " + " | ".join(("fc1", "fc2", "logits")) + " |")
    lines.append("|---|---|---|---|")
    for d in STR_DENSITIES:
        runs = sorted(seeds, key=lambda s: results[("STR", d, s)]["acc"])
        layers = results[("STR", d, runs[len(runs) // 2])]["layers"]
        lines.append(
            f"| {d:g} | "
            + " | ".join(f"{layers.get(n, float('nan')):.4f}" for n in ("fc1", "fc2", "logits"))
            + " |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------- 2./3. channels on the CNNs


def _build(model_name, width_scale=1.0):
    """The CNN (digits) or the ResNet of structured.py with `width_scale` of the channels."""
    if model_name == "resnet":
        return structured.resnet(width=max(1, round(32 * width_scale)))
    layers = keras.layers
    w = [max(1, round(c * width_scale)) for c in (16, 32, 64)]
    return keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1)),
            layers.Conv2D(w[0], 3, activation="relu"),
            layers.Conv2D(w[1], 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(w[2], activation="relu"),
            layers.Dense(10),
        ]
    )


def matching_density(model_name, target_flops):
    """The uniform channel density whose architecture has FLOPs nearest `target_flops`."""
    steps = 32 if model_name == "resnet" else 64
    candidates = [(k / steps) for k in range(1, steps + 1)]
    return min(
        candidates, key=lambda d: abs(structured.flops(_build(model_name, d)) - target_flops)
    )


def _fresh(model_name, weights):
    model = _digits.build("cnn", keras) if model_name == "cnn" else structured.resnet()
    model.set_weights(weights)
    return model


def _has_bn(model):
    return any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def _fit(model, data, epochs, callbacks=()):
    model.fit(data[0], data[1], epochs=epochs, batch_size=32, verbose=0, callbacks=list(callbacks))


def _shrunk(pruned, data):
    """The shrunk plain model (BatchNorm statistics re-estimated first)."""
    if _has_bn(pruned):
        structured.recalibrate_batchnorm(pruned, data[0])
    return kc.strip(pruned, shrink=True)


def _stats(small, data, name, ctx):
    """Shrunk model's accuracy, FLOPs, LiteRT p50."""
    return {
        "acc": _digits.accuracy(small, data[2], data[3]),
        "flops": structured.flops(small),
        "p50": structured.litert_p50(small, data[2], ctx["dir"], name),
        "params": small.count_params(),
    }


def _gated(model_name, weights, data, ctx, budget, cost="flops", table=None):
    scheme = kc.ChannelGates(budget=budget, cost=cost, latency_table=table)
    gated = scheme.apply(_fresh(model_name, weights))
    _digits.compile_model(gated, keras)
    _fit(gated, data, ctx["epochs"], kc.callbacks(scheme))
    return _shrunk(gated, data)


def gates(model_name, weights, data, ctx, budget):
    small = _gated(model_name, weights, data, ctx, budget)
    return _stats(small, data, f"{model_name}_gates_flops_{budget}", ctx)


def predicted_latency(dense, small, table):
    """ChannelCost("latency", table) of `small`'s channel counts, over the dense total."""
    from keras_condensa.channel_cost import (  # noqa: PLC0415
        ChannelCost,
        group_name,
        narrowable_groups,
    )
    from keras_condensa.dependency import DependencyGraph  # noqa: PLC0415

    graph = DependencyGraph(dense, on_unknown="skip")
    kept = {
        group_name(g): g.size for g in narrowable_groups(DependencyGraph(small, on_unknown="skip"))
    }
    active = {id(g): kept.get(group_name(g), g.size) for g in narrowable_groups(graph)}
    return ChannelCost(graph, "latency", table).total(active) / table["__total__"]


def latency_gates(model_name, dense, data, ctx, table, measure):
    """ChannelGates(cost="latency"): stats, measured and predicted shrunk/dense latency."""
    small = _gated(model_name, dense.get_weights(), data, ctx, LATENCY_BUDGET, "latency", table)
    out = _stats(small, data, f"{model_name}_gates_latency", ctx)
    x = data[2][:1]
    out["measured"] = measure(small, x) / measure(dense, x)
    out["predicted"] = predicted_latency(dense, small, table)
    return out


def uniform(model_name, weights, data, ctx, density):
    scheme = kc.Compose(
        [
            kc.FilterPrune(density=density, schedule=structured.gradual()),
            kc.NeuronPrune(density=density, exclude=["logits"], schedule=structured.gradual()),
        ]
    )
    pruned = scheme.apply(_fresh(model_name, weights))
    _digits.compile_model(pruned, keras)
    _fit(pruned, data, ctx["epochs"], kc.callbacks(scheme))
    out = _stats(_shrunk(pruned, data), data, f"{model_name}_uniform_{density:.4f}", ctx)
    out["density"] = density
    return out


def hspg(model_name, weights, data, ctx, scope):
    """HSPG (SGD) at sparsity HSPG_SPARSITY over all channels ("global") or in each group."""
    model = _fresh(model_name, weights)
    steps = ctx["epochs"] * _digits.steps_per_epoch(len(data[0]), 32)
    optimizer = kc.optimizers.HSPG(
        model,
        sparsity=HSPG_SPARSITY,
        start_step=int(0.1 * steps),
        end_step=int(structured.PRUNE_UNTIL * steps),
        scope=scope,
        learning_rate=0.05,
        momentum=0.9,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    _fit(model, data, ctx["epochs"])
    zero = kc.optimizers.zero_channels(model, optimizer.groups)
    total = sum(g.size for g in optimizer.groups)
    if _has_bn(model):
        structured.recalibrate_batchnorm(model, data[0])
    out = _stats(kc.shrink(model), data, f"{model_name}_hspg_{scope}", ctx)
    out.update(zero=zero, groups=total)
    return out


def litert_measure(directory):
    """`measure(keras_model, x) -> seconds`: LiteRT p50 (batch 1, 1 thread, 500 runs)."""
    import tflite_export as te  # noqa: PLC0415

    def measure(model, x):
        path = os.path.join(directory, "latency_table_part.tflite")
        te.export(model, path)
        return te.benchmark(path, num_threads=1, runs=500, warmup=50).p50_ms / 1000

    return measure


def run_channels(model_name, seed, args, directory, with_hspg):
    data = _digits.load("cnn")
    keras.utils.set_random_seed(seed)
    dense = _digits.build("cnn", keras) if model_name == "cnn" else structured.resnet()
    _digits.compile_model(dense, keras)
    _fit(dense, data, args.dense_epochs)
    weights = dense.get_weights()
    ctx = {"epochs": args.fine_tune_epochs, "dir": directory}
    out = {
        "dense": {
            "acc": _digits.accuracy(dense, data[2], data[3]),
            "flops": structured.flops(dense),
            "p50": structured.litert_p50(dense, data[2], directory, f"{model_name}_dense"),
        }
    }
    for budget in FLOPS_BUDGETS:
        keras.utils.set_random_seed(seed)
        g = gates(model_name, weights, data, ctx, budget)
        keras.utils.set_random_seed(seed)
        u = uniform(model_name, weights, data, ctx, matching_density(model_name, g["flops"]))
        out[("flops", budget)] = (g, u)
    measure = litert_measure(directory)
    table = kc.latency_table(dense, measure=measure, batch_size=1)
    keras.utils.set_random_seed(seed)
    out["latency"] = latency_gates(model_name, dense, data, ctx, table, measure)
    if with_hspg:
        for scope in HSPG_SCOPES:
            keras.utils.set_random_seed(seed)
            h = hspg(model_name, weights, data, ctx, scope)
            keras.utils.set_random_seed(seed)
            h["uniform"] = uniform(model_name, weights, data, ctx, 1.0 - h["zero"] / h["groups"])
            out[("hspg", scope)] = h
    return out


def _cell(runs, key, fmt=".4f"):
    return format(_median([key(r) for r in runs]), fmt)


def channel_tables(model_name, runs, with_hspg, args):
    lines = [
        f"\n### 2. Channel gates vs uniform FilterPrune: {model_name} "
        f"(dense {args.dense_epochs} epochs, {args.fine_tune_epochs} fine-tuning epochs, "
        f"median of {len(runs)} seed(s))",
        f"Dense: acc {_cell(runs, lambda r: r['dense']['acc'])}, "
        f"FLOPs {_cell(runs, lambda r: r['dense']['flops'], ',.0f')}, "
        f"LiteRT p50 {_cell(runs, lambda r: r['dense']['p50'])} ms",
        "| FLOPs budget | method | density | acc | shrunk FLOPs (x dense) "
        "| LiteRT p50 ms (x dense) |",
        "|---|---|---|---|---|---|",
    ]

    def row(label, method, get, density="-"):
        return (
            f"| {label} | {method} | {density} | {_cell(runs, lambda r: get(r)['acc'])} "
            f"| {_cell(runs, lambda r: get(r)['flops'], ',.0f')} "
            f"({_cell(runs, lambda r: get(r)['flops'] / r['dense']['flops'], '.3f')}x) "
            f"| {_cell(runs, lambda r: get(r)['p50'])} "
            f"({_cell(runs, lambda r: get(r)['p50'] / r['dense']['p50'], '.2f')}x) |"
        )

    for b in FLOPS_BUDGETS:
        lines.append(row(b, "ChannelGates(flops)", lambda r, b=b: r[("flops", b)][0]))
        dens = _cell(runs, lambda r, b=b: r[("flops", b)][1]["density"], ".3f")
        lines.append(row(b, "uniform FilterPrune", lambda r, b=b: r[("flops", b)][1], dens))
    lines.append(
        row(
            f"latency {LATENCY_BUDGET}",
            "ChannelGates(latency, LiteRT table)",
            lambda r: r["latency"],
        )
    )
    measured = [r["latency"]["measured"] for r in runs]
    predicted = [r["latency"]["predicted"] for r in runs]
    lines += [
        f"\ncost='latency', budget {LATENCY_BUDGET} (table: whole model timed on LiteRT with one "
        "group narrowed, batch 1, 1 thread, 500 runs; measured = shrunk p50 / dense p50 "
        "re-timed the same way after fine-tuning; predicted = ChannelCost total of the kept "
        "channels / dense total):",
        "| seed | measured shrunk/dense | off budget | predicted (cost model) | "
        "measured/predicted |",
        "|---|---|---|---|---|",
    ]
    for seed, m, p in zip(args.seed_list, measured, predicted, strict=True):
        lines.append(
            f"| {seed} | {m:.3f} | {100 * (m / LATENCY_BUDGET - 1):+.1f}% | {p:.3f} | {m / p:.3f} |"
        )
    m, p = _median(measured), _median(predicted)
    lines.append(
        f"| median | {m:.3f} | {100 * (m / LATENCY_BUDGET - 1):+.1f}% | {p:.3f} "
        f"| {_median([a / b for a, b in zip(measured, predicted, strict=True)]):.3f} |"
    )
    lines.append("(goal: measured within 10% of the budget)")
    if with_hspg:
        lines += [
            f"\n### 3. HSPG (SGD lr 0.05 momentum 0.9, sparsity {HSPG_SPARSITY}, "
            f"{args.fine_tune_epochs} epochs from the dense weights) vs uniform FilterPrune + "
            f"NeuronPrune at the same channel sparsity (same epochs): {model_name}",
            "scope 'layer': every group zeroes the same fraction (like-for-like with uniform "
            "FilterPrune); scope 'global': one ranking over all groups' channels.",
            "| method | HSPG: zero channels / groups' channels; uniform: kept density | acc "
            "| shrunk FLOPs (x dense) | LiteRT p50 ms (x dense) |",
            "|---|---|---|---|---|",
        ]
        for scope in HSPG_SCOPES:
            zeros = _cell(runs, lambda r, c=scope: r[("hspg", c)]["zero"], ".0f")
            total = _cell(runs, lambda r, c=scope: r[("hspg", c)]["groups"], ".0f")
            dens = _cell(runs, lambda r, c=scope: r[("hspg", c)]["uniform"]["density"], ".3f")
            for label, get, count in (
                (f"HSPG scope='{scope}'", lambda r, c=scope: r[("hspg", c)], f"{zeros} / {total}"),
                (
                    f"uniform FilterPrune (vs '{scope}')",
                    lambda r, c=scope: r[("hspg", c)]["uniform"],
                    f"density {dens}",
                ),
            ):
                lines.append(
                    f"| {label} | {count} | {_cell(runs, lambda r, g=get: g(r)['acc'])} "
                    f"| {_cell(runs, lambda r, g=get: g(r)['flops'], ',.0f')} "
                    f"({_cell(runs, lambda r, g=get: g(r)['flops'] / r['dense']['flops'], '.3f')}"
                    f"x) | {_cell(runs, lambda r, g=get: g(r)['p50'])} "
                    f"({_cell(runs, lambda r, g=get: g(r)['p50'] / r['dense']['p50'], '.2f')}x) |"
                )
    return "\n".join(lines)


def hspg_available():
    try:
        from keras_condensa.optimizers import HSPG  # noqa: F401, PLC0415
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return f"{type(e).__name__}: {e}"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="seed 0 only")
    parser.add_argument("--dense-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10, help="LeNet fine-tuning epochs")
    parser.add_argument("--fine-tune-epochs", type=int, default=20, help="CNN fine-tuning epochs")
    parser.add_argument("--parts", default="str,channels", help="which parts to run")
    parser.add_argument("--models", default="cnn,resnet")
    args = parser.parse_args()
    args.batch_size = 32
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    args.seed_list = seeds
    warnings.filterwarnings("ignore", message=".*will reach sparsity.*")
    started = time.perf_counter()
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, CPU only")
    if "str" in args.parts:
        print(run_str(seeds, args), flush=True)
    if "channels" in args.parts:
        missing = hspg_available()
        if missing:
            print(f"\nHSPG: not available ({missing})")
        with tempfile.TemporaryDirectory() as directory:
            for model_name in args.models.split(","):
                runs = [
                    run_channels(model_name, s, args, directory, missing is None) for s in seeds
                ]
                print(channel_tables(model_name, runs, missing is None, args), flush=True)
    print(f"\nTotal time {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
