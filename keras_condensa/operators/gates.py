"""`ChannelGates`: learned channel counts under a cost budget (the l1/l2 cost surrogate).

After Nasery et al. 2023, "End-to-End Neural Network Compression via l1/l2
Regularized Latency Surrogates". Every output channel (neuron or filter) has a
trainable gate that scales it. A layer's active channel count is estimated,
differentiably and independently of scale, by `(|s|_1 / |s|_2) ** 2` of its
channels' gated strengths `s`; the model's cost (multiply-accumulates,
parameters or measured latency, `keras_condensa.channel_cost`) is a function of
those counts, and a penalty on it, whose weight adapts like a Lagrange
multiplier, pushes it to `budget` times dense. At the end the gates are
thresholded to channel masks that meet the budget exactly, and `kc.shrink`
removes the masked channels.
"""

import warnings

import keras
import numpy as np
from keras import ops

from keras_condensa import masks
from keras_condensa.channel_cost import COSTS, ChannelCost, latency_table
from keras_condensa.operators.base import Operator, is_real
from keras_condensa.operators.structured import _ChannelPrune, _follower_paths, expand_keeps
from keras_condensa.schedules import ConstantSparsity

# How the penalty's weight answers a cost off the budget at one update: it is
# multiplied by exp(_RATE * (cost / budget - 1)), within [1/_STEP, _STEP].
_RATE = 4.0
_STEP = 2.0
_EPSILON = 1e-12


def _count(strengths):
    """The l1/l2 surrogate of the number of nonzero entries: `(sum |s|)**2 / sum s**2`."""
    return ops.square(ops.sum(strengths)) / (ops.sum(ops.square(strengths)) + _EPSILON)


def _view(variable, axes):
    rank = len(variable.shape)
    axes = [a % rank for a in axes]
    return tuple(variable.shape[a] for a in axes), tuple(
        variable.shape[a] if a in axes else 1 for a in range(rank)
    )


