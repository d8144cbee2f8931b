"""Channel rules: how each layer type (and Keras op) passes channels, for the dependency graph.

A `ChannelRule` says whether a layer makes new output channels (a
producer: Dense, Conv), passes channel i through to channel i (channel-wise:
BatchNormalization, activations, pooling, DepthwiseConv2D, `LayerScale`,
`Reshape` to `(1, 1, C)`, element-wise Keras ops such as `x + 3.0`), merges
several tensors element-wise (`Add`, `Multiply`, `x + y`), concatenates them,
or flattens. The registry is matched with `isinstance`, so subclasses of a
supported layer are supported, and users register their own layers with
`register_channel_rule`.

Keras ops in a functional model (`x + 3.0` in MobileNetV3's hard-sigmoid,
`inputs + x` in ConvNeXt's blocks) are operation nodes, not layers; their
rules are registered on the op classes in the same registry.
"""

import dataclasses

import keras
import numpy as np
from keras.src.applications.convnext import LayerScale  # no public alias
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
from keras.src.ops import nn as nn_ops  # the op classes have no public alias
from keras.src.ops import numpy as numpy_ops

from keras_condensa.wrappers import CompressionWrapper


@dataclasses.dataclass(frozen=True)
class ChannelRule:
    """How a layer type relates its input channels to its output channels.

    Args:
        kind: `"producer"` (new output channels: Dense, Conv), `"channelwise"`
            (output channel i comes from input channel i: BatchNormalization,
            activations, pooling, DepthwiseConv2D), `"merge"` (element-wise
            over several inputs: Add), `"concat"` (Concatenate on the last
            axis), `"flatten"` or `"reshape"` (Keras `Reshape`: channels pass
            through when only the other axes change, or are flattened).
        config_key: for producers, the config entry holding the number of
            output channels (`"units"`, `"filters"`).
        out_weights: `{weight name: axis}` sliced along kept output channels
            (producers) or kept channels (channel-wise layers). A name is a
            variable's name or the layer attribute holding it.
        in_weights: `{weight name: (axis, multiplier)}` sliced along kept input
            channels (producers); a multiplier m expands input channel c to
            rows `c * m ... c * m + m - 1` (SeparableConv's pointwise kernel).
        check: optional `check(layer)` returning why this instance is not
            supported (e.g. a grouped convolution), or `None`.
        foldable: optional `foldable(layer)`: whether a removed input channel
            that carries a constant can be folded into this producer's bias.
        resize: optional `resize(layer, channels)` for a channel-wise layer
            whose config names its channel count: the config changes for
            `channels` channels (e.g. `{"projection_dim": channels}`).
        barrier: optional `barrier(layer)` returning why every channel this
            channel-wise layer reads must be kept (LayerNormalization over
            channels: removing one changes the others' mean and variance),
            or `None`. The layer is supported; its channels stay.
        variant: optional `variant(layer)` returning another `ChannelRule`
            for this instance (a convolution with `groups == filters` is
            channel-wise), or `None`.
    """

    kind: str
    config_key: str | None = None
    out_weights: dict = dataclasses.field(default_factory=dict)
    in_weights: dict = dataclasses.field(default_factory=dict)
    check: object = None
    foldable: object = None
    resize: object = None
    barrier: object = None
    variant: object = None


_RULES: dict[type, ChannelRule] = {}


