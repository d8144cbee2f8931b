"""Shrink: rebuild a model without its pruned channels, so that it is really smaller and faster.

Structured pruning (`NeuronPrune`, `FilterPrune`, `StructurePrune`) leaves
whole output channels at zero. `shrink` follows the channel dependency graph
(`keras_condensa.dependency`) and rebuilds the model with fewer units and
filters, slicing every consumer's input channels and every channel-wise layer
(BatchNormalization, DepthwiseConv2D) on the way.

A removed channel is not always zero downstream: a BatchNormalization after a
pruned filter emits its shifted beta, and an activation `f` emits `f(0)`.
`shrink` propagates these constants through the graph. A constant that reaches
a Dense layer or a `padding="valid"` convolution is folded into its bias; a
channel whose constant would reach a layer that cannot fold it (a `"same"`
convolution sees zero padding at the borders) is kept, so that the shrunk
model computes the same function as the masked one.
"""

import logging
import math

import keras
import numpy as np
from keras import ops

from keras_condensa import channel_rules, copying, dependency, masking, shrink_blocks, surgery
from keras_condensa.model_checks import check_model
from keras_condensa.wrappers import CompressionWrapper

logger = logging.getLogger("keras_condensa")


def _weight_name(layer, name):
    """The variable name of a rule's weight, given as a variable or attribute name."""
    variable = getattr(layer, name, None)
    return variable.name if isinstance(variable, keras.Variable) else name


def _zero_columns(layer, rule):
    """Per output channel: whether every weight that feeds it (not the bias) is all zeros."""
    weights = copying.named_weights(layer)
    dead = None
    for name, axis in rule.out_weights.items():
        name = _weight_name(layer, name)
        if name == "bias" or name not in weights:
            continue
        w = np.moveaxis(weights[name], axis, -1).reshape(-1, weights[name].shape[axis])
        col = ~np.any(w != 0, axis=0)
        dead = col if dead is None else dead & col
    return dead


def _producer_constants(layer, rule, channels):
    """The constant each dead output channel emits (`activation(bias)`), NaN for live ones."""
    dead = _zero_columns(layer, rule)
    if dead is None:
        return np.full(channels, np.nan, "float64")
    bias = copying.named_weights(layer).get("bias", np.zeros(channels, "float32"))
    activation = getattr(layer, "activation", None) or (lambda x: x)
    value = np.array(ops.convert_to_numpy(activation(ops.convert_to_tensor(bias[None, :]))))[0]
    return np.where(dead, value.astype("float64"), np.nan)


def _bn_constant(layer, c):
    w = copying.named_weights(layer)
    gamma = w.get("gamma", np.ones_like(c))
    beta = w.get("beta", np.zeros_like(c))
    return gamma * (c - w["moving_mean"]) / np.sqrt(w["moving_variance"] + layer.epsilon) + beta


def _relu_constant(layer, c):
    slope = float(layer.negative_slope)
    out = np.where(c >= layer.threshold, c, slope * (c - layer.threshold))
    return np.minimum(out, layer.max_value) if layer.max_value is not None else out


def _padding_constant(layer, c):
    return np.where(c == 0, c, np.nan)  # zero padding breaks a nonzero constant


_MERGES = {
    keras.layers.Add: lambda cs: np.sum(cs, axis=0),
    keras.layers.Subtract: lambda cs: cs[0] - cs[1],
    keras.layers.Multiply: lambda cs: np.prod(cs, axis=0),
    keras.layers.Average: lambda cs: np.mean(cs, axis=0),
    keras.layers.Maximum: lambda cs: np.max(cs, axis=0),
    keras.layers.Minimum: lambda cs: np.min(cs, axis=0),
}

# Closed forms for common layers (evaluating a layer eagerly costs a compile per op on JAX).
_CONSTANTS = (
    (keras.layers.BatchNormalization, _bn_constant),
    (keras.layers.ReLU, _relu_constant),
    (
        (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D),
        _padding_constant,
    ),
    (
        (
            keras.layers.Dropout,
            keras.layers.SpatialDropout1D,
            keras.layers.SpatialDropout2D,
            keras.layers.GaussianNoise,
            keras.layers.GaussianDropout,
            keras.layers.Identity,
            keras.layers.Cropping1D,
            keras.layers.Cropping2D,
            keras.layers.UpSampling1D,
            keras.layers.UpSampling2D,
            keras.layers.GlobalAveragePooling1D,
            keras.layers.GlobalAveragePooling2D,
            keras.layers.GlobalMaxPooling1D,
            keras.layers.GlobalMaxPooling2D,
        ),
        lambda layer, c: c,
    ),
    (channel_rules.LayerScale, lambda layer, c: c * np.asarray(ops.convert_to_numpy(layer.gamma))),
    (
        keras.layers.Rescaling,
        lambda layer, c: c * float(layer.scale) + float(layer.offset),
    ),
)


