"""`LC`: Condensa's L-C (learning-compression) optimizer, with Keras's own `fit`.

Carreira-Perpinan's learning-compression algorithm, as Condensa's
`condensa.opt.LC` runs it, is an augmented Lagrangian method over the
uncompressed weights `w` and their compressed copy `theta`:

- C step: `theta = scheme(w - lambda / mu)`, the projection of the shifted
  weights onto the scheme's set (magnitude masks recomputed, weights
  fake-quantized);
- multiplier update: `lambda <- lambda - mu * (w - theta)`; `mu` grows by
  `mu_multiplier` up to `mu_cap`;
- L step: a few mini-batches of the model's own loss plus
  `mu / 2 * ||w - theta - lambda / mu||^2` with its compiled optimizer.

The L steps are one Keras `fit` on a copy of the model whose compressed
weights carry an `LCPenalty` operator, which adds the penalty through the
operators' loss mechanism, so the optimizer, loss, and the TensorFlow and JAX
training loops are Keras's, and distillation composes with it; each L step is
one "epoch" of that fit and a callback runs the C step and the multiplier
update at its end. The model returned carries `theta`.
"""

import math
import numbers
import warnings

import keras
import numpy as np
from keras import ops

from keras_condensa import masking, surgery
from keras_condensa.compiling import check_finite_data, check_finite_losses, compile_like
from keras_condensa.distill import distill
from keras_condensa.model_checks import check_model
from keras_condensa.operators.base import Operator


