"""Training-step overhead of pruning: keras-condensa vs tfmot, each against its plain model.

    .venv/bin/python benchmarks/overhead.py                 # TensorFlow backend
    .venv/bin/python benchmarks/overhead.py --backend jax   # plus kc rows on JAX

For LeNet-300-100 and a small CNN on scikit-learn's digits, it times a train
step of:

- the plain Keras 3 model and the same model wrapped by `kc.Prune(density=0.1)`
  with a `kc.PolynomialDecay` schedule active and `kc.callbacks(scheme)`,
  in one process (per backend);
- the plain tf_keras twin and the twin wrapped by tfmot's
  `prune_low_magnitude` with the same schedule and `UpdatePruningStep`, in
  another process (tfmot must not share a process with Keras 3).

Both schedules are given in steps (tfmot semantics): sparsity rises from 0
at step 0 to 0.9 at 90% of all the steps the model is trained for, with a
mask update every `--frequency` steps, so updates happen throughout the
timed epochs.

How the time is taken: a callback stamps every `on_train_batch_begin`
(placed before the pruning callbacks, so their per-step work is inside the
step). Each model is built once and fitted one untimed warm-up epoch
(tracing); then plain and pruned models take turns, one `fit(epochs=1)`
each, `--epochs` times. The training set is repeated so that an epoch has
about 80 steps. Per variant:

- ms/step (primary): median over the timed epochs of epoch time / steps,
  from the epoch's first batch-begin to its end. This includes the steps
  that update masks.
- ratio (pruned/plain): median over epochs `i` of the ratio of the two
  variants' epoch `i`, which ran back to back; on a machine shared with
  other work this is steadier than a ratio of medians.
- step median: median of single steps' begin-to-begin intervals; a mask
  update every 10 steps hardly moves it, so it shows the steady-state cost
  of the masked forward/backward pass.

Every ratio is measured within one process, so the Keras 3 vs tf_keras
difference in plain step time cancels out.

Target (from the issue): the kc wrapper costs at most 1.3x the plain step,
and no more (relative to plain) than tfmot.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _digits  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_RATIO = 1.3
DENSITY = 0.1
END_FRACTION = 0.9  # of all steps the model trains for: mask updates run through the timed epochs


def kc_worker(config):
    """Runs in a subprocess with KERAS_BACKEND set: plain vs kc-pruned Keras 3 models."""
    import warnings  # noqa: PLC0415

    import keras  # noqa: PLC0415

    import keras_condensa as kc  # noqa: PLC0415

    # Each fit(epochs=1) stops before the schedule's end, and kc says so: expected here.
    warnings.filterwarnings("ignore", message=".*will reach sparsity.*")
    results = {}
    for model_name in config["models"]:
        for batch_size in config["batch_sizes"]:

            def plain(name, total_steps):
                model = _digits.build(name, keras)
                _digits.compile_model(model, keras)
                return model, []

            def pruned(name, total_steps):
                scheme = kc.Prune(
                    density=config["density"],
                    scope=config["scope"],
                    schedule=kc.PolynomialDecay(
                        initial_sparsity=0.0,
                        begin_step=0,
                        end_step=int(round(config["end_fraction"] * total_steps)),
                        frequency=config["frequency"],
                    ),
                )
                model = scheme.apply(_digits.build(name, keras))
                _digits.compile_model(model, keras)
                return model, kc.callbacks(scheme)

            row = _digits.time_variants(
                {"plain": plain, "pruned": pruned}, model_name, batch_size, config["epochs"], keras
            )
            row["plain"].pop("model")
            model = row["pruned"].pop("model")
            row["pruned"]["density"] = _digits.kernel_density(kc.strip(model))
            results[f"{model_name}/{batch_size}"] = row
    return {"backend": keras.backend.backend(), "results": results}


def numbers(row, key):
    """`(plain ms, pruned ms, ratio)`: medians over epochs, ratio = median of per-epoch ratios."""
    plain, pruned = row["plain"][key], row["pruned"][key]
    ratio = _digits.median([b / a for a, b in zip(plain, pruned, strict=True)])
    return _digits.median(plain), _digits.median(pruned), ratio


def yes_no(v):
    return "n/a" if v is None else ("yes" if v else "NO")


def fmt(v, spec=".3f"):
    return "" if v is None else format(v, spec)


# (title, width); the first two are left-aligned.
COLUMNS = [
    ("model", 10),
    ("backend", 12),
    ("batch", 6),
    ("plain ms/step", 15),
    ("kc ms/step", 12),
    ("kc/plain", 10),
    ("tfmot plain ms/step", 21),
    ("tfmot ms/step", 15),
    ("tfmot/plain", 13),
    (f"<={TARGET_RATIO}x", 8),
    ("<=tfmot", 9),
]


def table_line(cells):
    widths = [w for _, w in COLUMNS][: len(cells)]
    return "".join(
        f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def print_table(title, kc_runs, tfmot, key):
    print(f"\n{title}")
    header = table_line([t for t, _ in COLUMNS])
    print(header)
    print("-" * len(header))
    verdicts = []
    for backend, runs in kc_runs:
        for row_key, row in runs.items():
            model_name, batch_size = row_key.split("/")
            if key == "step_ms" and backend == "jax":
                # JAX dispatches steps asynchronously: a step's begin-to-begin interval
                # is its dispatch time, not its compute time.
                line = table_line([model_name, backend, batch_size])
                print(f"{line}   n/a: JAX dispatches steps asynchronously")
                continue
            p, k, kc_ratio = numbers(row, key)
            t_ratio = None
            tp = tk = t_shown = None
            if row_key in tfmot:
                tp, tk, t_ratio = numbers(tfmot[row_key], key)
                t_shown = t_ratio
                if backend != "tensorflow":  # the tfmot numbers were printed on the TensorFlow row
                    tp = tk = t_shown = None
            cheap = kc_ratio <= TARGET_RATIO
            vs_tfmot = None if t_ratio is None else kc_ratio <= t_ratio
            verdicts.append((cheap, vs_tfmot))
            cells = [model_name, backend, batch_size, fmt(p), fmt(k), fmt(kc_ratio, ".2f")]
            cells += [fmt(tp), fmt(tk), fmt(t_shown, ".2f"), yes_no(cheap), yes_no(vs_tfmot)]
            print(table_line(cells))
    return verdicts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax"],
        default="tensorflow",
        help="jax: also run the kc side on JAX (extra rows; TensorFlow rows always run)",
    )
    parser.add_argument("--models", default="lenet300,cnn")
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument(
        "--epochs", type=int, default=8, help="timed epochs per variant (plus one warm-up)"
    )
    parser.add_argument("--frequency", type=int, default=10, help="steps between mask updates")
    parser.add_argument(
        "--scope",
        choices=["global", "layer"],
        default="global",
        help="kc.Prune scope (tfmot is always per layer)",
    )
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(kc_worker(json.loads(args.worker))))
        return

    config = {
        "models": args.models.split(","),
        "batch_sizes": [int(b) for b in args.batch_sizes.split(",")],
        "epochs": args.epochs,
        "density": DENSITY,
        "end_fraction": END_FRACTION,
        "frequency": args.frequency,
        "scope": args.scope,
    }
    me = os.path.abspath(__file__)
    backends = ["tensorflow"] + (["jax"] if args.backend == "jax" else [])
    kc_runs = []
    for backend in backends:
        print(f"timing plain vs kc on Keras 3 / {backend} ...", flush=True)
        out = _digits.run_json([me, "--worker", json.dumps(config)], env={"KERAS_BACKEND": backend})
        kc_runs.append((out["backend"], out["results"]))
    print("timing plain vs tfmot on tf_keras ...", flush=True)
    tfmot = _digits.run_json([os.path.join(HERE, "_tfmot_twin.py"), "overhead", json.dumps(config)])

    print(
        f"\nTrain-step time on digits (Adam). Pruned: density {DENSITY} "
        f"(kc.Prune scope={args.scope}; tfmot per layer),"
        f"\nPolynomialDecay from step 0 to {END_FRACTION:.0%} of the steps, "
        f"mask update every {args.frequency} steps."
        f"\n{args.epochs} timed epochs per variant (~80 steps each) after 1 warm-up epoch; "
        "plain/pruned alternate epoch by epoch."
        "\nkc columns: Keras 3, plain vs kc wrapper; "
        "tfmot columns: tf_keras, plain vs prune_low_magnitude;"
        "\nevery ratio is measured within its own process."
    )
    verdicts = print_table(
        "Primary: ms/step = median over epochs of (epoch time / steps), mask-update steps "
        "included;\n"
        "ratio = median over epochs of (pruned epoch / plain epoch run just before it)."
        + (
            "\nA JAX row's verdict compares with the tfmot ratio on the TensorFlow row above it."
            if "jax" in backends
            else ""
        ),
        kc_runs,
        tfmot,
        "epoch_ms",
    )
    print_table(
        "Steady state: ms/step = median over epochs of the epoch's median single-step "
        f"(batch-begin to\nbatch-begin) time, which leaves out the 1-in-{args.frequency} "
        "mask-update steps; "
        "ratio = median of per-epoch ratios",
        kc_runs,
        tfmot,
        "step_ms",
    )
    print(
        "\nCost of one mask update, derived: (primary ms/step - steady ms/step) x "
        f"{args.frequency} steps (ms; noisy, for orientation)"
    )

    def update_cost(row):
        return (
            _digits.median(row["pruned"]["epoch_ms"]) - _digits.median(row["pruned"]["step_ms"])
        ) * args.frequency

    for backend, runs in kc_runs:
        if backend == "jax":
            continue  # no steady-state step time on JAX (asynchronous dispatch)
        for row_key, row in runs.items():
            t = tfmot.get(row_key)
            t_cost = fmt(update_cost(t) if t else None, "7.1f")
            print(f"  {row_key:<14}kc {update_cost(row):7.1f}    tfmot {t_cost}")
    print(f"\nFinal kernel density of the pruned models (target {DENSITY}):")
    for backend, runs in kc_runs:
        for row_key, row in runs.items():
            print(f"  kc    {backend:<11}{row_key:<14}{row['pruned']['density']:.4f}")
    for row_key, row in tfmot.items():
        print(f"  tfmot {'tf_keras':<11}{row_key:<14}{row['pruned']['density']:.4f}")
    cheap = [c for c, _ in verdicts]
    vs_tfmot = [t for _, t in verdicts if t is not None]
    print(
        f"\nTarget (primary table): kc/plain <= {TARGET_RATIO}: "
        f"{'MET' if all(cheap) else 'NOT MET'} "
        f"({sum(cheap)}/{len(cheap)} rows); kc/plain <= tfmot/plain: "
        f"{'MET' if all(vs_tfmot) else 'NOT MET'} ({sum(vs_tfmot)}/{len(vs_tfmot)} rows)."
        "\nRatios within about 0.1 of each other are inside this machine's run-to-run noise."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": config, "kc": kc_runs, "tfmot": tfmot}, f, indent=1)


if __name__ == "__main__":
    main()
