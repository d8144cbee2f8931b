"""`SoftThresholdPrune`: learned per-layer sparsity by soft-threshold reparameterization (STR).

After Kusupati et al. 2020, "Soft Threshold Reparameterization for Learnable
Sparsity". The forward pass uses `sign(w) * relu(|w| - sigmoid(s))`, with one
trainable threshold parameter `s` per layer (or per output channel): a weight
under its layer's threshold is exactly zero, and how far each threshold rises
is learned with the model. Weight decay on `w` and `s` is what drives the
sparsity; the layers that can afford it end up sparser than the others.
"""

import keras
import numpy as np
from keras import ops

from keras_condensa import masks
from keras_condensa.operators.base import check_density, is_real
from keras_condensa.operators.mask import MaskOperator, check_schedule
from keras_condensa.schedules import PolynomialDecay

GRANULARITIES = ("layer", "channel")

# The stored threshold variable is s / _SCALE: optimizers whose step size does not
# depend on the gradient's scale (Adam) then move s _SCALE times faster, so the
# layers' thresholds can drift apart as far as training wants within a short
# fine-tuning (their common level is set by the schedule, see `_shift`).
_SCALE = 20.0


def _soft(value, threshold):
    return ops.sign(value) * ops.relu(ops.abs(value) - threshold)


