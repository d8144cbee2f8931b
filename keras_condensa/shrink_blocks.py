"""Block layers for `kc.shrink`: block-diagonal kernels become `kc.BlockDense` layers.

A Dense (or 1x1 convolution) layer pruned with `kc.BlockDiagonalPrune` has a
kernel that is block-diagonal up to a permutation of its rows and of its
columns. The blocks are read back from the zeros (the connected components
of the kernel's nonzero pattern, so a stripped model, which no longer holds
the permutations, shrinks too), and the layer becomes a `kc.BlockDense`
that computes in block order.

The permutations are folded into the neighbours where a permutation of
channels changes nothing else: through element-wise layers (activations,
dropout) and per-channel layers (BatchNormalization, depthwise convolutions
with one filter per channel, their weights permuted) with no other consumer,
the producer before a block layer (a Dense or convolution) emits its outputs
in the block layer's input order, and the consumer after it (a Dense or
convolution) reads its inputs in the block layer's output order (its kernel
rows permuted); padding, cropping and pooling layers pass the order through.
Uneven blocks are padded to the largest block: a padded channel has zero
weights wherever it is read.
Between two block layers, and at the model's input or output or before a
layer that cannot be permuted, the block layer gathers with `keras.ops.take`.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_condensa import copying, graph_walk
from keras_condensa.block_dense import BlockDense

# Layers without weights that act on each channel alone: a permutation of channels commutes.
_TRANSPARENT = (
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Dropout,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.Identity,
)
# Layers that move or pool positions, each channel alone (when channels are last).
_SPATIAL = tuple(
    getattr(keras.layers, f"{kind}{d}D")
    for kind in (
        "ZeroPadding", "Cropping", "UpSampling", "MaxPooling", "AveragePooling",
        "GlobalAveragePooling", "GlobalMaxPooling",
    )
    for d in (1, 2, 3)
)  # fmt: skip
_ELEMENTWISE = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish",
    "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "tanh", "softplus", "softsign",
    "mish", "exponential", "celu",
}  # fmt: skip
# A block layer pays when its padded blocks hold at most this fraction of the dense kernel.
_MAX_FRACTION = 0.5


@dataclasses.dataclass
class Blocks:
    """The blocks of a kernel: per block, its rows (inputs) and columns (outputs).

    Attributes:
        rows: per block, the original input indices.
        cols: per block, the original output indices.
    """

    rows: list
    cols: list

    @property
    def shape(self):
        """`(blocks, block_inputs, block_units)`: the padded blocks."""
        return len(self.rows), max(map(len, self.rows)), max(map(len, self.cols))

    def order(self, which):
        """Block order of the inputs or outputs: original index per position, -1 for padding."""
        groups = self.rows if which == "rows" else self.cols
        width = max(map(len, groups))
        out = np.full((len(groups), width), -1, "int64")
        for i, g in enumerate(groups):
            out[i, : len(g)] = g
        return out.ravel()

    def positions(self):
        """Per original output, its position in block order."""
        order = self.order("cols")
        pos = np.empty(int(order.max()) + 1, "int64")
        real = order >= 0
        pos[order[real]] = np.flatnonzero(real)
        return pos

    def kernel(self, kernel2d):
        """The `(blocks, block_inputs, block_units)` kernel, zero where padded."""
        k, a, b = self.shape
        out = np.zeros((k, a, b), kernel2d.dtype)
        for i, (r, c) in enumerate(zip(self.rows, self.cols, strict=True)):
            out[i, : len(r), : len(c)] = kernel2d[np.ix_(r, c)]
        return out


def find_blocks(kernel2d):
    """The blocks of a 2-D kernel from its zeros, or `None` when it has fewer than two.

    Blocks are the connected components of the nonzero pattern (rows and
    columns linked by a nonzero weight). An all-zero row or column joins the
    block with the fewest of them. `None` also when the padded blocks would
    hold more than half of the dense kernel.

    Example:

    >>> w = np.array([[1, 0, 2, 0], [0, 3, 0, 4], [5, 0, 6, 0], [0, 7, 0, 8]])
    >>> b = find_blocks(w)
    >>> [r.tolist() for r in b.rows], [c.tolist() for c in b.cols]
    ([[0, 2], [1, 3]], [[0, 2], [1, 3]])
    """
    nonzero = np.asarray(kernel2d) != 0
    n, m = nonzero.shape
    if np.count_nonzero(nonzero) > _MAX_FRACTION * n * m:
        return None  # the padded blocks hold every nonzero: they could not be small enough
    rows = np.arange(n, dtype="int32")
    while True:  # labels spread to the smallest row index of each component
        cols = np.where(nonzero, rows[:, None], n).min(axis=0)
        new = np.minimum(rows, np.where(nonzero, cols[None, :], n).min(axis=1))
        if np.array_equal(new, rows):
            break
        rows = new
    live_rows = nonzero.any(axis=1)
    labels = np.unique(rows[live_rows])
    if len(labels) < 2:
        return None
    row_groups = [list(np.flatnonzero(live_rows & (rows == lab))) for lab in labels]
    col_groups = [list(np.flatnonzero(cols == lab)) for lab in labels]
    for groups, dead in ((row_groups, ~live_rows), (col_groups, cols == n)):
        for index in np.flatnonzero(dead):
            min(groups, key=len).append(index)
    blocks = Blocks([np.array(g) for g in row_groups], [np.array(g) for g in col_groups])
    k, a, b = blocks.shape
    return blocks if k * a * b <= _MAX_FRACTION * n * m else None


def _matrix_layer(layer):
    """Whether `layer` is a Dense or an ungrouped channels-last convolution."""
    if isinstance(layer, keras.layers.Dense):
        return True
    conv = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    transposed = (
        keras.layers.Conv1DTranspose,
        keras.layers.Conv2DTranspose,
        keras.layers.Conv3DTranspose,
    )
    return (
        isinstance(layer, conv)
        and not isinstance(layer, transposed)
        and layer.groups == 1
        and layer.data_format == "channels_last"
    )


def _pointwise(layer):
    if isinstance(layer, keras.layers.Dense):
        return True
    return (
        _matrix_layer(layer)
        and isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D))
        and all(k == 1 for k in layer.kernel_size)
        and all(s == 1 for s in layer.strides)
    )


def _activation_name(layer):
    name = keras.activations.serialize(layer.activation)
    return name if isinstance(name, str) else None


def _transparent(layer):
    if isinstance(layer, keras.layers.Activation):
        return _activation_name(layer) in _ELEMENTWISE
    if isinstance(layer, _SPATIAL):
        return getattr(layer, "data_format", "channels_last") == "channels_last"
    return isinstance(layer, _TRANSPARENT)


def _per_channel(layer):
    """Whether `layer` weighs each channel (last axis) on its own: its weights can be permuted."""
    inputs = graph_walk.input_tensors(layer)
    if len(inputs) != 1:
        return False
    rank = len(inputs[0].shape)
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.axis % rank == rank - 1
    depthwise = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    return (
        isinstance(layer, depthwise)
        and layer.depth_multiplier == 1
        and layer.data_format == "channels_last"
        and _activation_name(layer) in _ELEMENTWISE
    )


def _graph_outputs(model):
    ids = {id(t) for t in model.outputs}
    for layer in model.layers:
        if isinstance(layer, keras.Model) and graph_walk.is_graph_model(layer):
            ids |= _graph_outputs(layer)
    return ids


def _sole_use(layer, outputs):
    """Whether `layer` is called once and its output goes to one layer and no model output."""
    return (
        graph_walk.single_call(layer)
        and len(graph_walk.consumers(layer)) == 1
        and id(graph_walk.output_tensors(layer)[0]) not in outputs
    )


def _upstream(layer, outputs):
    """The Dense or convolution whose channels reach `layer` unmixed and nowhere else.

    Returns `(producer, per-channel layers in between)`, or `(None, [])`.
    """
    if not graph_walk.single_call(layer):
        return None, []
    producer, between = graph_walk.sole_producer(layer), []
    while producer is not None and (_transparent(producer) or _per_channel(producer)):
        if not _sole_use(producer, outputs):
            return None, []
        if _per_channel(producer):
            between.append(producer)
        producer = graph_walk.sole_producer(producer)
    if producer is None or not _matrix_layer(producer) or not _sole_use(producer, outputs):
        return None, []
    if _activation_name(producer) not in _ELEMENTWISE:
        return None, []
    return producer, between


def _kernel2d(layer):
    kernel = np.asarray(ops.convert_to_numpy(layer.kernel))
    return kernel.reshape(-1, kernel.shape[-1])


def _take_padded(array, order, axis):
    """`array` reordered along `axis` by `order`, zero where `order` is -1 (padding)."""
    out = np.take(array, np.maximum(order, 0), axis=axis)
    pad = np.moveaxis(out, axis, 0)
    pad[order < 0] = 0
    return out


def _block_layer(layer, blocks, input_index, output_index):
    k, a, b = blocks.shape
    config = layer.get_config()
    new = BlockDense(
        blocks=k,
        block_inputs=a,
        block_units=b,
        input_index=input_index,
        output_index=output_index,
        activation=config.get("activation"),
        use_bias=layer.use_bias,
        kernel_initializer="zeros",  # the weights are copied in; a random draw compiles on JAX
        name=layer.name,
        dtype=config.get("dtype"),
    )
    weights = {"kernel": blocks.kernel(_kernel2d(layer))}
    if layer.use_bias:
        bias = np.asarray(ops.convert_to_numpy(layer.bias))
        weights["bias"] = _take_padded(bias, blocks.order("cols"), 0)

    def copy_weights():
        new.set_weights([weights[w.name] for w in new.weights])

    return new, copy_weights


def _permuted_layer(layer, rows=None, cols=None):
    """A copy of a Dense or convolution reading its inputs in `rows` order, writing in `cols`."""
    weights = copying.named_weights(layer)
    config = layer.get_config()
    if rows is not None:
        weights["kernel"] = _take_padded(weights["kernel"], rows, -2)
    if cols is not None:
        weights["kernel"] = _take_padded(weights["kernel"], cols, -1)
        if "bias" in weights:
            weights["bias"] = _take_padded(weights["bias"], cols, 0)
        config["units" if isinstance(layer, keras.layers.Dense) else "filters"] = len(cols)
    new = layer.__class__.from_config(config)

    def copy_weights():
        new.set_weights([weights[w.name] for w in new.weights])

    return new, copy_weights


def _channel_layer(layer, order):
    """A copy of a per-channel layer for channels in `order` (-1: a padded channel)."""
    weights = copying.named_weights(layer)
    for name, value in weights.items():
        # A depthwise kernel is (..., channels, 1); the other weights are one per channel.
        weights[name] = _take_padded(value, order, -2 if value.ndim > 1 else 0)
    new = layer.__class__.from_config(layer.get_config())

    def copy_weights():
        new.set_weights([weights[w.name] for w in new.weights])

    return new, copy_weights


def block_layers(model):
    """Returns `model` with its block-diagonal Dense and 1x1 convolutions as `kc.BlockDense`.

    Called by `kc.shrink` on the model it has shrunk; see the module
    docstring. The result computes the same function, within float rounding.

    Args:
        model: a plain Sequential or functional model (stripped).

    Returns:
        `model` itself when no layer has block-diagonal kernels, else a new
        `keras.Model`.
    """
    found = {}
    for layer in graph_walk.leaf_layers(model):
        if _pointwise(layer) and layer.built:
            blocks = find_blocks(_kernel2d(layer))
            if blocks is not None:
                found[id(layer)] = blocks
    if not found:
        return model
    outputs = _graph_outputs(model)
    upstream, downstream, channels = {}, {}, {}  # channels: per-channel layers' order
    for layer in graph_walk.leaf_layers(model):
        producer, between = _upstream(layer, outputs) if _matrix_layer(layer) else (None, [])
        if producer is not None and (id(layer) in found or id(producer) in found):
            upstream[id(layer)] = producer
            downstream[id(producer)] = layer
            link = found[id(producer)] if id(producer) in found else None
            order = link.order("cols") if link else found[id(layer)].order("rows")
            channels.update((id(m), order) for m in between)
    reads, writes = {}, {}  # plain neighbours: input order, output order
    inputs, outputs_ = {}, {}  # block layers: input_index, output_index
    for layer in graph_walk.leaf_layers(model):
        blocks = found.get(id(layer))
        if blocks is None:
            continue
        producer = upstream.get(id(layer))
        order = blocks.order("rows")
        if producer is None:
            inputs[id(layer)] = np.maximum(order, 0)
        elif id(producer) in found:
            positions = found[id(producer)].positions()
            inputs[id(layer)] = np.where(order >= 0, positions[np.maximum(order, 0)], 0)
        else:
            writes[id(producer)] = order
        consumer = downstream.get(id(layer))
        if consumer is None:
            outputs_[id(layer)] = blocks.positions()
        elif id(consumer) not in found:
            reads[id(consumer)] = blocks.order("cols")

    def clone_layer(layer):
        if id(layer) in found:
            return _block_layer(
                layer, found[id(layer)], inputs.get(id(layer)), outputs_.get(id(layer))
            )
        if id(layer) in reads or id(layer) in writes:
            return _permuted_layer(layer, reads.get(id(layer)), writes.get(id(layer)))
        if id(layer) in channels:
            return _channel_layer(layer, channels[id(layer)])
        return copying.plain_copy(layer)

    return copying.clone_with(model, clone_layer)