@keras.saving.register_keras_serializable(package="keras_condensa")
class ChannelGates(_ChannelPrune):
    """Learns how many channels each layer keeps, under a budget on the model's cost.

    A trainable gate per output channel (Dense units, convolution filters,
    and the channels of a BatchNormalization after them) scales the channel.
    The training loss gains `penalty * sum_g slope_g * count_g / dense cost`,
    where `count_g` is the l1/l2 surrogate of the active channels of group
    `g` (from the gated channel strengths, so it is differentiable and does
    not change when a layer's weights are scaled) and `slope_g` is how much
    the model's cost grows per channel of `g` at the current counts (cost
    is a product of input and output counts, so the slopes are refreshed on
    the schedule's steps). The penalty's weight rises while the estimated
    cost is above `budget` times dense and falls below it.

    At the schedule's `end_step` the gates are thresholded: channels are
    ranked by their gated strength relative to the strongest of their
    layer, and one threshold is chosen so that the model's exact cost with
    the kept channels is at most `budget` times dense. The rest are masked
    (coupled channels together, as `kc.FilterPrune` does), the penalty
    stops, and the rest of the run fine-tunes; `kc.shrink` removes them.

    Args:
        budget: the cost to reach, as a fraction of the dense model's, in (0, 1].
        cost: `"flops"` (multiply-accumulates), `"params"` (kernel
            parameters) or `"latency"` (a per-layer table measured by
            `kc.latency_table` and interpolated; measured with the Keras
            backend on the first update when not given).
        penalty: the initial weight of the cost penalty.
        latency_table: the table for `cost="latency"` (see `kc.latency_table`).
        schedule: when the penalty adapts and when the gates are thresholded
            (default: every 2% of the run, thresholded at 70% of it; any
            `kc.ConstantSparsity`-like schedule whose `end_step` is the cut).
        include: layer names or classes to gate (default: all Dense and
            convolution layers).
        exclude: layer names or classes to leave ungated.

    Example:

    ```python
    scheme = kc.ChannelGates(budget=0.5, cost="flops")
    gated = scheme.apply(model)
    gated.compile(...)
    gated.fit(x, y, epochs=10, callbacks=kc.callbacks(scheme))
    small = kc.strip(gated, shrink=True)   # about half the FLOPs
    ```
    """

    scheme_word = "gates"
    scheme_args = ("COST", "B")
    scheme_names = ("cost", "budget")
    scheme_help = (
        "learned channel counts under a cost budget: COST (flops, params, latency) at B x dense"
    )
    kinds = ("neuron", "filter")

    def __init__(
        self,
        budget=0.5,
        cost="flops",
        penalty=0.1,
        latency_table=None,
        schedule=None,
        include=None,
        exclude=None,
    ):
        if not is_real(budget) or not 0 < budget <= 1:
            raise ValueError(
                "budget is the cost to reach as a fraction of the dense model's and must be in "
                f"(0, 1]. Received: budget={budget!r}"
            )
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}. Received: cost={cost!r}")
        if not is_real(penalty) or penalty <= 0:
            raise ValueError(f"penalty must be a positive number. Received: penalty={penalty!r}")
        if latency_table is not None and cost != "latency":
            raise ValueError("latency_table is used only with cost='latency'.")
        schedule = schedule or ConstantSparsity(0.0, begin_step=0, end_step=0.7, frequency=0.02)
        if getattr(schedule, "end_step", None) is None:
            raise ValueError(
                "ChannelGates needs a schedule with an end_step: the step that thresholds "
                f"the gates. Received: schedule={schedule!r}"
            )
        super().__init__(1.0, criterion="l2", include=include, exclude=exclude)
        self.density = None  # the budget decides, not a density
        self.schedule = schedule
        self.budget = float(budget)
        self.cost = cost
        self.penalty = float(penalty)
        self.latency_table = latency_table

    # -- per weight ----------------------------------------------------------------
    def build(self, wrapper, path, variable):
        state = super().build(wrapper, path, variable)
        unit = wrapper.unit_of(path)
        spec = unit.spec if unit is not None else None
        if spec is not None:
            owner = path == spec.channel_weight
            axes = spec.channel_axes if owner else (0,)
        else:  # a BatchNormalization that follows gated channels: gamma, beta
            owner, axes = path == _follower_paths(wrapper.layer)[0], (0,)
        shape, view = _view(variable, axes)
        gate = next(
            (
                s["gate"]
                for (i, p), s in wrapper.states.items()
                if wrapper.operators[i] is self and wrapper.unit_of(p) is unit
            ),
            None,
        )
        if gate is None:
            gate = wrapper.add_weight(
                name=f"{path.replace('.', '_')}_gate", shape=shape, initializer="ones"
            )
        state.update(gate=gate, view=view, reduce=tuple(a for a, n in enumerate(view) if n == 1))
        if owner:
            name = path.replace(".", "_")
            state["slope"] = wrapper.add_weight(
                name=f"{name}_slope", shape=(), initializer="zeros", trainable=False
            )
            state["weight"] = wrapper.add_weight(
                name=f"{name}_penalty",
                shape=(),
                initializer=keras.initializers.Constant(self.penalty),
                trainable=False,
            )
        return state

    def ran(self, state):
        # Thresholded: a layer whose channels all stay (it feeds the output) was gated too.
        return "weight" in state and float(ops.convert_to_numpy(state["weight"])) < 0

    def transform(self, state, value, training):
        gate = ops.reshape(ops.cast(state["gate"], value.dtype), state["view"])
        return super().transform(state, value * gate, training)

    def losses(self, state, value):
        if "slope" not in state:
            return []
        gate = ops.reshape(ops.cast(state["gate"], value.dtype), state["view"])
        gated = value * gate
        if state["reduce"]:
            strengths = ops.sqrt(ops.mean(ops.square(gated), axis=state["reduce"]) + _EPSILON)
        else:
            strengths = ops.abs(gated)
        return [ops.cast(state["slope"], value.dtype) * _count(ops.reshape(strengths, (-1,)))]

    # -- host side ----------------------------------------------------------------
    def update(self, items, context):
        """Refreshes the penalty's slopes and weight; at `end_step`, thresholds the gates."""
        if context.step is None:
            return
        graph = context.graph
        if graph is None:
            raise ValueError(
                "ChannelGates needs the layer graph of a Sequential or functional model to "
                f"count channels; model '{context.model.name}' is subclassed."
            )
        owners = [s for item in items for s in item.states.values() if "slope" in s]
        weight = float(ops.convert_to_numpy(owners[0]["weight"])) if owners else -1.0
        if weight < 0:
            return  # thresholded already
        units, followers = self._units(_gated(items), graph)
        units = [(g, m) for g, m in units if g is not None]
        if not units:
            raise ValueError(
                f"ChannelGates found no channels it may gate in model '{context.model.name}': "
                "every gated layer feeds the model output or sits outside its graph. Gate "
                "Dense or convolution layers whose channels feed other layers."
            )
        cost = self._cost_model(graph, context)
        dense = cost.total()
        scores = [np.mean([s / max(s.max(), _EPSILON) for *_, s in m], axis=0) for _, m in units]
        states = {(id(i.wrapper), p): i.states[p] for i in items for p in i.paths}
        if context.step >= context.schedule.end_step:
            keeps = self._threshold(units, scores, cost, dense)
            for key, mask in expand_keeps(units, followers, keeps).items():
                context.assign(states[key]["mask"], mask)
            self._assign(owners, {}, states, -1.0, context)
            return
        counts = {id(g): _surrogate(s) for (g, _), s in zip(units, scores, strict=True)}
        ratio = cost.total(counts) / dense / self.budget
        weight *= float(np.clip(np.exp(_RATE * (ratio - 1.0)), 1 / _STEP, _STEP))
        slopes = cost.slopes(counts, [g for g, _ in units])
        by_group = {id(g): weight * slopes[id(g)] / dense for g, _ in units}
        slopes = _owner_slopes(units, followers, by_group, graph)
        self._assign(owners, slopes, states, weight, context)

    @staticmethod
    def _assign(owners, slopes, states, weight, context):
        for key, state in states.items():
            if "slope" in state:
                context.assign(state["slope"], np.asarray(slopes.get(key, 0.0), "float32"))
        for state in owners:
            context.assign(state["weight"], np.asarray(weight, "float32"))

    def _cost_model(self, graph, context):
        if self.cost == "latency" and self.latency_table is None:
            self.latency_table = latency_table(context.model)
        return ChannelCost(graph, self.cost, self.latency_table)

    def _threshold(self, units, scores, cost, dense):
        """Per unit, the 0/1 keep vector of the lowest threshold whose cost fits the budget."""

        def keeps_at(t):
            return [
                (s >= t).astype("float32") if (s >= t).any() else masks.topk_mask(s, 1)
                for s in scores
            ]

        def fits(t):
            kept = {id(g): float(k.sum()) for (g, _), k in zip(units, keeps_at(t), strict=True)}
            return cost.total(kept) <= self.budget * dense * (1 + 1e-9)

        if fits(0.0):
            return keeps_at(0.0)
        if not fits(1.0 + _EPSILON):
            warnings.warn(
                f"ChannelGates cannot reach budget={self.budget:g} of the dense {self.cost}: "
                "even one channel per layer costs more. It keeps one channel per layer; raise "
                "the budget or gate more layers.",
                stacklevel=2,
            )
        low, high = 0.0, 1.0 + _EPSILON
        for _ in range(50):
            middle = (low + high) / 2
            low, high = (low, middle) if fits(middle) else (middle, high)
        return keeps_at(high)

    def get_config(self):
        config = Operator.get_config(self)
        config.update(
            budget=self.budget,
            cost=self.cost,
            penalty=self.penalty,
            latency_table=self.latency_table,
            schedule=keras.saving.serialize_keras_object(self.schedule),
        )
        return config


