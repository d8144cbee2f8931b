"""What a model costs as a function of how many channels each group keeps.

`ChannelCost` reads a model's channel dependency graph once and gives the
cost (multiply-accumulates, parameters or latency) of the model for any count
of active channels per group, and its slope per group. `kc.ChannelGates`
regularizes towards a cost budget with it and thresholds its gates to meet
the budget exactly. `latency_table` measures the per-layer latencies that
`cost="latency"` interpolates.
"""

import math
import time

import keras
import numpy as np

from keras_condensa import copying, prunable
from keras_condensa.channel_rules import unwrapped
from keras_condensa.dependency import DependencyGraph
from keras_condensa.wrappers import CompressionWrapper

COSTS = ("flops", "params", "latency")
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def _kernel(layer):
    layer = unwrapped(layer)
    for name in ("kernel", "depthwise_kernel"):
        kernel = getattr(layer, name, None)
        if isinstance(kernel, keras.Variable):
            return kernel
    return None


def _depthwise(layer):
    depthwise = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    return isinstance(unwrapped(layer), depthwise)


class ChannelCost:
    """The cost of a model given the active channels of each group.

    `"flops"` and `"params"`: every layer with a kernel (Dense, EinsumDense,
    convolutions) costs `base * f_in * f_out`, where `f_in` and `f_out` are
    the fractions of its input and output channels that are active (a
    depthwise convolution: `base * f_in`), and `base` is the layer's
    multiply-accumulates per sample or its kernel size.

    `"latency"`: the whole model's measured latency, plus for each group the
    change that narrowing it alone to the fraction `f` of its channels makes
    (measured on the whole model, so a layer's own call overhead and the
    consumers' narrower inputs are in it; interpolated in `table`).

    Args:
        graph: the model's `dependency.DependencyGraph`.
        cost: one of `COSTS`.
        table: for `"latency"`, what `latency_table` returns:
            `{group name: [[fraction, seconds], ...], "__total__": seconds}`,
            a group named by its first producer layer.

    Raises:
        ValueError: `"latency"` without a table entry for a group (named).
    """

    def __init__(self, graph, cost="flops", table=None):
        self.cost = cost
        self.terms = []  # flops and params: (base, input layout, output layout) per layer
        self.latency = {}  # latency: {id(group): (size, fractions, change in seconds)}
        self.fixed = 0.0
        if cost == "latency":
            self._latency_terms(graph, table)
            return
        for layer, inputs, outputs in graph.nodes:
            kernel = _kernel(layer) if isinstance(layer, keras.layers.Layer) else None
            if kernel is None or len(inputs) != 1:
                continue
            if cost == "params":
                base = float(math.prod(kernel.shape))
            else:
                positions = math.prod(d or 1 for d in outputs[0].shape[1:-1])
                base = float(math.prod(kernel.shape) * positions)
            outputs_layout = None if _depthwise(layer) else graph.layouts[id(outputs[0])]
            self.terms.append((base, graph.layouts[id(inputs[0])], outputs_layout))

    def _latency_terms(self, graph, table):
        if table is None or "__total__" not in table:
            raise ValueError(
                "cost='latency' needs a latency table: measure it with kc.latency_table(model) "
                "and give it as latency_table=."
            )
        self.fixed = float(table["__total__"])
        for group in narrowable_groups(graph):
            name = group_name(group)
            if name not in table:
                raise ValueError(
                    f"cost='latency' has no latency measured for the channels of layer '{name}': "
                    "measure the table with kc.latency_table(model) on this model."
                )
            rows = np.asarray(table[name], "float64")
            self.latency[id(group)] = (group.size, rows[:, 0], rows[:, 1] - self.fixed)

    def _fraction(self, layout, active):
        if layout is None:
            return 1.0
        full = sum(g.size for g in layout.segments)
        kept = sum(active.get(id(g.root()), g.size) for g in layout.segments)
        return kept / max(full, 1)

    def total(self, active=None):
        """The model's cost when group `id(root)` keeps `active[id(root)]` channels (else all)."""
        active = active or {}
        total = self.fixed
        for key, (size, fractions, deltas) in self.latency.items():
            total += float(np.interp(active.get(key, size) / size, fractions, deltas))
        for base, inputs, outputs in self.terms:
            total += base * self._fraction(inputs, active) * self._fraction(outputs, active)
        return total

    def slopes(self, active, groups):
        """`{id(group): d total / d active}`, by a central difference of half a channel."""
        result = {}
        for g in groups:
            count = active.get(id(g), g.size)
            up, down = dict(active), dict(active)
            up[id(g)], down[id(g)] = count + 0.5, max(count - 0.5, 0.0)
            result[id(g)] = (self.total(up) - self.total(down)) / (up[id(g)] - down[id(g)])
        return result