def _broadcast(consts, channels):
    return np.stack([np.broadcast_to(c, (channels,)) for c in consts])


def _uniform(out, in_consts):
    out = np.asarray(out, "float64")
    out = out.reshape(-1, out.shape[-1])
    uniform = np.all(np.abs(out - out[:1]) <= 1e-7 * (1 + np.abs(out[:1])), axis=0)
    known = np.all([np.isfinite(np.broadcast_to(c, out.shape[-1:])) for c in in_consts], axis=0)
    return np.where(uniform & known, out[0], np.nan)


def _evaluate_op(op, in_consts, inputs, arguments):
    """Runs a Keras op node on its constant inputs (one row of channels: ops are element-wise)."""
    values = {
        id(t): np.nan_to_num(c, nan=0.0).astype("float32")[None, :]
        for c, t in zip(in_consts, inputs, strict=True)
    }
    args, kwargs = arguments.fill_in(values)
    fn = channel_rules.ELEMENTWISE_BINARY_OPS.get(type(op))
    out = fn(*args, **kwargs) if fn is not None else ops.convert_to_numpy(op(*args, **kwargs))
    return _uniform(out, in_consts)


def _evaluate(layer, in_consts, inputs, out_channels, arguments=None):
    """Runs a channel-wise or merge layer on constant inputs; NaN where not constant."""
    if not any(np.any(np.isfinite(c)) for c in in_consts):
        return np.full(out_channels, np.nan)
    if arguments is not None:
        return _evaluate_op(layer, in_consts, inputs, arguments)
    for cls, fn in _MERGES.items():
        if type(layer) is cls:
            return fn(_broadcast(in_consts, out_channels))
    for cls, fn in _CONSTANTS:
        if type(layer) in (cls if isinstance(cls, tuple) else (cls,)):
            return fn(layer, in_consts[0])
    arrays = []
    for const, t in zip(in_consts, inputs, strict=True):
        shape = [1] + [int(d) for d in t.shape[1:]]
        arrays.append(
            np.broadcast_to(np.nan_to_num(const, nan=0.0).astype("float32"), shape).copy()
        )
    args = arrays if len(arrays) > 1 else arrays[0]
    out = ops.convert_to_numpy(layer(args, training=False))
    return _uniform(out, in_consts)


def _constants(graph):
    """{id(tensor): per-channel constant (NaN: live or not constant)}."""
    consts = {tid: np.full(lay.channels, np.nan) for tid, lay in graph.layouts.items()}
    for layer, inputs, outputs in graph.nodes:
        rule = dependency.channel_rule(layer)
        if layer.name in graph.skipped or rule is None:
            continue
        channels = graph.layouts[id(outputs[0])].channels
        ins = [consts[id(t)] for t in inputs]
        if rule.kind == "producer":
            out = _producer_constants(layer, rule, channels)
        elif rule.barrier is not None and rule.barrier(dependency.unwrapped(layer)):
            out = np.full(channels, np.nan)  # it mixes channels: nothing known per channel
        elif rule.kind in ("channelwise", "merge"):
            out = _evaluate(layer, ins, inputs, channels, graph.arguments.get(id(outputs[0])))
        elif rule.kind == "concat":
            out = np.concatenate(ins)
        else:  # flatten and reshape keep the per-channel constants (the layout repeats them)
            out = ins[0]
        consts[id(outputs[0])] = out
    return consts