def register_channel_rule(layer_class, rule):
    """Registers how a layer class (and its subclasses) passes channels, for `kc.shrink`.

    Args:
        layer_class: a `keras.layers.Layer` subclass, or a `keras.Operation`
            subclass for a Keras op used in a functional model.
        rule: a `ChannelRule`.

    Raises:
        TypeError: if the arguments have the wrong types.

    Example:

    ```python
    kc.register_channel_rule(MyScale, kc.ChannelRule("channelwise", out_weights={"w": 0}))
    ```
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.Operation)):
        raise TypeError(
            "Expected a keras.layers.Layer (or keras.Operation) subclass. "
            f"Received: {layer_class!r}"
        )
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
            rule = _RULES[cls]
            other = rule.variant(layer) if rule.variant is not None else None
            return other or rule
    return None


def constant_operand_reason(arguments):
    """Why a Keras op's constant operands stop channels, or `None`.

    A scalar constant (`x + 3.0`) or one that broadcasts over the channel
    axis is fine; a per-channel constant cannot be sliced, because the
    model copy replays the op with the same arguments.
    """
    for arg in arguments._flat_arguments:
        if isinstance(arg, keras.KerasTensor) or isinstance(arg, (str, bool)) or arg is None:
            continue
        shape = np.shape(arg)
        if shape and shape[-1] != 1:
            return f"a constant operand of shape {shape} with one value per channel"
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


def _normalizes_channels(layer):
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = getattr(layer.input_spec, "ndim", None) or len(layer.input.shape)
    if any(a % rank == rank - 1 for a in axes):
        return (
            f"normalizes over the channels (axis={layer.axis}): removing one would change "
            "the mean and variance of the others"
        )
    return None


def _group_norm_barrier(layer):
    return (
        f"normalizes the channels in {layer.groups} groups: removing one would change "
        "the mean and variance of its group"
    )


def _unit_norm_barrier(layer):
    return _normalizes_channels(layer) and "divides by the norm over the channels"


def _normalization_barrier(layer):
    return "its per-channel statistics are kept as they are"


def _rescaling_barrier(layer):
    if np.ndim(layer.scale) or np.ndim(layer.offset):
        return "per-channel scale or offset in its config"
    return None


def _grouped_depthwise(layer):
    """A convolution with `groups == filters == input channels` is a depthwise one."""
    groups = getattr(layer, "groups", 1)
    if groups > 1 and groups == layer.filters and layer.built and layer.kernel.shape[-2] == 1:
        return _GROUPED_DEPTHWISE
    return None


_GROUPED_DEPTHWISE = ChannelRule(
    "channelwise",
    out_weights={"kernel": -1, "bias": 0},
    check=_channels_last,
    resize=lambda layer, channels: {"filters": channels, "groups": channels},
)
_PRODUCER_OUT = {"kernel": -1, "bias": 0}
register_channel_rule(
    keras.layers.Dense,
    ChannelRule("producer", "units", _PRODUCER_OUT, {"kernel": (0, 1)}, foldable=_dense_foldable),
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
            variant=_grouped_depthwise,
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
register_channel_rule(
    LayerScale,
    ChannelRule(
        "channelwise",
        out_weights={"gamma": 0},
        resize=lambda layer, channels: {"projection_dim": channels},
    ),
)
for _cls, _barrier in (
    (keras.layers.LayerNormalization, _normalizes_channels),
    (keras.layers.GroupNormalization, _group_norm_barrier),
    (keras.layers.UnitNormalization, _unit_norm_barrier),
    (keras.layers.Normalization, _normalization_barrier),
    (keras.layers.Rescaling, _rescaling_barrier),
):
    register_channel_rule(_cls, ChannelRule("channelwise", barrier=_barrier))
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
    CustomScaleLayer,  # InceptionResNetV2: inputs[0] + inputs[1] * scale
):
    register_channel_rule(_cls, ChannelRule("merge"))
register_channel_rule(keras.layers.Concatenate, ChannelRule("concat"))
register_channel_rule(keras.layers.Flatten, ChannelRule("flatten", check=_channels_last))
register_channel_rule(keras.layers.Reshape, ChannelRule("reshape"))

# Element-wise Keras ops: their tensor operands are merged channel by channel, their
# scalar operands (`x + 3.0`) broadcast.
ELEMENTWISE_BINARY_OPS = {
    numpy_ops.Add: np.add,
    numpy_ops.Subtract: np.subtract,
    numpy_ops.Multiply: np.multiply,
    numpy_ops.Divide: np.true_divide,
    numpy_ops.TrueDivide: np.true_divide,
    numpy_ops.Maximum: np.maximum,
    numpy_ops.Minimum: np.minimum,
}
for _cls in ELEMENTWISE_BINARY_OPS:
    register_channel_rule(_cls, ChannelRule("merge"))
for _cls in (
    nn_ops.Relu,
    nn_ops.Relu6,
    nn_ops.Sigmoid,
    nn_ops.HardSigmoid,
    nn_ops.Silu,
    nn_ops.HardSilu,
    nn_ops.Gelu,
    nn_ops.Elu,
    nn_ops.Selu,
    nn_ops.LeakyRelu,
    nn_ops.Softplus,
    nn_ops.Softsign,
    nn_ops.HardTanh,
    nn_ops.Celu,
    numpy_ops.Tanh,
    numpy_ops.Abs,
    numpy_ops.Absolute,
    numpy_ops.Negative,
    numpy_ops.Square,
    numpy_ops.Sqrt,
    numpy_ops.Exp,
    numpy_ops.Clip,
):
    register_channel_rule(_cls, ChannelRule("channelwise"))