def _surrogate(scores):
    return float(np.sum(scores) ** 2 / (np.sum(np.square(scores)) + _EPSILON))


def _gated(items):
    """The items with their values gated (NumPy), as the forward pass sees them."""
    out = []
    for item in items:
        values = {}
        for path in item.paths:
            state = item.states[path]
            gate = np.asarray(ops.convert_to_numpy(state["gate"]), "float32")
            values[path] = item.values[path] * gate.reshape(state["view"])
        out.append(type(item)(item.wrapper, item.spec, item.paths, values, item.states))
    return out


def _owner_slopes(units, followers, by_group, graph):
    """`{(id(wrapper), path): slope}` for the gates that stand for each group's channels.

    A producer followed by a BatchNormalization is normalized: its own gate
    does not change its output, so the BatchNormalization's gate stands for it.
    """
    normalized = {id(graph.previous(w)) for w, *_ in followers}
    result = {}
    for group, members in units:
        owners = [(w, spec.channel_weight) for w, spec, *_ in members if id(w) not in normalized]
        owners += [
            (w, paths[0])
            for w, layout, paths, _ in followers
            if len(layout.segments) == 1 and layout.segments[0].root() is group
        ]
        for w, path in owners:
            result[(id(w), path)] = by_group[id(group)] / len(owners)
    return result