def keras_latency(model, x, repeats=30):
    """Median seconds of `model.predict_on_batch(x)` (compiled; after a warm-up)."""
    for _ in range(3):
        model.predict_on_batch(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def narrowable_groups(graph):
    """The groups of output channels that pruning may narrow (not frozen, not the output's)."""
    return [
        g for g in graph.groups if g.producers and g.frozen is None and not graph.feeds_output(g)
    ]


def group_name(group):
    """A group's name in a latency table: its first producer layer's."""
    return unwrapped(group.producers[0]).name


def _narrowed(model, group, fraction):
    """`model` with `group` narrowed to `fraction` of its channels (zeroed, then shrunk)."""
    from keras_condensa.shrink import shrink  # noqa: PLC0415 - above the cost model

    copy = copying.clone_with(model, copying.plain_copy)
    graph = DependencyGraph(copy, on_unknown="skip")
    twin = {group_name(g): g for g in narrowable_groups(graph)}[group_name(group)]
    keep = max(1, round(group.size * fraction))
    for layer, _, _ in graph.nodes:
        layout = graph.channels_of(layer) if isinstance(layer, keras.layers.Layer) else None
        if layout is None or len(layout.segments) != 1 or layout.segments[0].root() is not twin:
            continue
        spec = prunable.prune_spec(layer)
        if spec is not None and spec.channel_weight:
            _zero(layer, spec.channel_weight, spec.channel_axes, keep)
            if spec.bias:
                _zero(layer, spec.bias, (0,), keep)
        else:  # a channel-wise layer on the group: BatchNormalization's gamma and beta
            for name in ("gamma", "beta"):
                if isinstance(getattr(layer, name, None), keras.Variable):
                    _zero(layer, name, (0,), keep)
    return shrink(copy, on_unknown="skip")


def _zero(layer, path, axes, keep):
    variable = prunable.resolve(layer, path)
    value = np.array(keras.ops.convert_to_numpy(variable))
    axis = axes[0] % value.ndim
    index = [slice(None)] * value.ndim
    index[axis] = slice(keep, None)
    value[tuple(index)] = 0
    variable.assign(value)


def latency_table(model, fractions=FRACTIONS, measure=None, batch_size=1):
    """Measures how the model's latency changes as each group of channels narrows.

    For each group of output channels that pruning may remove (a layer's
    filters or units, with the layers coupled to them), the whole model is
    timed with that group alone narrowed to each fraction (its channels
    removed with `kc.shrink`), and once dense. `kc.ChannelGates(cost="latency")`
    interpolates the table; timing whole models keeps each layer's call
    overhead and its consumers' narrower inputs in the measurement. Times
    are made non-decreasing in the fraction (a noisy reading never makes a
    narrower model look slower than a wider one).

    Args:
        model: a built Sequential or functional model (plain, or returned by
            `scheme.apply`, which is stripped first).
        fractions: fractions of each group's channels to time (below 1).
        measure: `measure(keras_model, x) -> seconds`; default
            `keras_latency` (the Keras backend's device). Pass one that
            converts and times on LiteRT to budget phone latency.
        batch_size: the batch of the timed inputs.

    Returns:
        `{group name: [[fraction, seconds], ...], "__total__": seconds}`,
        a group named by its first producer layer.

    Raises:
        ValueError: a group that cannot be narrowed or timed (named).

    Example:

    ```python
    table = kc.latency_table(model)
    scheme = kc.ChannelGates(budget=0.5, cost="latency", latency_table=table)
    ```
    """
    from keras_condensa import surgery  # noqa: PLC0415 - above the cost model

    measure = measure or keras_latency
    if any(isinstance(layer, CompressionWrapper) for layer in model.layers):
        model = surgery.unwrap(model, keep_quantization=False)
    graph = DependencyGraph(model, on_unknown="skip")
    x = np.random.default_rng(0).standard_normal((batch_size, *model.inputs[0].shape[1:]))
    x = x.astype("float32")
    dense = float(measure(model, x))
    table = {"__total__": dense}
    for group in narrowable_groups(graph):
        name = group_name(group)
        rows = [[1.0, dense]]
        for fraction in sorted(f for f in fractions if f < 1):
            try:
                rows.append([float(fraction), float(measure(_narrowed(model, group, fraction), x))])
            except Exception as e:  # noqa: BLE001 - any failure names the layer
                raise ValueError(
                    f"latency_table cannot time the model with the channels of layer '{name}' "
                    f"narrowed to {fraction:g}: {type(e).__name__}: {e}"
                ) from e
        rows.sort()
        times = np.minimum.accumulate([t for _, t in rows][::-1])[::-1]
        table[name] = [[f, float(t)] for (f, _), t in zip(rows, times, strict=True)]
    return table
