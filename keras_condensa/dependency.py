"""The channel dependency graph: which output channels must be removed together.

After Torch-Pruning's dependency graph, with two rules: a producer's output
channels are the next consumers' input channels, and channel-wise layers
(BatchNormalization, activations, pooling, DepthwiseConv2D, ...) tie their
input channels to their output channels. Element-wise merges (`Add`,
`Multiply`, ...) couple the channels of all their inputs into one group;
`Concatenate` lays groups side by side (offsets); `Flatten` repeats a group
once per spatial position.

Each layer type has a `ChannelRule` in a registry matched with `isinstance`, so
subclasses of supported layers are supported and users can register their own
with `register_channel_rule`.
"""

import dataclasses

import keras
import numpy as np

from keras_condensa.wrappers import CompressionWrapper


@dataclasses.dataclass(frozen=True)
class ChannelRule:
    """How a layer type relates its input channels to its output channels.

    Args:
        kind: `"producer"` (new output channels: Dense, Conv), `"channelwise"`
            (output channel i comes from input channel i: BatchNormalization,
            activations, pooling, DepthwiseConv2D), `"merge"` (element-wise
            over several inputs: Add), `"concat"` (Concatenate on the last
            axis) or `"flatten"`.
        config_key: for producers, the config entry holding the number of
            output channels (`"units"`, `"filters"`).
        out_weights: `{weight name: axis}` sliced along kept output channels
            (producers) or kept channels (channel-wise layers).
        in_weights: `{weight name: (axis, multiplier)}` sliced along kept input
            channels (producers); a multiplier m expands input channel c to
            rows `c * m ... c * m + m - 1` (SeparableConv's pointwise kernel).
        check: optional `check(layer)` returning why this instance is not
            supported (e.g. a grouped convolution), or `None`.
        foldable: optional `foldable(layer)`: whether a removed input channel
            that carries a constant can be folded into this producer's bias.
    """

    kind: str
    config_key: str | None = None
    out_weights: dict = dataclasses.field(default_factory=dict)
    in_weights: dict = dataclasses.field(default_factory=dict)
    check: object = None
    foldable: object = None


_RULES: dict[type, ChannelRule] = {}


