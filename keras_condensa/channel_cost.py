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

from keras_condensa.channel_rules import unwrapped

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
    """The cost of a model's weighted layers given the active channels of each group.

    Every layer with a kernel (Dense, EinsumDense, convolutions) costs
    `base * f_in * f_out`, where `f_in` and `f_out` are the fractions of its
    input and output channels that are active (a depthwise convolution:
    `base * f_in`). `base` is the layer's multiply-accumulates per sample
    (`"flops"`) or its kernel size (`"params"`); with `"latency"`, the cost is
    the layer's measured latency at the fraction `f_in * f_out` of its work,
    interpolated in `table`, plus the rest of the model's latency, which no
    channel count changes.

    Args:
        graph: the model's `dependency.DependencyGraph`.
        cost: one of `COSTS`.
        table: for `"latency"`: `{layer name: [[fraction, seconds], ...]}`
            and the entry `"__total__": seconds` (see `latency_table`).

    Raises:
        ValueError: `"latency"` without a table entry for a layer (named).
    """

    def __init__(self, graph, cost="flops", table=None):
        self.cost = cost
        self.terms = []
        for layer, inputs, outputs in graph.nodes:
            kernel = _kernel(layer) if isinstance(layer, keras.layers.Layer) else None
            if kernel is None or len(inputs) != 1:
                continue
            name = unwrapped(layer).name
            if cost == "latency":
                if table is None or name not in table:
                    raise ValueError(
                        f"cost='latency' has no latency measured for layer '{name}': measure "
                        "the table with kc.latency_table(model) (or give it as latency_table=)."
                    )
                base = np.asarray(table[name], "float64")
            elif cost == "params":
                base = float(math.prod(kernel.shape))
            else:
                positions = math.prod(d or 1 for d in outputs[0].shape[1:-1])
                base = float(math.prod(kernel.shape) * positions)
            self.terms.append(
                (
                    name,
                    base,
                    graph.layouts[id(inputs[0])],
                    None if _depthwise(layer) else graph.layouts[id(outputs[0])],
                )
            )
        fixed = 0.0
        if cost == "latency":
            total = float(table["__total__"])
            fixed = max(0.0, total - sum(float(np.interp(1.0, *b.T)) for _, b, *_ in self.terms))
        self.fixed = fixed

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
        for _, base, inputs, outputs in self.terms:
            work = self._fraction(inputs, active) * self._fraction(outputs, active)
            total += float(np.interp(work, *base.T)) if self.cost == "latency" else base * work
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


def keras_latency(model, x, repeats=20):
    """Median seconds of one call of `model` on `x` with the Keras backend (after a warm-up)."""
    model(x, training=False)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x, training=False)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _scaled(layer, fraction):
    """A copy of `layer` with `fraction` of its output channels (at least one)."""
    layer = unwrapped(layer)
    config = layer.get_config()
    for key in ("filters", "units"):
        if key in config:
            config[key] = max(1, round(config[key] * fraction))
            break
    config["name"] = f"{layer.name}_{int(fraction * 100)}"
    return layer.__class__.from_config(config)


def latency_table(model, fractions=FRACTIONS, measure=None, batch_size=1):
    """Measures each weighted layer's latency at a few fractions of its output channels.

    Each layer with a kernel is rebuilt alone (same configuration, fewer
    units or filters) on an input of its own input shape, and timed;
    `kc.ChannelGates(cost="latency")` interpolates the table.

    Args:
        model: a built Sequential or functional model.
        fractions: fractions of the output channels to time.
        measure: `measure(keras_model, x) -> seconds`; default
            `keras_latency` (the Keras backend's device). Pass one that
            converts and times on LiteRT to budget phone latency.
        batch_size: the batch of the timed inputs.

    Returns:
        `{layer name: [[fraction, seconds], ...], "__total__": seconds of the whole model}`.

    Raises:
        ValueError: a layer that cannot be rebuilt or timed (named).

    Example:

    ```python
    table = kc.latency_table(model)
    scheme = kc.ChannelGates(budget=0.5, cost="latency", latency_table=table)
    ```
    """
    from keras_condensa.dependency import DependencyGraph  # noqa: PLC0415 - graph needs a model

    measure = measure or keras_latency
    graph = DependencyGraph(model, on_unknown="skip")
    rng = np.random.default_rng(0)
    table = {}
    for layer, inputs, _ in graph.nodes:
        if not isinstance(layer, keras.layers.Layer) or _kernel(layer) is None:
            continue
        name = unwrapped(layer).name
        shape = (batch_size, *inputs[0].shape[1:])
        x = rng.standard_normal(shape).astype("float32")
        rows = []
        for fraction in fractions:
            try:
                part = _scaled(layer, 1.0 if _depthwise(layer) else fraction)
                single = keras.Sequential([keras.Input(shape[1:]), part])
                rows.append([float(fraction), float(measure(single, x))])
            except Exception as e:  # noqa: BLE001 - any failure names the layer
                raise ValueError(
                    f"latency_table cannot time layer '{name}' ({type(unwrapped(layer)).__name__}) "
                    f"at {fraction:g} of its channels: {type(e).__name__}: {e}"
                ) from e
        if not any(f == 1.0 for f, _ in rows):
            raise ValueError(f"latency_table needs the fraction 1.0. Received: {fractions}")
        table[name] = sorted(rows)
    x = rng.standard_normal((batch_size, *model.inputs[0].shape[1:])).astype("float32")
    table["__total__"] = float(measure(model, x))
    return table