def _removable(graph, consts):
    """Which pruned channels can go, and why the others stay.

    Returns:
        `({id(group): bool array}, {id(group): why})`: per unfrozen group,
        the channels that can be removed without changing the function; per
        group that keeps some of its pruned (constant) channels, the reason.
    """
    consumers, made_by = {}, {}
    for layer, inputs, outputs in graph.nodes:
        for t in inputs:
            consumers.setdefault(id(t), []).append(layer)
        made_by.update((id(t), layer) for t in outputs)
    segments = [
        (tid, seg.root(), offset)
        for tid, lay in graph.layouts.items()
        for seg, offset in zip(
            lay.segments, np.cumsum([0] + [g.size for g in lay.segments]), strict=False
        )
    ]
    dead = {}
    for tid, g, offset in segments:
        finite = np.isfinite(consts[tid][offset : offset + g.size])
        dead[id(g)] = dead.get(id(g), False) | finite
    result = {id(g): np.ones(g.size, bool) for g in graph.groups if g.frozen is None}
    why = {id(g): g.frozen for g in graph.groups if g.frozen is not None and np.any(dead[id(g)])}
    for tid, g, offset in segments:
        if id(g) not in result:
            continue
        c = consts[tid][offset : offset + g.size]
        ok = np.isfinite(c)
        if np.any(dead[id(g)] & ~ok) and tid in made_by:
            why.setdefault(id(g), f"pruned channels are not constant after '{made_by[tid].name}'")
        for layer in consumers.get(tid, ()):
            rule = dependency.channel_rule(layer)
            if rule is not None and rule.kind == "producer":
                fold = rule.foldable is not None and rule.foldable(layer)
                blocked = ok & (c != 0) & (not fold)
                if np.any(blocked):
                    why.setdefault(
                        id(g),
                        f"'{layer.name}' cannot fold the nonzero constants of pruned channels "
                        "into its bias (zero padding, or no bias)",
                    )
                ok &= ~blocked
        result[id(g)] &= ok
    return result, why


def _kept(group, removable, align):
    if group.frozen is not None or id(group) not in removable:
        return np.arange(group.size)
    remove = removable[id(group)]
    keep = ~remove
    count = int(keep.sum())
    target = max(1, count)
    if align:
        target = min(group.size, int(math.ceil(target / align)) * align)
    extra = target - count
    if extra > 0:  # give back removable channels (they are exact either way)
        keep[np.flatnonzero(remove)[:extra]] = True
    return np.flatnonzero(keep)


def _tensor_index(layout, kept):
    idx, offset = [], 0
    for seg in layout.segments:
        idx.append(offset + kept[id(seg.root())])
        offset += seg.size
    idx = np.concatenate(idx) if idx else np.arange(0)
    if layout.repeat > 1:
        channels = layout.channels
        idx = (np.arange(layout.repeat)[:, None] * channels + idx[None, :]).ravel()
    return idx


def _expand(idx, multiplier):
    if multiplier == 1:
        return idx
    return (idx[:, None] * multiplier + np.arange(multiplier)[None, :]).ravel()


def _fold(weights, rule, layout, const, kept_idx):
    """Adds the constants of removed input channels times their weights to the bias."""
    c = np.nan_to_num(const, nan=0.0)
    removed = np.ones(layout.channels, bool)
    removed[kept_idx] = False
    c = np.where(removed, c, 0.0)
    if not np.any(c):
        return
    axis, _ = rule.in_weights["kernel"]
    kernel = np.moveaxis(weights["kernel"], axis, -2)
    kernel = kernel.reshape(-1, layout.channels, kernel.shape[-1])
    weights["bias"] = (weights["bias"] + np.einsum("sco,c->o", kernel, c)).astype(
        weights["bias"].dtype
    )


def _plan(graph, kept, consts):
    """{layer id: (config changes, new weights by name)} for every layer that changes."""
    plan = {}
    for layer, inputs, outputs in graph.nodes:
        rule = dependency.channel_rule(layer)
        if rule is None or layer.name in graph.skipped:
            continue
        in_lay = graph.layouts[id(inputs[0])]
        out_lay = graph.layouts[id(outputs[0])]
        if rule.kind == "producer":
            out_idx = _tensor_index(out_lay, kept)
            in_base = _tensor_index(dependency.Layout(in_lay.segments), kept)
            in_idx = _tensor_index(in_lay, kept)
            weights = copying.named_weights(layer)
            if rule.foldable is not None and rule.foldable(layer):
                _fold(weights, rule, in_lay, consts[id(inputs[0])], in_base)
            for name, (axis, mult) in rule.in_weights.items():
                if isinstance(mult, str):
                    mult = int(getattr(layer, mult))
                idx = in_idx if mult == 1 else _expand(in_base, mult)
                weights[name] = np.take(weights[name], idx, axis=axis)
            for name, axis in rule.out_weights.items():
                if name in weights:
                    weights[name] = np.take(weights[name], out_idx, axis=axis)
            if len(out_idx) == out_lay.channels and len(in_idx) == in_lay.channels * in_lay.repeat:
                continue
            plan[id(layer)] = ({rule.config_key: int(len(out_idx))}, weights)
        elif rule.kind == "channelwise" and (rule.out_weights or rule.resize):
            idx = _tensor_index(in_lay, kept)
            if len(idx) == in_lay.channels:
                continue
            weights = copying.named_weights(layer)
            for name, axis in rule.out_weights.items():
                name = _weight_name(layer, name)
                if name in weights:
                    weights[name] = np.take(weights[name], idx, axis=axis)
            changes = rule.resize(layer, int(len(idx))) if rule.resize else {}
            plan[id(layer)] = (changes, weights)
        elif rule.kind == "reshape":
            channels = len(_tensor_index(out_lay, kept))
            target = list(layer.target_shape)
            if channels == out_lay.channels * out_lay.repeat or target[-1] == -1:
                continue
            plan[id(layer)] = ({"target_shape": (*target[:-1], channels)}, {})
    return plan


