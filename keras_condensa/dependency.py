"""The channel dependency graph: which output channels must be removed together.

After Torch-Pruning's dependency graph, with two rules: a producer's output
channels are the next consumers' input channels, and channel-wise layers
(BatchNormalization, activations, pooling, DepthwiseConv2D, ...) tie their
input channels to their output channels. Element-wise merges (`Add`,
`Multiply`, ...) couple the channels of all their inputs into one group;
`Concatenate` lays groups side by side (offsets); `Flatten` repeats a group
once per spatial position.

Each layer type (and Keras op) has a `ChannelRule` in a registry matched with
`isinstance` (`keras_condensa.channel_rules`), so subclasses of supported layers
are supported and users can register their own with `register_channel_rule`.
A layer whose rule is a barrier (LayerNormalization over channels) keeps the
channels it reads, and the group records why.
"""

import collections
import dataclasses

import keras
import numpy as np

from keras_condensa.channel_rules import (  # noqa: F401 - re-exported: the public home of the rules
    _RULES,
    ChannelRule,
    channel_rule,
    constant_operand_reason,
    register_channel_rule,
    unwrapped,
)


class Group:
    """Output channels coupled across layers: channel i of every member is kept or removed as one.

    Attributes:
        size: number of channels.
        producers: the producer layers whose output channels these are.
        frozen: why the group may not be pruned (feeds the model output, an
            unknown layer...), or `None`.
    """

    def __init__(self, size, producer=None):
        self.size = int(size)
        self.producers = [producer] if producer is not None else []
        self.frozen = None
        self.parent = self

    def root(self):
        g = self
        while g.parent is not g:
            g = g.parent
        return g

    def __repr__(self):
        names = [p.name for p in self.producers]
        return f"Group(size={self.size}, producers={names}, frozen={self.frozen!r})"


def _union(a, b):
    a, b = a.root(), b.root()
    if a is b:
        return a
    b.parent = a
    a.producers += b.producers
    a.frozen = a.frozen or b.frozen
    return a


@dataclasses.dataclass
class Layout:
    """The channels on the last axis of a tensor: `segments` of groups, repeated `repeat` times."""

    segments: list  # [Group], side by side
    repeat: int = 1

    @property
    def channels(self):
        return sum(g.size for g in self.segments)

    def groups(self):
        return [g.root() for g in self.segments]


def _freeze(layout, reason):
    for g in layout.groups():
        g.frozen = g.frozen or reason


def graph_of(model):
    """The functional graph under a Sequential or functional model."""
    if isinstance(model, keras.Sequential):
        return model._functional
    return model


def nodes_in_order(model):
    """The nodes of the model's graph, producers before consumers."""
    fn = graph_of(model)
    for depth in sorted(fn._nodes_by_depth, reverse=True):
        yield from fn._nodes_by_depth[depth]


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


