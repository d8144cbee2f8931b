"""Accuracy after pruning LeNet-300-100 (or a small CNN) on digits: keras-condensa vs tfmot.

    .venv/bin/python benchmarks/accuracy.py
    .venv/bin/python benchmarks/accuracy.py --seeds 0 --densities 0.1,0.02   # quicker
    .venv/bin/python benchmarks/accuracy.py --quick   # seed 0, densities 0.1,0.05,0.02
    .venv/bin/python benchmarks/accuracy.py --quick --model cnn --methods kc,kc-lc,kc-distill,tfmot

Per seed, a dense LeNet-300-100 is trained (Adam, `--dense-epochs`), its
weights saved as .npz; then for every density each method fine-tunes a model
that starts from exactly those weights, for `--epochs` epochs, and reports
validation accuracy and the measured density of the stripped model (nonzero
fraction over all kernels: every Dense layer is pruned, biases are not).

Methods (columns) share one gradual schedule: PolynomialDecay from sparsity
0 at `begin` to `1 - density` at `end` (fractions of the fine-tuning run; the
tfmot side gets the same steps as ints, since tfmot counts steps), with a
mask update every `--frequency` steps.

- kc:        `kc.Prune(density, schedule=kc.PolynomialDecay(...))`, global
             magnitude threshold (the kc default, as Condensa).
- kc-layer:  the same with `scope="layer"`: each layer keeps `density` of
             its weights, as tfmot does; the like-for-like comparison.
- tfmot:     tf_keras twin, `prune_low_magnitude` + `PolynomialDecay`,
             `UpdatePruningStep`, `strip_pruning`, in its own process
             (`_tfmot_twin.py`; tfmot must not share a process with Keras 3).

Prune + quantize (the same total epoch budget, `--epochs` = N):

- kc+int8, kc+int4, kc+fp16: `kc.Compose([kc.Prune(density, schedule=<the
             kc column's PolynomialDecay>), kc.Quantize(dtype)])`, N epochs
             of pruning and QAT together. Accuracy is the QAT model's own
             (fake-quantized) forward pass; density is measured on
             `kc.strip(..., keep_quantization=False)` (quantized weights baked in).
- tfmot+int8: tf_keras twin, prune as the tfmot column for N - `--qat-epochs`
             epochs (the schedule's fractions applied to those epochs),
             `strip_pruning`, then `--qat-epochs` epochs of QAT with
             `Default8BitPrunePreserveQuantizeScheme` (plain `quantize_model`
             where it is missing). Density: kernels times the scheme's frozen
             pruning mask, i.e. the weights the int8 model stores.

Accuracy recovery (the same `--epochs` budget, from the same dense weights):

- kc-lc:     `kc.LC(kc.Prune(density), steps=--lc-steps).fit(model, ...)`:
             Condensa's L-C optimizer with kc.LC's default mu schedule and
             `lr_end` (`--lc-lr-end` overrides it);
             accuracy of the returned compressed model theta.
- kc-distill: the kc column's gradual pruning, fine-tuned through
             `kc.distill(pruned, dense, temperature=--temperature,
             alpha=--alpha)`: the dense model is the teacher.
- kc-lc+int8: `kc.LC(kc.Compose([kc.Prune(density), kc.Quantize("int8")]))`:
             weights pruned and int8 (symmetric, per tensor); activations stay
             float (L-C projects weights only).
- kc-distill+int8: the kc+int8 column fine-tuned through `kc.distill`.

The prune+quantize columns run only for `--quant-densities` and `--quant-seeds` (default
0.1,0.05,0.02 and seed 0); other cells show "-".

The table shows medians over the seeds; a second table the min-max spread.

Adding a method (quantization, L-C, distillation, ...): write a function
`fn(model, density, data, ctx) -> {"acc": float, "density": float}` that
gets a fresh Keras 3 model holding the dense weights, and add
`InProcess("name", fn)` to `METHODS`. A method that must run in another
process subclasses `Method` the way `Subprocess` does.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _digits  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "lenet300"  # --model sets it


class Context:
    """What every method gets besides the model: training settings and the schedule."""

    def __init__(self, args, n_train):
        self.batch_size = args.batch_size
        self.epochs = args.epochs
        self.begin_fraction = args.begin
        self.end_fraction = args.end
        self.frequency = args.frequency
        self.total_steps = args.epochs * _digits.steps_per_epoch(n_train, args.batch_size)
        # The same schedule in steps, for libraries that count steps (tfmot), resolved
        # as kc resolves fractions: 0.0 is the first step (0), 1.0 the last (total - 1).
        self.begin_step = int(round(args.begin * (self.total_steps - 1)))
        self.end_step = int(round(args.end * (self.total_steps - 1)))
        self.qat_epochs = args.qat_epochs
        self.lc_steps = args.lc_steps
        self.lc_lr_end = args.lc_lr_end
        self.temperature = args.temperature
        self.alpha = args.alpha
        self.seed = 0  # set per job


class Method:
    """A column group of the table. `start` may launch background work; `results` collects it.

    `quant` methods run only the jobs of `--quant-densities` x `--quant-seeds`.
    """

    name = "method"
    quant = False

    def start(self, jobs, data, ctx):
        self._results = [self.run_one(job, data, ctx) for job in jobs]

    def results(self):
        return self._results


class InProcess(Method):
    """A method run in this (Keras 3) process, one job at a time.

    `fn(model, density, data, ctx) -> {"acc": ..., "density": ...}`; `model`
    is a fresh compiled-or-not Keras 3 model holding the job's dense weights.
    """

    def __init__(self, name, fn, quant=False):
        self.name = name
        self.fn = fn
        self.quant = quant

    def run_one(self, job, data, ctx):
        import keras  # noqa: PLC0415

        keras.utils.set_random_seed(job["seed"])
        ctx.seed = job["seed"]
        model = _digits.build(MODEL, keras)
        with np.load(job["weights"]) as f:
            model.set_weights([f[f"arr_{i}"] for i in range(len(f.files))])
        return self.fn(model, job["density"], data, ctx)


class Subprocess(Method):
    """A method run by another script (`script mode -`, JSON in and out), in the background."""

    def __init__(self, name, script, mode, quant=False):
        self.name = name
        self.script = script
        self.mode = mode
        self.quant = quant

    def launch(self):
        """Starts the process early: it imports TensorFlow while the dense models train."""
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("KERAS_BACKEND", None)
        # stderr (TensorFlow's logs) goes to a file, so a full pipe never blocks the process.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            [sys.executable, self.script, self.mode, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )

    def start(self, jobs, data, ctx):
        config = {
            "model": MODEL,
            "jobs": jobs,
            "epochs": ctx.epochs,
            "batch_size": ctx.batch_size,
            "begin_step": ctx.begin_step,
            "end_step": ctx.end_step,
            "frequency": ctx.frequency,
            "begin_fraction": ctx.begin_fraction,
            "end_fraction": ctx.end_fraction,
            "qat_epochs": ctx.qat_epochs,
        }
        self._proc.stdin.write(json.dumps(config))
        self._proc.stdin.close()

    def results(self):
        stdout = self._proc.stdout.read()
        self._proc.wait()
        if self._proc.returncode != 0:
            self._stderr.seek(0)
            sys.stderr.write(self._stderr.read()[-5000:])
            raise RuntimeError(
                f"{self.name}: {self.script} failed with exit code {self._proc.returncode}"
            )
        lines = [line for line in stdout.splitlines() if line.strip()]
        return json.loads(lines[-1])["results"]


def evaluate(model, data):
    return _digits.accuracy(model, data[2], data[3])


def kc_prune_operator(density, ctx, scope="global"):
    """kc.Prune with a PolynomialDecay schedule in fractions of the run."""
    import keras_condensa as kc  # noqa: PLC0415

    return kc.Prune(
        density=density,
        scope=scope,
        schedule=kc.PolynomialDecay(
            initial_sparsity=0.0,
            begin_step=ctx.begin_fraction,
            end_step=ctx.end_fraction,
            frequency=ctx.frequency,
        ),
    )


def kc_prune(model, density, data, ctx, scope="global"):
    """kc.Prune with a PolynomialDecay schedule in fractions of the run."""
    import keras  # noqa: PLC0415

    import keras_condensa as kc  # noqa: PLC0415

    scheme = kc_prune_operator(density, ctx, scope)
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
    final = kc.strip(pruned)
    return {"acc": evaluate(final, data), "density": _digits.kernel_density(final)}


def kc_prune_layer(model, density, data, ctx):
    return kc_prune(model, density, data, ctx, scope="layer")


def kc_prune_quantize(model, density, data, ctx, dtype):
    """Compose([Prune (the kc column's schedule), Quantize(dtype)]), all epochs QAT."""
    import keras  # noqa: PLC0415

    import keras_condensa as kc  # noqa: PLC0415

    scheme = kc.Compose([kc_prune_operator(density, ctx), kc.Quantize(dtype)])
    compressed = scheme.apply(model)
    _digits.compile_model(compressed, keras)
    compressed.fit(
        data[0],
        data[1],
        batch_size=ctx.batch_size,
        epochs=ctx.epochs,
        verbose=0,
        callbacks=kc.callbacks(scheme),
    )
    # The QAT model's own forward pass is the fake-quantized one the deployed model computes.
    acc = evaluate(compressed, data)
    baked = kc.strip(compressed, keep_quantization=False)
    return {"acc": acc, "density": _digits.kernel_density(baked)}


def _dense_teacher(model):
    """A frozen copy of the dense model the job starts from (the distillation teacher)."""
    import keras  # noqa: PLC0415

    import keras_condensa as kc  # noqa: PLC0415

    teacher = kc.strip(model)
    teacher.trainable = False
    _digits.compile_model(teacher, keras)
    return teacher


def kc_lc(model, density, data, ctx, quantize=None):
    """kc.LC to `density` (and int8 weights with quantize="int8"), the same epoch budget."""
    import keras  # noqa: PLC0415

    import keras_condensa as kc  # noqa: PLC0415

    scheme = kc.Prune(density=density)
    if quantize:
        scheme = kc.Compose([scheme, kc.Quantize(quantize)])
    _digits.compile_model(model, keras)
    options = {} if ctx.lc_lr_end is None else {"lr_end": ctx.lc_lr_end}
    lc = kc.LC(scheme, steps=ctx.lc_steps, **options)
    final = lc.fit(
        model, data[0], data[1], epochs=ctx.epochs, batch_size=ctx.batch_size, seed=ctx.seed
    )
    return {"acc": evaluate(final, data), "density": _digits.kernel_density(final)}


def kc_distill(model, density, data, ctx, quantize=None):
    """The kc column's gradual pruning (and QAT), trained through kc.distill from the dense."""
    import keras  # noqa: PLC0415

    import keras_condensa as kc  # noqa: PLC0415

    teacher = _dense_teacher(model)
    scheme = kc_prune_operator(density, ctx)
    if quantize:
        scheme = kc.Compose([scheme, kc.Quantize(quantize)])
    student = scheme.apply(model)
    _digits.compile_model(student, keras)
    distiller = kc.distill(student, teacher, temperature=ctx.temperature, alpha=ctx.alpha)
    distiller.fit(
        data[0],
        data[1],
        batch_size=ctx.batch_size,
        epochs=ctx.epochs,
        verbose=0,
        callbacks=kc.callbacks(scheme),
    )
    if quantize:
        acc = evaluate(student, data)
        return {"acc": acc, "density": _digits.kernel_density(kc.strip(student, False))}
    final = kc.strip(student)
    return {"acc": evaluate(final, data), "density": _digits.kernel_density(final)}


def _lc_int8(model, density, data, ctx):
    return kc_lc(model, density, data, ctx, quantize="int8")


def _distill_int8(model, density, data, ctx):
    return kc_distill(model, density, data, ctx, quantize="int8")


def _quantize_with(dtype):
    def fn(model, density, data, ctx):
        return kc_prune_quantize(model, density, data, ctx, dtype)

    return fn


METHODS = [
    InProcess("kc", kc_prune),
    InProcess("kc-layer", kc_prune_layer),
    Subprocess("tfmot", os.path.join(HERE, "_tfmot_twin.py"), "accuracy"),
    InProcess("kc+int8", _quantize_with("int8"), quant=True),
    InProcess("kc+int4", _quantize_with("int4"), quant=True),
    InProcess("kc+fp16", _quantize_with("float16"), quant=True),
    Subprocess("tfmot+int8", os.path.join(HERE, "_tfmot_twin.py"), "accuracy_qat", quant=True),
    InProcess("kc-lc", kc_lc),
    InProcess("kc-distill", kc_distill),
    InProcess("kc-lc+int8", _lc_int8, quant=True),
    InProcess("kc-distill+int8", _distill_int8, quant=True),
]


def train_dense(seed, data, args, path):
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(seed)
    model = _digits.build(MODEL, keras)
    _digits.compile_model(model, keras)
    model.fit(data[0], data[1], batch_size=args.batch_size, epochs=args.dense_epochs, verbose=0)
    np.savez(path, *model.get_weights())
    return evaluate(model, data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--densities", default="0.5,0.2,0.1,0.05,0.02")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dense-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--begin", type=float, default=0.0, help="schedule begin, fraction of fine-tuning"
    )
    parser.add_argument(
        "--end", type=float, default=0.7, help="schedule end, fraction of fine-tuning"
    )
    parser.add_argument("--frequency", type=int, default=10, help="steps between mask updates")
    parser.add_argument("--methods", default=",".join(m.name for m in METHODS))
    parser.add_argument(
        "--quant-densities",
        default="0.1,0.05,0.02",
        help="densities the prune+quantize columns run for",
    )
    parser.add_argument(
        "--quant-seeds", default="0", help="seeds the prune+quantize columns run for"
    )
    parser.add_argument(
        "--qat-epochs",
        type=int,
        default=2,
        help="tfmot+int8: QAT epochs at the end of the --epochs budget (pruning gets the rest)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="seed 0 and densities 0.1,0.05,0.02 for every column",
    )
    parser.add_argument("--model", choices=_digits.MODELS, default="lenet300")
    parser.add_argument("--lc-steps", type=int, default=20, help="kc-lc: L-C steps")
    parser.add_argument(
        "--lc-lr-end",
        type=float,
        default=None,
        help="kc-lc: learning rate of the last L step (default: kc.LC's, 5e-3)",
    )
    parser.add_argument("--temperature", type=float, default=2.0, help="kc-distill: temperature")
    parser.add_argument("--alpha", type=float, default=0.5, help="kc-distill: soft-loss weight")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args()
    global MODEL
    MODEL = args.model
    if args.quick:
        args.seeds = "0"
        args.densities = "0.1,0.05,0.02"

    densities = [float(d) for d in args.densities.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = args.methods.split(",")
    methods = [m for m in METHODS if m.name in chosen]
    quant_densities = {float(d) for d in args.quant_densities.split(",")}
    quant_seeds = {int(s) for s in args.quant_seeds.split(",")}
    started = time.perf_counter()
    data = _digits.load(MODEL)
    ctx = Context(args, len(data[0]))
    # kc warns when a fit stops before a schedule's target; the table shows the measured density.
    warnings.filterwarnings("ignore", message=".*will reach sparsity.*")

    for m in methods:
        if isinstance(m, Subprocess):
            m.launch()
    with tempfile.TemporaryDirectory() as tmp:
        dense_acc = {}
        for seed in seeds:
            path = os.path.join(tmp, f"dense_seed{seed}.npz")
            dense_acc[seed] = train_dense(seed, data, args, path)
        jobs = [
            {"seed": s, "weights": os.path.join(tmp, f"dense_seed{s}.npz"), "density": d}
            for d in densities
            for s in seeds
        ]
        quant_jobs = [
            j for j in jobs if j["density"] in quant_densities and j["seed"] in quant_seeds
        ]
        jobs_of = {m.name: quant_jobs if m.quant else jobs for m in methods}
        # Background methods first, so they overlap with the in-process ones.
        ordered = sorted(methods, key=lambda m: not isinstance(m, Subprocess))
        for m in ordered:
            m.start(jobs_of[m.name], data, ctx)
        results = {m.name: m.results() for m in ordered}
    elapsed = time.perf_counter() - started

    def cell(name, density, key):
        values = [
            r[key]
            for j, r in zip(jobs_of[name], results[name], strict=True)
            if j["density"] == density
        ]
        return values

    def med(name, density, key, width):
        v = cell(name, density, key)
        return f"{np.median(v):>{width}.4f}" if v else f"{'-':>{width}}"

    print(
        f"\n{'LeNet-300-100' if MODEL == 'lenet300' else 'Small CNN'} on digits "
        f"({len(data[0])} train / {len(data[2])} val), Adam 1e-3, "
        f"batch {args.batch_size}."
        f"\nDense: {args.dense_epochs} epochs. Pruning: {args.epochs} fine-tuning epochs from the "
        "dense weights, PolynomialDecay 0 -> 1-density"
        f"\nfrom {args.begin:.0%} to {args.end:.0%} of the run (steps {ctx.begin_step} -> "
        f"{ctx.end_step} of {ctx.total_steps}), mask update every {args.frequency} steps."
        f"\nMedian over seeds {seeds}. 'dens' = measured nonzero fraction over all kernels of the "
        "stripped model."
    )
    if any(m.quant for m in methods):
        print(
            f"Prune+quantize columns, same {args.epochs}-epoch budget, only densities "
            f"{sorted(quant_densities, reverse=True)} x seeds {sorted(quant_seeds)} "
            "('-' elsewhere):"
            "\n  kc+int8/int4/fp16: Compose([Prune(same schedule), Quantize(dtype)]) for "
            f"{args.epochs} epochs; acc = the QAT model's fake-quantized forward pass."
            f"\n  tfmot+int8: prune_low_magnitude {args.epochs - args.qat_epochs} epochs "
            f"(schedule fractions of those epochs), strip_pruning, then {args.qat_epochs} "
            "epochs QAT (Default8BitPrunePreserveQuantizeScheme)."
        )
    names = [m.name for m in methods]
    acc_w = max(14, *(len(n) + 6 for n in names))
    dens_w = max(15, *(len(n) + 7 for n in names))
    header = f"{'density':>8}{'dense acc':>11}" + "".join(f"{n + ' acc':>{acc_w}}" for n in names)
    header += "".join(f"{n + ' dens':>{dens_w}}" for n in names)
    print(header)
    print("-" * len(header))
    dense_med = float(np.median(list(dense_acc.values())))
    for d in densities:
        line = f"{d:>8.2f}{dense_med:>11.4f}"
        line += "".join(med(n, d, "acc", acc_w) for n in names)
        line += "".join(med(n, d, "density", dens_w) for n in names)
        print(line)
    print("\nSpread over seeds (min-max accuracy):")
    header = f"{'density':>8}{'dense':>15}" + "".join(f"{n:>17}" for n in names)
    print(header)
    print("-" * len(header))
    dvals = list(dense_acc.values())
    for d in densities:
        line = f"{d:>8.2f}{min(dvals):>8.4f}-{max(dvals):.4f}"
        for n in names:
            v = cell(n, d, "acc")
            line += f"{min(v):>10.4f}-{max(v):.4f}" if v else f"{'-':>17}"
        print(line)
    print(f"\nTotal time {elapsed:.0f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "dense_acc": dense_acc,
                    "jobs": jobs_of,
                    "results": results,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