@keras.saving.register_keras_serializable(package="keras_condensa")
class SoftThresholdPrune(MaskOperator):
    """Learned sparsity: soft-threshold reparameterization (STR) of the weights.

    Each covered weight `w` is used as `sign(w) * relu(|w| - sigmoid(s))`:
    entries under the threshold `sigmoid(s)` are exactly zero. `s` is a
    trainable parameter of the layer (one, or one per output channel with
    `granularity="channel"`), so each layer learns its own threshold and so
    its own density. Weight decay on `w` and on `s` (added to the training
    loss) drives the sparsity, as in the paper.

    With `density=None` this is the paper's method: the decay
    (`weight_decay`) is the knob and the densities are what training makes
    of it. Given a `density`, the target is reached in two ways, both
    during `fit` with `kc.callbacks(scheme)`:

    1. on the schedule's steps, all thresholds move by one amount in `s` so
       that the density is the schedule's current target: training learns
       how the layers' thresholds differ (the per-layer allocation), the
       schedule sets their common level;
    2. at the schedule's `end_step`, an exact cut: each layer keeps its
       largest weights in proportion to the density it learned (the
       learned per-layer budgets, scaled so that the total is exactly
       `density`). The threshold is dropped (the kept weights keep their
       stored values: restoring the magnitude the soft threshold took off
       recovers accuracy much faster than keeping the shrunk values in a
       short fine-tuning) and the rest of the run fine-tunes the kept
       weights under fixed masks.

    `kc.summary` reports the per-layer densities learned; `kc.strip` bakes in
    the thresholded weights (exact zeros).

    Args:
        density: fraction of the covered weights to keep in the end, in
            (0, 1], or `None` (the decay alone decides).
        threshold_init: initial `s`; the threshold starts at
            `sigmoid(threshold_init)` (-5: about 0.0067).
        weight_decay: the decay on `w` and `s` (an L2 term of the loss:
            `weight_decay * (sum(w**2) + sum(s**2))`), until the cut. It
            shapes the per-layer allocation: on LeNet-300-100 (digits, 10
            epochs from dense weights) 5e-3 beat 1e-4 by 2 points at density
            0.02 and 4 at 0.01 (`benchmarks/learned.py`).
        granularity: `"layer"` (one threshold per weight) or `"channel"` (one
            per output channel; Dense and convolution kernels).
        schedule: how the target density falls over the run (a
            `kc.PolynomialDecay`; default: from 1 to `density` over the
            first 75% of the run, updating every 2% of it). Only with a
            `density`.
        include: layer names or classes to cover (default: all supported).
        exclude: layer names or classes to leave dense.

    Example:

    ```python
    scheme = kc.SoftThresholdPrune(density=0.05)
    pruned = scheme.apply(model)
    pruned.compile(...)
    pruned.fit(x, y, epochs=10, callbacks=kc.callbacks(scheme))
    kc.summary(pruned)      # the per-layer densities it learned
    final = kc.strip(pruned)
    ```
    """

    scheme_word = "str"
    scheme_args = ("D",)
    scheme_help = "learned per-layer sparsity (soft-threshold reparameterization) to density D"

    def __init__(
        self,
        density=None,
        threshold_init=-5.0,
        weight_decay=5e-3,
        granularity="layer",
        schedule=None,
        include=None,
        exclude=None,
    ):
        super().__init__(include=include, exclude=exclude)
        if density is not None:
            check_density(density)
            density = float(density)
        if not is_real(threshold_init) or not np.isfinite(threshold_init):
            raise ValueError(
                "threshold_init is the initial threshold parameter s (the threshold is "
                "sigmoid(s)) and must be a finite number. "
                f"Received: threshold_init={threshold_init!r}"
            )
        if not is_real(weight_decay) or not 0 <= weight_decay < 1:
            raise ValueError(
                f"weight_decay must be in [0, 1). Received: weight_decay={weight_decay!r}"
            )
        if granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}. Received: granularity={granularity!r}"
            )
        if density is None and schedule is not None:
            raise ValueError(
                "SoftThresholdPrune takes a schedule only with a target density: give "
                "density=... too, or drop the schedule (the decay alone then decides)."
            )
        if density is not None and density < 1 and schedule is None:
            schedule = PolynomialDecay(begin_step=0, end_step=0.5, frequency=0.02)
        self.density = density
        self.schedule = check_schedule(schedule, density) if density is not None else None
        self.threshold_init = float(threshold_init)
        self.weight_decay = float(weight_decay)
        self.granularity = granularity

    def reason_unsupported(self, layer, spec):
        reason = super().reason_unsupported(layer, spec)
        if reason is None and self.granularity == "channel" and spec.channel_weight is None:
            reason = (
                f"{type(layer).__name__} has no output channels for granularity='channel' to "
                "give thresholds to; use granularity='layer' or exclude it"
            )
        return reason

    def paths(self, layer, spec):
        if self.granularity == "channel":
            return (spec.channel_weight,)
        return tuple(spec.weights)

    def build(self, wrapper, path, variable):
        state = super().build(wrapper, path, variable)
        prefix = path.replace(".", "_")
        shape, view = (), ()
        if self.granularity == "channel":
            axes = wrapper.unit_of(path).spec.channel_axes
            rank = len(variable.shape)
            axes = [a % rank for a in axes]
            shape = tuple(variable.shape[a] for a in axes)
            view = tuple(variable.shape[a] if a in axes else 1 for a in range(rank))
        state["threshold"] = wrapper.add_weight(
            name=f"{prefix}_threshold",
            shape=shape,
            initializer=keras.initializers.Constant(self.threshold_init / _SCALE),
            trainable=True,
        )
        state["cut"] = wrapper.add_weight(
            name=f"{prefix}_cut", shape=(), initializer="zeros", trainable=False
        )
        state["view"] = view
        return state

    def threshold(self, state, dtype="float32"):
        """The threshold `sigmoid(s)`, shaped to broadcast against the weight."""
        t = ops.sigmoid(ops.cast(state["threshold"], dtype) * _SCALE)
        return ops.reshape(t, state["view"]) if state["view"] else t

    def transform(self, state, value, training):
        soft = _soft(value, self.threshold(state, value.dtype))
        value = ops.where(ops.not_equal(state["cut"], 0), value, soft)
        return super().transform(state, value, training)

    def losses(self, state, value):
        if not self.weight_decay:
            return []
        live = 1.0 - ops.cast(state["cut"], value.dtype)
        s = ops.cast(state["threshold"], value.dtype) * _SCALE
        return [self.weight_decay * live * (ops.sum(ops.square(value)) + ops.sum(ops.square(s)))]

    # -- host side ------------------------------------------------------------
    def _thresholds(self, item, path):
        state = item.states[path]
        s = np.asarray(ops.convert_to_numpy(state["threshold"]), "float64") * _SCALE
        t = 1.0 / (1.0 + np.exp(-s))
        return t.reshape(state["view"]) if state["view"] else t

    def update(self, items, context):
        """Sets the thresholds' level to the schedule's target; at its `end_step`, cuts exactly.

        At `apply` time (no step) it does nothing: the thresholds are learned.
        """
        if context.step is None or self.density is None:
            return
        entries = [(item, path) for item in items for path in item.paths]
        if all(float(ops.convert_to_numpy(i.states[p]["cut"])) for i, p in entries):
            return
        values = [item.values[path] for item, path in entries]
        if context.step >= context.schedule.end_step:
            self._cut(entries, values, context)
            return
        self._shift(entries, values, self.density_at(context.step, context.schedule), context)

    def _shift(self, entries, values, target, context):
        """Moves every `s` by one amount so that the density is the schedule's `target`.

        Training learns how the thresholds differ across layers (the task
        loss lowers the threshold of a layer that needs its weights, the
        decay raises the others); this sets their common level, so the
        density follows the schedule. Driving the level through the decay
        instead is unstable under Adam, whose step does not shrink with the
        decay's weight, and a threshold above all of a layer's weights gets
        no gradient back.
        """
        scaled = [
            np.asarray(ops.convert_to_numpy(i.states[p]["threshold"]), "float64") * _SCALE
            for i, p in entries
        ]
        views = [i.states[p]["view"] for i, p in entries]
        total = sum(v.size for v in values)

        def density(shift):
            kept = 0
            for v, s, view in zip(values, scaled, views, strict=True):
                t = 1.0 / (1.0 + np.exp(-(s - shift)))
                kept += int((np.abs(v) > (t.reshape(view) if view else t)).sum())
            return kept / total

        low, high = -20.0, 20.0
        for _ in range(40):
            middle = (low + high) / 2
            low, high = (low, middle) if density(middle) >= target else (middle, high)
        for (item, path), s in zip(entries, scaled, strict=True):
            context.assign(
                item.states[path]["threshold"], ((s - high) / _SCALE).astype("float32")
            )

    def _cut(self, entries, values, context):
        """Keeps exactly `density` of the weights, split as the learned densities split them."""
        learned = [
            int((np.abs(v) > self._thresholds(item, path)).sum())
            for v, (item, path) in zip(values, entries, strict=True)
        ]
        sizes = [v.size for v in values]
        budget = masks.keep_count(self.density, sum(sizes))
        counts = _split(budget, learned, sizes)
        for (item, path), value, count in zip(entries, values, counts, strict=True):
            state = item.states[path]
            mask = masks.topk_mask(np.abs(value), count)
            variable = item.wrapper.weight(path)
            variable.assign(np.where(mask != 0, value, 0).astype(value.dtype))
            context.assign(state["mask"], mask.astype(value.dtype))
            context.assign(state["cut"], np.asarray(1.0, "float32"))

    def get_config(self):
        config = super().get_config()
        config.update(
            density=self.density,
            threshold_init=self.threshold_init,
            weight_decay=self.weight_decay,
            granularity=self.granularity,
            schedule=(
                None
                if self.schedule is None
                else keras.saving.serialize_keras_object(self.schedule)
            ),
        )
        return config


def _split(budget, learned, sizes):
    """Splits `budget` kept weights across layers in proportion to `learned`, capped by `sizes`.

    Every layer keeps at least one weight; largest remainders place the last few.
    """
    sizes = np.asarray(sizes, "int64")
    share = np.maximum(np.asarray(learned, "float64"), 1.0)
    counts = np.ones(len(sizes), "int64")
    budget = min(budget, int(sizes.sum()))
    while counts.sum() < budget:
        open_ = counts < sizes
        remaining = budget - counts.sum()
        ideal = remaining * np.where(open_, share, 0.0) / share[open_].sum()
        add = np.minimum(np.floor(ideal).astype("int64"), sizes - counts)
        if add.sum() == 0:
            order = [i for i in np.argsort(-(ideal - np.floor(ideal)), kind="stable") if open_[i]]
            add[order[:remaining]] = 1
        counts += add
    return counts.tolist()