class DependencyGraph:
    """The channel groups of a Sequential or functional model.

    Args:
        model: a built Sequential or functional model (not modified).
        on_unknown: `"error"` raises on a layer the graph has no rule for that
            receives prunable channels; `"skip"` leaves those groups unpruned
            and records the reason.

    Raises:
        ValueError: on an unknown layer with `on_unknown="error"`.

    A `CompressionWrapper` counts as the layer it wraps, so the graph of a
    model returned by `scheme.apply` has the same groups as the plain model.

    Attributes:
        layouts: `{id(tensor): Layout}` for every tensor of the graph.
        nodes: `(layer, input tensors, output tensors)`, producers first.
        groups: the distinct groups (roots).
        skipped: `{layer name: why}` for the layers the graph cannot follow.
        arguments: `{id(output tensor): SymbolicArguments}` of the Keras op
            nodes (their constant operands, e.g. the 3.0 of `x + 3.0`).
    """

    def __init__(self, model, on_unknown="error"):
        if on_unknown not in ("error", "skip"):
            raise ValueError(f"on_unknown must be 'error' or 'skip'. Received: {on_unknown!r}")
        self.model = model
        self._mode = on_unknown
        self.layouts = {}
        self.nodes = []
        self.skipped = {}
        self.arguments = {}
        self._channels = {}
        self._previous = {}
        made_by = {}
        fn = graph_of(model)
        # Calls within this model's graph only: a Sequential loaded from a file keeps the
        # nodes of its partial rebuilds in `layer._inbound_nodes`.
        self._calls = collections.Counter(id(node.operation) for node in nodes_in_order(model))
        for node in nodes_in_order(model):
            layer = node.operation
            inputs = [t for t in node.input_tensors]
            outputs = _as_list(node.outputs if hasattr(node, "outputs") else node.output_tensors)
            if isinstance(layer, keras.layers.InputLayer) or node.is_input:
                for t in outputs:
                    g = Group(t.shape[-1] or 0)  # None: token ids of any length, no channels
                    g.frozen = "model input"
                    self.layouts[id(t)] = Layout([g])
                continue
            self.nodes.append((layer, inputs, outputs))
            if not isinstance(layer, keras.layers.Layer):
                self.arguments[id(outputs[0])] = node.arguments
            if len(inputs) == 1:
                self._previous[id(layer)] = made_by.get(id(inputs[0]))
            made_by.update((id(t), layer) for t in outputs)
            in_layouts = [self.layouts[id(t)] for t in inputs]
            out = self._propagate(layer, inputs, in_layouts, outputs)
            for t in outputs:
                self.layouts[id(t)] = out
        self._output_groups = set()
        for t in _as_list(fn.outputs):
            _freeze(self.layouts[id(t)], "feeds the model output")
            self._output_groups.update(id(g) for g in self.layouts[id(t)].groups())
        self.groups = list(
            {id(g.root()): g.root() for lay in self.layouts.values() for g in lay.segments}.values()
        )

    def _unknown(self, layer, in_layouts, outputs, why):
        reason = f"layer '{layer.name}' ({type(layer).__name__}): {why}"
        if self.on_unknown_error(in_layouts):
            raise ValueError(
                f"kc.shrink cannot follow channels through {reason}. Register a rule with "
                "kc.register_channel_rule, or pass on_unknown='skip' to leave the channels "
                "around it unpruned."
            )
        self.skipped[layer.name] = why
        for lay in in_layouts:
            _freeze(lay, reason)
        g = Group(outputs[0].shape[-1] if outputs[0].shape else 1)
        g.frozen = reason
        return Layout([g])

    def on_unknown_error(self, in_layouts):
        return self._mode == "error" and any(
            g.frozen is None for lay in in_layouts for g in lay.groups()
        )

    def channels_of(self, layer):
        """The `Layout` of the channels a layer's mask would cover, or `None`.

        For a producer, its output channels; for a channel-wise layer
        (BatchNormalization, DepthwiseConv2D), its input channels, which
        are its output channels. `None` for a layer the graph does not
        follow (outside the graph, unknown, or after a `Flatten`).
        """
        layout = self._channels.get(id(layer))
        return layout if layout is not None and layout.repeat == 1 else None

    def previous(self, layer):
        """The layer whose output a single-input `layer` reads, or `None` (a model input)."""
        return self._previous.get(id(layer))

    def feeds_output(self, group):
        """Whether the channels of `group` reach a model output (they are never pruned)."""
        return id(group.root()) in self._output_groups

    def _propagate(self, layer, inputs, in_layouts, outputs):
        out = self._layout_after(layer, inputs, in_layouts, outputs)
        kind = channel_rule(layer).kind if layer.name not in self.skipped else None
        if kind == "producer":
            self._channels[id(layer)] = out
        elif kind == "channelwise":
            self._channels[id(layer)] = in_layouts[0]
        return out

    def _why_unsupported(self, layer, rule, outputs):
        if isinstance(layer, keras.layers.Layer):
            why = rule.check(unwrapped(layer)) if rule.check else None
            if why is None and self._calls[id(layer)] > 1:
                why = "shared layer (called more than once)"
        else:  # a stateless Keras op: calling it again shares nothing
            why = constant_operand_reason(self.arguments[id(outputs[0])])
        if why is None and len(outputs) != 1:
            why = "several outputs"
        return why

    def _layout_after(self, layer, inputs, in_layouts, outputs):
        rule = channel_rule(layer)
        if rule is None:
            why = "no channel rule for this layer type"
            if isinstance(layer, keras.Model):
                why = "a nested model (shrink works on one flat graph)"
            return self._unknown(layer, in_layouts, outputs, why)
        why = self._why_unsupported(layer, rule, outputs)
        if why is not None:
            return self._unknown(layer, in_layouts, outputs, why)
        inner = unwrapped(layer)
        if rule.kind == "producer":
            if in_layouts[0].repeat > 1 and not isinstance(inner, keras.layers.Dense):
                _freeze(in_layouts[0], f"'{layer.name}' reads a flattened tensor")
            return Layout([Group(outputs[0].shape[-1], layer)])
        if rule.kind == "channelwise":
            lay = in_layouts[0]
            if lay.repeat > 1:
                _freeze(lay, f"'{layer.name}' reads a flattened tensor")
            barrier = rule.barrier(inner) if rule.barrier else None
            if barrier:
                _freeze(lay, f"layer '{layer.name}' ({type(inner).__name__}) {barrier}")
            return Layout(list(lay.segments))
        if rule.kind == "merge":
            return self._merge(layer, in_layouts, outputs)
        if rule.kind == "concat":
            axis = layer.axis
            rank = len(outputs[0].shape)
            if axis % rank != rank - 1 or any(lay.repeat > 1 for lay in in_layouts):
                for lay in in_layouts:
                    _freeze(lay, f"'{layer.name}' concatenates on axis {axis}, not channels")
                return Layout([Group(outputs[0].shape[-1])])
            return Layout([g for lay in in_layouts for g in lay.segments])
        if rule.kind == "flatten":
            lay = in_layouts[0]
            spatial = int(np.prod(inputs_shape_spatial(layer)))
            return Layout(list(lay.segments), lay.repeat * spatial)
        if rule.kind == "reshape":
            return self._reshape(layer, inputs[0], in_layouts[0], outputs)
        raise ValueError(f"Unknown ChannelRule kind {rule.kind!r} for layer '{layer.name}'")

    def _merge(self, layer, in_layouts, outputs):
        """Element-wise merge: channel i of every input is one channel.

        An input with one channel broadcast over all of them (an attention
        map) is not coupled; it is kept.
        """
        channels = outputs[0].shape[-1]
        coupled, broadcast = [], []
        for lay in in_layouts:
            if lay.channels * lay.repeat == channels:
                coupled.append(lay)
            elif lay.channels == 1 and lay.repeat == 1:
                broadcast.append(lay)
        for lay in broadcast:
            _freeze(lay, f"'{layer.name}' broadcasts it over the channels")
        sizes = [[g.size for g in lay.segments] for lay in coupled]
        if (
            not coupled
            or len(coupled) + len(broadcast) != len(in_layouts)
            or any(s != sizes[0] for s in sizes)
            or any(lay.repeat != coupled[0].repeat for lay in coupled)
        ):
            reason = f"'{layer.name}' merges tensors with different channel layouts"
            for lay in in_layouts:
                _freeze(lay, reason)
            if not coupled:
                g = Group(channels)
                g.frozen = reason
                return Layout([g])
            return Layout(list(coupled[0].segments), coupled[0].repeat)
        first = coupled[0]
        for lay in coupled[1:]:
            for a, b in zip(first.segments, lay.segments, strict=True):
                _union(a, b)
        return Layout(list(first.segments), first.repeat)

    def _reshape(self, layer, tensor, layout, outputs):
        """A `Reshape` that keeps the channel axis (`(1, 1, C)`) or flattens everything."""
        before, after = list(tensor.shape[1:]), list(outputs[0].shape[1:])
        if None in before or None in after or not before or not after:
            return self._unknown(layer, [layout], outputs, "reshape with unknown dimensions")
        if after[-1] == before[-1] and np.prod(after[:-1]) == np.prod(before[:-1]):
            return Layout(list(layout.segments), layout.repeat)
        if len(after) == 1 and after[0] == np.prod(before):
            return Layout(list(layout.segments), layout.repeat * int(np.prod(before[:-1])))
        return self._unknown(
            layer, [layout], outputs, f"reshapes the channel axis ({before} to {after})"
        )


def inputs_shape_spatial(layer):
    shape = layer.input.shape
    return [int(d) for d in shape[1:-1]]