def _check_positive(name, value, minimum=0.0, strict=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        relation = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(
            f"{name} must be a finite number {relation}. Received: {name}={value!r}. "
            "Condensa's defaults are mu_init=1e-3, mu_multiplier=1.1, mu_cap=1e4."
        )
    return float(value)


def check_options(steps=20, mu_init=1e-2, mu_multiplier=1.2, mu_cap=1e4, lr_end=5e-3):
    """Checks `kc.LC`'s numeric arguments (a tuner checks them before any trial).

    Args:
        steps, mu_init, mu_multiplier, mu_cap, lr_end: as in `kc.LC`.

    Returns:
        A dict of the checked values (`steps` an int, the others floats or None).

    Raises:
        ValueError: naming the argument that is out of range.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(
            f"steps is the number of L-C steps and must be a positive integer. "
            f"Received: steps={steps!r}"
        )
    options = {
        "steps": int(steps),
        "mu_init": _check_positive("mu_init", mu_init),
        "mu_multiplier": _check_positive("mu_multiplier", mu_multiplier, 1.0, strict=False),
        "mu_cap": _check_positive("mu_cap", mu_cap),
        "lr_end": None if lr_end is None else _check_positive("lr_end", lr_end),
    }
    if options["mu_cap"] < options["mu_init"]:
        raise ValueError(
            f"mu_cap must be >= mu_init. Received: mu_init={mu_init!r}, mu_cap={mu_cap!r}. "
            "Raise mu_cap or lower mu_init."
        )
    return options


def check_projectable(scheme):
    """Raises unless every operator of `scheme` is a projection L-C can run as its C step."""
    if not isinstance(scheme, Operator):
        raise TypeError(
            "LC takes a keras_condensa scheme, e.g. kc.LC(kc.Prune(density=0.05)). "
            f"Received: scheme={scheme!r}"
        )
    for op in scheme.operators():
        name = type(op).__name__
        if getattr(op, "schedule", None) is not None:
            raise ValueError(
                f"L-C cannot run {name} with a schedule: its C step projects onto the final "
                f"density at every step and mu sets the pace. Received: {op!r}. Drop schedule= "
                f"(e.g. kc.LC(kc.{name}(density={op.density})))."
            )
        if getattr(op, "mode", "qat") != "qat":
            raise ValueError(
                f"L-C cannot project onto {name}(mode={op.mode!r}): post-training quantization "
                "runs keras.Model.quantize on a stripped model, not on the weights in training. "
                f"Use {name}({op.dtype!r}) (mode='qat') inside L-C, or apply the post-training "
                "quantizer to the model L-C returns."
            )


@keras.saving.register_keras_serializable(package="keras_condensa")
class LCPenalty(Operator):
    """L-C's L-step penalty `mu / 2 * ||w - target||^2` on the weights a scheme covers.

    An operator like any other: it leaves the weight as it is (`transform`
    is the identity) and contributes the penalty through `losses`, so it
    composes with other operators' losses and with distillation. `target`
    (`theta + lambda / mu`) and `mu` are its per-weight state, set by the
    C step.

    Args:
        scheme: the scheme L-C projects onto; the penalty covers the weights
            its operators cover.
    """

    def __init__(self, scheme):
        super().__init__()
        self.scheme = scheme

    def selects(self, layer):
        return any(op.selects(layer) for op in self.scheme.operators())

    def _covering(self, layer, spec):
        return [
            op
            for op in self.scheme.operators()
            if op.selects(layer) and op.reason_unsupported(layer, spec) is None
        ]

    def reason_unsupported(self, layer, spec):
        if self._covering(layer, spec):
            return None
        return super().reason_unsupported(layer, spec) or "no operator of the scheme covers it"

    def paths(self, layer, spec):
        paths = [p for op in self._covering(layer, spec) for p in op.paths(layer, spec)]
        return tuple(dict.fromkeys(paths))

    def build(self, wrapper, path, variable):
        name = path.replace(".", "_")
        target = wrapper.add_weight(
            name=f"{name}_target", shape=variable.shape, initializer="zeros", trainable=False
        )
        mu = wrapper.add_weight(name=f"{name}_mu", shape=(), initializer="zeros", trainable=False)
        return {"target": target, "mu": mu}

    def losses(self, state, value):
        distance = ops.sum(ops.square(ops.subtract(value, ops.cast(state["target"], value.dtype))))
        return [ops.multiply(ops.multiply(ops.cast(state["mu"], value.dtype), 0.5), distance)]

    def get_config(self):
        return {"scheme": keras.saving.serialize_keras_object(self.scheme)}


class _CStep(keras.callbacks.Callback):
    """At the end of each L step: C step, multiplier update, mu growth."""

    def __init__(self, lc, projector, pairs):
        super().__init__()
        self.lc, self.projector, self.pairs = lc, projector, pairs
        self.mu = lc.mu_init
        self.lambdas = [np.zeros(tuple(t.weight(p).shape), "float32") for (t, p), _ in pairs]
        self.mus = []

    def project(self, shifted):
        """theta = the scheme's compression of `shifted` (one array per penalized weight)."""
        for (_, (wrapper, path)), value in zip(self.pairs, shifted, strict=True):
            wrapper.weight(path).assign(value)
        masking.update(self.projector, masking.updates_at_apply(self.projector))
        return [
            np.asarray(ops.convert_to_numpy(wrapper.effective_value(path)))
            for _, (wrapper, path) in self.pairs
        ]

    def weights(self):
        return [np.asarray(ops.convert_to_numpy(t.weight(p))) for (t, p), _ in self.pairs]

    def c_step(self, update_multipliers):
        w = self.weights()
        theta = self.project([wi - li / self.mu for wi, li in zip(w, self.lambdas, strict=True)])
        if update_multipliers:
            self.lambdas = [
                li - self.mu * (wi - ti) for li, wi, ti in zip(self.lambdas, w, theta, strict=True)
            ]
            self.mu = min(self.mu * self.lc.mu_multiplier, self.lc.mu_cap)
        for ((trained, path), _), ti, li in zip(self.pairs, theta, self.lambdas, strict=True):
            state = trained.states[(0, path)]  # the penalty is the trained model's one operator
            state["target"].assign(ti + li / self.mu)
            state["mu"].assign(self.mu)
        self.mus.append(self.mu)
        return theta

    def on_train_begin(self, logs=None):
        rate = getattr(self.model.optimizer, "learning_rate", None)
        self._rate = rate if isinstance(rate, keras.Variable) else None
        self._lr_start = float(ops.convert_to_numpy(rate)) if self._rate is not None else None

    def on_epoch_begin(self, epoch, logs=None):
        if self._rate is None or self.lc.lr_end is None or self.lc.steps < 2:
            return
        fraction = epoch / (self.lc.steps - 1)
        self._rate.assign(self._lr_start * (self.lc.lr_end / self._lr_start) ** fraction)

    def on_epoch_end(self, epoch, logs=None):
        self.c_step(update_multipliers=True)


class _Batches(keras.utils.PyDataset):
    """`count` mini-batches of `(x, y)` over successive shuffled passes, gathered one at a time.

    Only the sample order is stored (one index per sample and pass): a batch
    is gathered from `x` and `y` when `fit` asks for it, so the arrays are
    never copied whole.
    """

    def __init__(self, x, y, batch_size, count, seed):
        super().__init__()
        self.x, self.y, self.batch_size, self.count = x, y, batch_size, count
        rng = np.random.default_rng(seed) if seed is not None else np.random
        needed = count * batch_size
        self.order = np.concatenate(
            [rng.permutation(len(x)) for _ in range(math.ceil(needed / len(x)))]
        )[:needed]

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.x[rows], self.y[rows]


class LC:
    """Condensa's L-C optimizer: compress by augmented-Lagrangian training.

    Instead of fine-tuning with a mask fixed by magnitude, L-C trains the
    uncompressed weights `w` with a quadratic penalty pulling them towards
    their compressed copy `theta`, re-projects `theta` from `w` after each
    L step, and tightens the penalty (`mu` grows geometrically), so the
    weights drift to a point that compresses with little loss. After the
    last step the model carries `theta`.

    The training is the model's own: `fit` uses a copy of its compiled
    optimizer (same class and config) and its compiled loss.

    Args:
        scheme: the compression to reach, an operator or `kc.Compose`
            without schedules, e.g. `kc.Prune(density=0.05)` or
            `kc.Compose([kc.Prune(0.1), kc.Quantize("int8")])`. Activation
            quantization is not a projection of weights: the model returned
            has float activations (export with `quantize="int8"` and
            representative data to quantize them).
        steps: number of L-C steps; the training budget of `fit` is split
            evenly over them (at least one mini-batch each).
        mu_init: the first penalty weight `mu` (> 0).
        mu_multiplier: `mu` is multiplied by this after every step (>= 1).
        mu_cap: the largest `mu` (>= mu_init).
        lr_end: as Condensa's `lr_end`: the optimizer's learning rate moves
            geometrically from its compiled value (first L step) to this one
            (last L step); `None` keeps it constant. Ignored for a
            learning-rate schedule. The default, 5e-3, is 5x Keras's Adam
            default of 1e-3: Adam's steps do not grow with `mu`, so a rising
            rate is what lets the weights reach their moving targets within a
            short budget (with SGD at 1e-2 it decays, as in Condensa).

    The defaults (`mu_init=1e-2`, `mu_multiplier=1.2`, so `mu` ends near 0.4
    after 20 steps, and `lr_end=5e-3`) were chosen for Adam at 1e-3 and
    budgets of about 10 epochs: on LeNet-300-100 and digits with 10 epochs,
    L-C at density 0.05 is about 1 point more accurate than gradual pruning
    (averaged over dense seeds, TensorFlow and JAX) and at 0.02 about 4-6
    points. Measured there: a constant rate (`lr_end=None`) loses about a
    point at 0.05, `mu_multiplier=1.3` up to a point (more the shorter the
    budget), a rate falling to 1e-4 about ten. Condensa's (1e-3, 1.1) assume
    thousands of mini-batches per L step.

    Raises:
        TypeError: `scheme` is not a keras_condensa scheme.
        ValueError: a mu parameter is not positive (or `mu_multiplier < 1`,
            `mu_cap < mu_init`), `steps` is not a positive integer, or an
            operator cannot be projected (a scheduled operator, post-training
            quantization); the message names the operator.

    Example:

    ```python
    lc_model = kc.LC(kc.Prune(density=0.05), steps=20).fit(model, x, y, epochs=6, batch_size=32)
    kc.summary(lc_model)   # density 0.05
    ```
    """

    def __init__(self, scheme, steps=20, mu_init=1e-2, mu_multiplier=1.2, mu_cap=1e4, lr_end=5e-3):
        check_projectable(scheme)
        self.scheme = scheme
        options = check_options(steps, mu_init, mu_multiplier, mu_cap, lr_end)
        self.steps = options["steps"]
        self.mu_init = options["mu_init"]
        self.mu_multiplier = options["mu_multiplier"]
        self.mu_cap = options["mu_cap"]
        self.lr_end = options["lr_end"]
        self.history = None
        self.mus = []

    def fit(
        self,
        model,
        x,
        y,
        epochs=1,
        batch_size=32,
        verbose=0,
        seed=None,
        teacher=None,
        temperature=4.0,
        alpha=0.9,
        from_logits=True,
    ):
        """Compresses `model` by L-C training on `(x, y)`; `model` is not modified.

        The L steps minimise the model's loss plus the L-C penalty, which an
        operator (`LCPenalty`) adds through the same loss mechanism as
        every operator's `losses`; with `teacher=`, the loss on the labels is
        mixed with distillation from the teacher's soft targets, as in
        `kc.distill`.

        Args:
            model: a compiled, built Sequential or functional Keras model.
            x: training inputs (NumPy arrays).
            y: training targets.
            epochs: the training budget in passes over `x`; split over `steps`.
            batch_size: mini-batch size.
            verbose: `fit`'s verbosity.
            seed: seed of the mini-batch order (`None`: NumPy's global state).
            teacher: optional dense model to distill from during the L steps.
            temperature, alpha, from_logits: distillation's, as in `kc.distill`.

        Returns:
            A new plain `keras.Model` (no wrappers) carrying the compressed
            weights `theta`, compiled like `model`.

        Raises:
            ValueError: `model` is not compiled, `epochs`/`batch_size`
                are not positive integers, or `x`/`y` hold NaN or infinity.
            FloatingPointError: the training loss became NaN or infinite.
        """
        check_model(model)
        optimizer = getattr(model, "optimizer", None)
        if not getattr(model, "compiled", False) or optimizer is None or model.loss is None:
            raise ValueError(
                f"Model '{model.name}' is not compiled. LC.fit trains with the model's own loss "
                "and optimizer: call model.compile(optimizer=..., loss=...) first."
            )
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        x, y = np.asarray(x), np.asarray(y)
        check_finite_data("x", x)
        check_finite_data("y", y)

        projector = self.scheme.apply(model)  # wrappers that compute theta; also validates
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # apply warned already about what it cannot reach
            trained = LCPenalty(self.scheme).apply(model)  # the weights w, penalized
        compile_like(trained, model, metrics=False)
        wrappers = {w.layer.name: w for w in masking.iter_wrappers(trained)}
        pairs = [
            ((wrappers[wrapper.layer.name], path), (wrapper, path))
            for wrapper in masking.iter_wrappers(projector)
            for path in wrapper.chains
        ]
        c_step = _CStep(self, projector, pairs)
        c_step.c_step(update_multipliers=False)  # theta = scheme(w), lambda = 0

        batches_per_epoch = math.ceil(len(x) / batch_size)
        per_step = max(1, (epochs * batches_per_epoch) // self.steps)
        batches = _Batches(x, y, batch_size, per_step * self.steps, seed)
        fitted = trained if teacher is None else distill(
            trained, teacher, temperature=temperature, alpha=alpha, from_logits=from_logits
        )
        self.history = fitted.fit(
            batches,
            epochs=self.steps,
            steps_per_epoch=per_step,
            shuffle=False,  # the order is already shuffled; Keras would shuffle the batches again
            verbose=verbose,
            callbacks=[c_step],
        )
        self.mus = list(c_step.mus)
        check_finite_losses(self.history, "L-C training")
        theta = c_step.c_step(update_multipliers=False)
        for ((wrapper, path), _), value in zip(pairs, theta, strict=True):
            wrapper.weight(path).assign(value)
        return compile_like(surgery.unwrap(trained), model)

    def get_config(self):
        return {
            "scheme": self.scheme,
            "steps": self.steps,
            "mu_init": self.mu_init,
            "mu_multiplier": self.mu_multiplier,
            "mu_cap": self.mu_cap,
            "lr_end": self.lr_end,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"LC({args})"
