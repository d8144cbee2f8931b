"""Freeze and fold: BatchNormalization after a convolution, folded into its weights.

Integer quantization-aware training must see the weights the integer file
will hold. The TFLite converter folds a BatchNormalization that follows a
convolution into the convolution's kernel and bias before quantizing; a QAT
model whose convolution output is fake-quantized before the BatchNormalization
cannot be folded, and the file keeps a float `MUL`/`ADD` between two
quantize/dequantize pairs for every such layer. Folding first, from the moving
statistics ("freeze and fold", as QAT tools do), makes the fake-quantized
kernel the kernel of the file: the folded layer computes
`conv(x, W * s) + (b - mean) * s + beta` with `s = gamma / sqrt(var + eps)`,
and the BatchNormalization leaves the graph.
"""

import keras
import numpy as np

from keras_condensa import activation_ranges, copying, graph_walk

# Layers whose last kernel axis (flattened with the ones before it for
# depthwise kernels) is the output channel of a channels-last output.
_FOLDABLE = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _foldable_pair(producer, bn):
    """Whether `bn` (a BatchNormalization) can be folded into `producer`."""
    if not isinstance(producer, _FOLDABLE):
        return False
    if not _channels_last(producer) or not producer.built or not bn.built:
        return False
    if getattr(producer, "activation", None) not in (None, keras.activations.linear):
        return False
    if bn.axis % len(bn.input.shape) != len(bn.input.shape) - 1:
        return False
    return graph_walk.single_call(producer) and graph_walk.single_call(bn)


def find_pairs(model, select=None):
    """The (producer, BatchNormalization) pairs of `model` that can be folded.

    A pair qualifies when the BatchNormalization normalises the last (channel)
    axis of the output of a channels-last Dense, Conv or DepthwiseConv layer
    without activation, and that output feeds nothing else.

    Args:
        model: a Sequential or functional model (nested ones are searched).
        select: optional predicate on the producer layer (e.g. the Quantize
            operator's `selects`); `None` folds every qualifying pair.

    Returns:
        A list of `(producer, batchnorm)` layer pairs.
    """
    pairs = []
    for bn in graph_walk.leaf_layers(model):
        if not isinstance(bn, keras.layers.BatchNormalization):
            continue
        producer = graph_walk.sole_producer(bn)
        if producer is None or len(graph_walk.consumers(producer)) != 1:
            continue
        if _foldable_pair(producer, bn) and (select is None or select(producer)):
            pairs.append((producer, bn))
    return pairs


def folded_weights(producer, bn):
    """The producer's `(kernel, bias)` with `bn` folded in (NumPy arrays)."""
    kernel = keras.ops.convert_to_numpy(producer.kernel).astype("float64")
    depthwise = isinstance(producer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D))
    channel_shape = kernel.shape[-2:] if depthwise else kernel.shape[-1:]
    channels = int(np.prod(channel_shape))

    def numpy(variable, default):
        if variable is None:
            return np.full(channels, default)
        return keras.ops.convert_to_numpy(variable).astype("float64")

    bias = numpy(producer.bias if producer.use_bias else None, 0.0)
    gamma = numpy(bn.gamma if bn.scale else None, 1.0)
    beta = numpy(bn.beta if bn.center else None, 0.0)
    mean, var = numpy(bn.moving_mean, 0.0), numpy(bn.moving_variance, 1.0)
    scale = gamma / np.sqrt(var + bn.epsilon)
    kernel = kernel * scale.reshape(channel_shape)
    bias = (bias - mean) * scale + beta
    return kernel.astype(producer.kernel.dtype), bias.astype(producer.kernel.dtype)


def fold_batchnorms(model, select=None):
    """Returns a copy of `model` with each foldable BatchNormalization folded.

    The producer of each pair found by `find_pairs` gets a bias (if it had
    none) and the folded kernel and bias; the BatchNormalization is replaced
    by nothing (in a Sequential model, by `keras.layers.Identity` with the
    same name). The copy computes the same
    function at inference (up to float rounding); the folded statistics are
    frozen, as in freeze-and-fold quantization-aware training. The input
    model is not modified; without foldable pairs it is returned as is.

    Args:
        model: a built Sequential or functional model.
        select: optional predicate on the producer layer; see `find_pairs`.

    Returns:
        `(model, folded)`: the model and the names of the BatchNormalization
        layers folded.

    Example:

    ```python
    folded, names = kc.batchnorm_fold.fold_batchnorms(model)
    ```
    """
    pairs = find_pairs(model, select)
    if not pairs:
        return model, []
    producers = {id(p): bn for p, bn in pairs}
    removed = {id(bn) for _, bn in pairs}
    copies = []

    def clone_function(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer
        if id(layer) in removed:
            identity = keras.layers.Identity(name=layer.name)  # what a Sequential keeps
            replacements.add(id(identity))
            return identity
        config = layer.get_config()
        if id(layer) in producers:
            config["use_bias"] = True
        new = copying.copy_layer(layer, config)
        copying.prebuild(layer, new)
        copies.append((layer, new))
        return new

    replacements = set()

    def call_function(layer, *args, **kwargs):
        if id(layer) in replacements:
            return args[0]  # the folded BatchNormalization leaves the functional graph
        return layer(*args, **kwargs)

    functional = not isinstance(model, keras.Sequential)
    clone = copying.clone(model, clone_function, call_function if functional else None)
    for layer, new in copies:
        if id(layer) not in producers:
            new.set_weights(layer.get_weights())
            continue
        kernel, bias = folded_weights(layer, producers[id(layer)])
        values = [kernel if w is layer.kernel else w for w in layer.weights]
        if layer.use_bias:
            current = zip(layer.weights, values, strict=True)
            values = [bias if w is layer.bias else v for w, v in current]
        else:
            values.append(bias)
        new.set_weights([keras.ops.convert_to_numpy(v) for v in values])
    return copying.compile_copy(clone, model), [bn.name for _, bn in pairs]


def fold_for_scheme(scheme, model):
    """Folds BatchNormalization into the layers an integer QAT `Quantize` of `scheme` covers.

    The pre-pass of `scheme.apply`: a scheme without an int8/int4
    quantization-aware `Quantize` (with activations) leaves the model as is,
    and so does a subclassed model.

    Args:
        scheme: an operator or `kc.Compose`.
        model: the model the scheme is applied to.

    Returns:
        The model to wrap (`model` itself, or a folded copy).
    """
    ops = activation_ranges.integer_quantizers(scheme)
    if not ops or not graph_walk.is_graph_model(model):
        return model
    folded, _ = fold_batchnorms(
        model, select=lambda layer: any(op.selects(layer) for op in ops.values())
    )
    return folded