def shrink(model, align=None, on_unknown="error"):
    """Returns a copy of `model` with its pruned channels physically removed.

    Where structured pruning left whole output channels of a Dense or
    convolution layer at zero, the copy has fewer units or filters, and every
    layer downstream (BatchNormalization, DepthwiseConv2D, LayerScale, the
    next Dense or convolution, across `Add`, `Concatenate`, `Flatten`,
    squeeze-excite `Reshape((1, 1, C))` and `Multiply`, and element-wise
    Keras ops such as `x + 3.0`) has the matching channels removed.
    Channels coupled by a residual `Add` are removed only where they are
    pruned in every branch; channels that feed the model output, or that a
    LayerNormalization over the channels reads, are never removed; the
    groups whose pruned channels are kept, and why, are logged at INFO
    level. The copy computes the same function as the masked model, within
    float rounding (see the module docstring for how constants from
    BatchNormalization and activations are handled). Dense layers and 1x1
    convolutions whose kernels are block-diagonal up to permutations
    (`kc.BlockDiagonalPrune`) become `kc.BlockDense` layers
    (`keras_condensa.shrink_blocks`). The input model is not modified.

    Args:
        model: a Sequential or functional model: one returned by
            `scheme.apply` (it is stripped first) or a stripped one.
        align: keep a multiple of `align` channels in every pruned layer
            (e.g. 8, for fast GPU and XNNPACK kernels); removed channels are
            given back as needed. `None` keeps exactly the unpruned ones.
            Every layer keeps at least one channel.
        on_unknown: `"error"` (default) raises on a layer type the dependency
            graph does not know that sits on prunable channels; `"skip"`
            leaves the channels around it unpruned and logs a warning.

    Returns:
        A new `keras.Model` of plain Keras layers.

    Raises:
        TypeError: for a subclassed model (surgery needs the layer graph of a
            Sequential or functional model).
        ValueError: for an unknown layer in the path with `on_unknown="error"`,
            or a bad `align`.

    Example:

    ```python
    pruned = kc.FilterPrune(density=0.5).apply(model)
    pruned.fit(x, y, callbacks=kc.callbacks(scheme))
    small = kc.shrink(pruned, align=8)
    ```
    """
    if align is not None and (isinstance(align, bool) or not isinstance(align, int) or align < 1):
        raise ValueError(f"align must be a positive int or None. Received: align={align!r}")
    check_model(model)
    if any(isinstance(layer, CompressionWrapper) for layer in masking.iter_leaf_layers(model)):
        model = surgery.unwrap(model, keep_quantization=False)
    graph = dependency.DependencyGraph(model, on_unknown=on_unknown)
    if graph.skipped:
        logger.warning(
            "kc.shrink left channels unpruned around: %s",
            "; ".join(f"'{n}' ({why})" for n, why in graph.skipped.items()),
        )
    consts = _constants(graph)
    removable, why = _removable(graph, consts)
    kept_groups = [(g, why[id(g)]) for g in graph.groups if id(g) in why and g.producers]
    if kept_groups:
        logger.info(
            "kc.shrink kept pruned channels of %d group(s): %s",
            len(kept_groups),
            "; ".join(f"{[p.name for p in g.producers]}: {reason}" for g, reason in kept_groups),
        )
    kept = {id(g): _kept(g, removable, align) for g in graph.groups}
    plan = _plan(graph, kept, consts)

    def clone_layer(layer):
        if id(layer) not in plan:
            return copying.plain_copy(layer)
        changes, weights = plan[id(layer)]
        config = layer.get_config()
        config.update(changes)
        new = layer.__class__.from_config(config)

        def copy_weights():
            new.set_weights([weights[w.name] for w in new.weights])

        return new, copy_weights

    return shrink_blocks.block_layers(copying.clone_with(model, clone_layer))