def register_channel_rule(layer_class, rule):
    """Registers how a layer class (and its subclasses) passes channels, for `kc.shrink`.

    Args:
        layer_class: a `keras.layers.Layer` subclass.
        rule: a `ChannelRule`.

    Raises:
        TypeError: if the arguments have the wrong types.

    Example:

    ```python
    kc.register_channel_rule(MyScale, kc.ChannelRule("channelwise", out_weights={"w": 0}))
    ```
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"Expected a keras.layers.Layer subclass. Received: {layer_class!r}")
    if not isinstance(rule, ChannelRule):
        raise TypeError(f"Expected a ChannelRule. Received: {rule!r}")
    _RULES[layer_class] = rule


def unwrapped(layer):
    """The layer a `CompressionWrapper` wraps, or `layer` itself."""
    return layer.layer if isinstance(layer, CompressionWrapper) else layer


def channel_rule(layer):
    """The `ChannelRule` of `layer` (of the layer it wraps), or `None` if its type is unknown."""
    layer = unwrapped(layer)
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def _channels_last(layer):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "data_format='channels_first' is not supported"
    return None


def _conv_check(layer):
    if getattr(layer, "groups", 1) != 1:
        return f"grouped convolution (groups={layer.groups})"
    return _channels_last(layer)


def _bn_check(layer):
    axis = (
        layer.axis
        if isinstance(layer.axis, int)
        else (layer.axis[0] if len(layer.axis) == 1 else None)
    )
    rank = getattr(layer.input_spec, "ndim", None)  # set by build, also inside a wrapper
    if axis != -1 and (rank is None or axis != rank - 1):
        return f"normalizes axis {layer.axis}, not the channel axis -1"
    return None


def _depthwise_check(layer):
    if layer.depth_multiplier != 1:
        return f"depth_multiplier={layer.depth_multiplier} (only 1 passes channels through)"
    return _channels_last(layer)


def _dense_foldable(layer):
    return layer.use_bias


def _conv_foldable(layer):
    # A constant input channel adds the same amount everywhere only without zero padding.
    unpadded = layer.padding == "valid" or all(k == 1 for k in layer.kernel_size)
    return layer.use_bias and unpadded


_PRODUCER_OUT = {"kernel": -1, "bias": 0}
for _cls in (keras.layers.Dense,):
    register_channel_rule(
        _cls,
        ChannelRule(
            "producer", "units", _PRODUCER_OUT, {"kernel": (0, 1)}, foldable=_dense_foldable
        ),
    )
for _cls in (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
    register_channel_rule(
        _cls,
        ChannelRule(
            "producer",
            "filters",
            _PRODUCER_OUT,
            {"kernel": (-2, 1)},
            check=_conv_check,
            foldable=_conv_foldable,
        ),
    )
for _cls in (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D):
    register_channel_rule(
        _cls,
        ChannelRule(
            "producer",
            "filters",
            {"pointwise_kernel": -1, "bias": 0},
            {"depthwise_kernel": (-2, 1), "pointwise_kernel": (-2, "depth_multiplier")},
            check=_channels_last,
        ),
    )
for _cls in (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D):
    register_channel_rule(
        _cls,
        ChannelRule("channelwise", out_weights={"kernel": -2, "bias": 0}, check=_depthwise_check),
    )
register_channel_rule(
    keras.layers.BatchNormalization,
    ChannelRule(
        "channelwise",
        out_weights={"gamma": 0, "beta": 0, "moving_mean": 0, "moving_variance": 0},
        check=_bn_check,
    ),
)
_CHANNELWISE = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.Identity,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
)
for _cls in _CHANNELWISE:
    register_channel_rule(_cls, ChannelRule("channelwise", check=_channels_last))
for _cls in (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
):
    register_channel_rule(_cls, ChannelRule("merge"))
register_channel_rule(keras.layers.Concatenate, ChannelRule("concat"))
register_channel_rule(keras.layers.Flatten, ChannelRule("flatten", check=_channels_last))


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
    """

    def __init__(self, model, on_unknown="error"):
        if on_unknown not in ("error", "skip"):
            raise ValueError(f"on_unknown must be 'error' or 'skip'. Received: {on_unknown!r}")
        self.model = model
        self._mode = on_unknown
        self.layouts = {}
        self.nodes = []
        self.skipped = {}
        self._channels = {}
        self._previous = {}
        made_by = {}
        fn = graph_of(model)
        for node in nodes_in_order(model):
            layer = node.operation
            inputs = [t for t in node.input_tensors]
            outputs = _as_list(node.outputs if hasattr(node, "outputs") else node.output_tensors)
            if isinstance(layer, keras.layers.InputLayer) or node.is_input:
                for t in outputs:
                    g = Group(t.shape[-1])
                    g.frozen = "model input"
                    self.layouts[id(t)] = Layout([g])
                continue
            self.nodes.append((layer, inputs, outputs))
            if len(inputs) == 1:
                self._previous[id(layer)] = made_by.get(id(inputs[0]))
            made_by.update((id(t), layer) for t in outputs)
            in_layouts = [self.layouts[id(t)] for t in inputs]
            out = self._propagate(layer, in_layouts, outputs)
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

    def _propagate(self, layer, in_layouts, outputs):
        out = self._layout_after(layer, in_layouts, outputs)
        kind = channel_rule(layer).kind if layer.name not in self.skipped else None
        if kind == "producer":
            self._channels[id(layer)] = out
        elif kind == "channelwise":
            self._channels[id(layer)] = in_layouts[0]
        return out

    def _layout_after(self, layer, in_layouts, outputs):
        rule = channel_rule(layer)
        if rule is None:
            why = "no channel rule for this layer type"
            if isinstance(layer, keras.Model):
                why = "a nested model (shrink works on one flat graph)"
            return self._unknown(layer, in_layouts, outputs, why)
        inner = unwrapped(layer)
        why = rule.check(inner) if rule.check else None
        if why is None and len(layer._inbound_nodes) > 1:
            why = "shared layer (called more than once)"
        if why is None and len(outputs) != 1:
            why = "several outputs"
        if why is not None:
            return self._unknown(layer, in_layouts, outputs, why)
        if rule.kind == "producer":
            if in_layouts[0].repeat > 1 and not isinstance(inner, keras.layers.Dense):
                _freeze(in_layouts[0], f"'{layer.name}' reads a flattened tensor")
            return Layout([Group(outputs[0].shape[-1], layer)])
        if rule.kind == "channelwise":
            lay = in_layouts[0]
            if lay.repeat > 1:
                _freeze(lay, f"'{layer.name}' reads a flattened tensor")
            return Layout(list(lay.segments))
        if rule.kind == "merge":
            first = in_layouts[0]
            sizes = [[g.size for g in lay.segments] for lay in in_layouts]
            if any(s != sizes[0] for s in sizes) or any(
                lay.repeat != first.repeat for lay in in_layouts
            ):
                for lay in in_layouts:
                    _freeze(lay, f"'{layer.name}' merges tensors with different channel layouts")
                return Layout(list(first.segments), first.repeat)
            for lay in in_layouts[1:]:
                for a, b in zip(first.segments, lay.segments, strict=True):
                    _union(a, b)
            return Layout(list(first.segments), first.repeat)
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
        raise ValueError(f"Unknown ChannelRule kind {rule.kind!r} for layer '{layer.name}'")


def inputs_shape_spatial(layer):
    shape = layer.input.shape
    return [int(d) for d in shape[1:-1]]
