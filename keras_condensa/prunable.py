"""Which weights of a layer can be pruned, and along which axes.

The registry maps layer classes to a `PruneSpec` (matched with `isinstance`,
so subclasses of a supported layer are supported). A custom layer can either be
registered with `register_prunable` or implement `PrunableLayer`.
"""

import contextlib
import dataclasses
from collections.abc import Callable

import keras

# Layers whose weights are never pruned; `kc.summary` names them with this reason.
_NOT_PRUNED = (
    (keras.layers.BatchNormalization, "normalization statistics are not pruned"),
    (keras.layers.LayerNormalization, "normalization scales are not pruned"),
    (keras.layers.GroupNormalization, "normalization scales are not pruned"),
)


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    """What pruning may touch in one layer.

    Args:
        weights: attribute paths of the prunable weights, e.g. `("kernel",)` or
            `("cell.kernel", "cell.recurrent_kernel")`.
        kind: `"neuron"` or `"filter"`: what a structured scheme removes from
            this layer; `None` if structured pruning does not apply.
        channel_weight: the weight whose output channels are the structures.
        channel_axes: the axes of `channel_weight` that index output channels.
        reduction_axes: per weight, the input (reduction) axis along which N:M
            groups run; a weight missing here is not N:M-prunable.
        bias: attribute path of the bias that belongs to the output channels.
        prefix: for a layer nested in a custom layer, its attribute path there
            (every path above starts with it); `""` for a layer of the
            model's graph.
    """

    weights: tuple[str, ...]
    kind: str | None = None
    channel_weight: str | None = None
    channel_axes: tuple[int, ...] = ()
    reduction_axes: dict = dataclasses.field(default_factory=dict)
    bias: str | None = None
    prefix: str = ""


class PrunableLayer:
    """Mixin for custom layers that declare their own prunable weights.

    Example:

    ```python
    class Scale(keras.layers.Layer, kc.PrunableLayer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=input_shape[-1:])

        def call(self, x):
            return x * self.w

        def get_prunable_weights(self):
            return [self.w]
    ```
    """

    def get_prunable_weights(self):
        """Returns the list of variables that unstructured pruning may zero."""
        raise NotImplementedError


_REGISTRY: dict[type, Callable[[keras.layers.Layer], PruneSpec]] = {}


def register_prunable(layer_class, spec_fn):
    """Registers how to prune a layer class (and its subclasses).

    Args:
        layer_class: a `keras.layers.Layer` subclass.
        spec_fn: callable taking a built layer and returning a `PruneSpec`.
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(
            f"register_prunable expects a keras.layers.Layer subclass. Received: {layer_class!r}"
        )
    _REGISTRY[layer_class] = spec_fn


def attributes(obj):
    """`vars(obj)`, with the sublayers the PyTorch backend keeps apart.

    On the torch backend a Keras layer is a `torch.nn.Module`, whose
    `__setattr__` stores sublayers in `_modules`, not in the instance's
    dictionary: they are listed under their own attribute names here.
    """
    found = dict(vars(obj))
    modules = found.pop("_modules", None)
    if isinstance(modules, dict):
        found.update((name, value) for name, value in modules.items() if name not in found)
    return found


def resolve(layer, path):
    """Returns the object at attribute `path` of `layer`.

    A path is dotted attribute names (`"cell.kernel"`); a list or dict of
    sublayers is indexed by position or key (`"blocks.0.kernel"`).
    """
    obj = layer
    for name in path.split("."):
        if isinstance(obj, (list, tuple)) and name.isdigit():
            obj = obj[int(name)]
        elif isinstance(obj, dict) and name in obj:
            obj = obj[name]
        else:
            obj = getattr(obj, name)
    return obj


def prefixed(spec, prefix):
    """`spec` with every path under `prefix` (a sublayer's attribute path in its container)."""
    if not prefix:
        return spec

    def under(path):
        return f"{prefix}.{path}" if path else path

    return dataclasses.replace(
        spec,
        weights=tuple(under(w) for w in spec.weights),
        channel_weight=under(spec.channel_weight),
        reduction_axes={under(w): a for w, a in spec.reduction_axes.items()},
        bias=under(spec.bias),
        prefix=under(spec.prefix) if spec.prefix else prefix,
    )


def _has_weight(layer, path):
    try:
        return isinstance(resolve(layer, path), keras.Variable)
    except AttributeError:
        return False


def prune_spec(layer):
    """Returns the `PruneSpec` of a layer, or `None` if it cannot be pruned."""
    if isinstance(layer, PrunableLayer):
        weights = layer.get_prunable_weights()
        paths = tuple(_path_of(layer, w) for w in weights)
        return PruneSpec(weights=paths)
    for cls in type(layer).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls](layer)
    return None


def not_pruned_reason(layer):
    """Why a layer of a known kind is never pruned (normalization layers), else `None`."""
    for cls, reason in _NOT_PRUNED:
        if isinstance(layer, cls):
            return reason
    return None


def unsupported_reason(layer):
    """Says why a weighted layer is not prunable (for `kc.summary`)."""
    reason = not_pruned_reason(layer)
    if reason is not None:
        return reason
    return (
        f"no prunable weights are known for {type(layer).__name__}: register it with "
        "kc.register_prunable or implement kc.PrunableLayer"
    )


def _path_of(layer, variable):
    """Finds the attribute path of `variable` within `layer` and its sublayers."""
    for name, value in vars(layer).items():
        if value is variable:
            return name.lstrip("_") if _has_weight(layer, name.lstrip("_")) else name
    for name, value in attributes(layer).items():
        if isinstance(value, keras.layers.Layer):
            try:
                return f"{name}.{_path_of(value, variable)}"
            except ValueError:
                continue
    raise ValueError(
        f"Layer '{layer.name}' ({type(layer).__name__}) returned a prunable weight "
        f"'{variable.path}' that is not an attribute of the layer or of its sublayers. "
        "Store each prunable weight as an attribute (self.w = self.add_weight(...))."
    )


def storage_of(layer, path):
    """Returns `(owner, attribute)` holding the variable at `path`.

    Keras layers often expose a weight through a property (`Dense.kernel`
    returns `self._kernel`): the wrapper swaps the attribute that stores it.
    """
    owner_path, _, name = path.rpartition(".")
    owner = resolve(layer, owner_path) if owner_path else layer
    variable = getattr(owner, name)
    for attr, value in vars(owner).items():
        if value is variable:
            return owner, attr
    raise ValueError(
        f"Cannot find where layer '{layer.name}' stores its weight '{path}'; "
        "prunable weights must be plain attributes of the layer."
    )


@contextlib.contextmanager
def swapped(swaps):
    """Temporarily replaces `owner.attr` by `value` for each `(owner, attr, value)`."""
    saved = [(owner, attr, vars(owner)[attr]) for owner, attr, _ in swaps]
    try:
        for owner, attr, value in swaps:
            object.__setattr__(owner, attr, value)
        yield
    finally:
        for owner, attr, value in saved:
            object.__setattr__(owner, attr, value)


def _bias(layer, path="bias"):
    return path if _has_weight(layer, path) else None


def _dense(layer):
    return PruneSpec(
        weights=("kernel",),
        kind="neuron",
        channel_weight="kernel",
        channel_axes=(-1,),
        reduction_axes={"kernel": 0},
        bias=_bias(layer),
    )


def _einsum_dense(layer):
    inputs, kernel_spec_out = layer.equation.split(",")
    kernel_spec, output_spec = kernel_spec_out.split("->")
    rank = len(kernel_spec)
    out_axes = tuple(i - rank for i, c in enumerate(kernel_spec) if c in output_spec)
    red_axes = [i for i, c in enumerate(kernel_spec) if c not in output_spec and c in inputs]
    return PruneSpec(
        weights=("kernel",),
        kind="neuron" if out_axes else None,
        channel_weight="kernel",
        channel_axes=out_axes,
        reduction_axes={"kernel": red_axes[0]} if red_axes else {},
        bias=_bias(layer),
    )


def _conv(layer):
    return PruneSpec(
        weights=("kernel",),
        kind="filter",
        channel_weight="kernel",
        channel_axes=(-1,),
        reduction_axes={"kernel": -2},
        bias=_bias(layer),
    )


def _conv_transpose(layer):
    # Transposed kernels are (..., filters, input_channels).
    return PruneSpec(
        weights=("kernel",),
        kind="filter",
        channel_weight="kernel",
        channel_axes=(-2,),
        reduction_axes={"kernel": -1},
        bias=_bias(layer),
    )


def _depthwise(layer):
    # (..., input_channels, depth_multiplier): each output channel is one pair.
    return PruneSpec(
        weights=("kernel",),
        kind="filter",
        channel_weight="kernel",
        channel_axes=(-2, -1),
        bias=_bias(layer),
    )


def _separable(layer):
    return PruneSpec(
        weights=("depthwise_kernel", "pointwise_kernel"),
        kind="filter",
        channel_weight="pointwise_kernel",
        channel_axes=(-1,),
        reduction_axes={"pointwise_kernel": -2},
        bias=_bias(layer),
    )


def _embedding(layer):
    return PruneSpec(weights=("embeddings",))


def _rnn(layer):
    cell = layer.cell
    weights = tuple(f"cell.{w}" for w in ("kernel", "recurrent_kernel") if _has_weight(cell, w))
    return PruneSpec(weights=weights, reduction_axes={w: 0 for w in weights})


def _multi_head_attention(layer):
    names = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
    return PruneSpec(weights=tuple(f"{n}.kernel" for n in names))


for _cls, _fn in (
    (keras.layers.Dense, _dense),
    (keras.layers.EinsumDense, _einsum_dense),
    (keras.layers.Conv1D, _conv),
    (keras.layers.Conv2D, _conv),
    (keras.layers.Conv3D, _conv),
    (keras.layers.Conv1DTranspose, _conv_transpose),
    (keras.layers.Conv2DTranspose, _conv_transpose),
    (keras.layers.Conv3DTranspose, _conv_transpose),
    (keras.layers.DepthwiseConv1D, _depthwise),
    (keras.layers.DepthwiseConv2D, _depthwise),
    (keras.layers.SeparableConv1D, _separable),
    (keras.layers.SeparableConv2D, _separable),
    (keras.layers.Embedding, _embedding),
    (keras.layers.LSTM, _rnn),
    (keras.layers.GRU, _rnn),
    (keras.layers.SimpleRNN, _rnn),
    (keras.layers.MultiHeadAttention, _multi_head_attention),
):
    register_prunable(_cls, _fn)
