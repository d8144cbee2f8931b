"""BatchNorm taps: how far a batch's statistics are from a BatchNorm layer's running ones.

Data-free compression (`kc.data_free`) optimizes inputs so that, at every
`BatchNormalization` layer, the batch mean and variance of the layer's input
match the layer's `moving_mean` and `moving_variance` (Haroush et al. 2020,
"The Knowledge Within"; Cai et al. 2020, ZeroQ). `tapped_copy` rebuilds a
Sequential or functional model (nested ones included) with every BatchNorm
wrapped in a `BatchNormTap`, which runs the BatchNorm in inference mode and
adds the divergence of its input's statistics as a layer loss (`add_loss`),
so any backend's `fit` sees it. The copy owns copies of the weights: the
user's model is never touched.
"""

import keras
from keras import ops

from keras_condensa import copying
from keras_condensa.graph_walk import is_graph_model, leaf_layers


def _channel_axes(bn, rank):
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    return sorted(a % rank for a in axes)


def batch_statistics(x, bn):
    """Mean and variance of `x` over all axes but `bn`'s channel axes.

    Args:
        x: a batch of inputs of the BatchNorm layer `bn`.
        bn: a `keras.layers.BatchNormalization` (its `axis` says which axes
            are channels).

    Returns:
        `(mean, variance)`, each shaped like `bn.moving_mean`, in float32.
    """
    x = ops.cast(x, "float32")
    rank = len(x.shape)
    channels = _channel_axes(bn, rank)
    reduce = [a for a in range(rank) if a not in channels]
    mean = ops.mean(x, axis=reduce)
    variance = ops.mean(ops.square(x - ops.mean(x, axis=reduce, keepdims=True)), axis=reduce)
    shape = bn.moving_mean.shape
    return ops.reshape(mean, shape), ops.reshape(variance, shape)


def gaussian_divergence(x, bn):
    """KL(N(batch mean, batch var) || N(moving mean, moving var)), averaged over channels.

    The per-channel Kullback-Leibler divergence between the Gaussian of the
    batch statistics of `x` and the Gaussian of `bn`'s running statistics
    (both variances plus `bn.epsilon`): zero when they match, invariant to
    the scale of each channel, so that layers of any magnitude weigh alike.

    Args:
        x: a batch of inputs of `bn`.
        bn: a built `keras.layers.BatchNormalization`.

    Returns:
        A float32 scalar tensor.
    """
    mean, variance = batch_statistics(x, bn)
    eps = float(bn.epsilon)
    batch_var = variance + eps
    running_var = ops.cast(bn.moving_variance, "float32") + eps
    running_mean = ops.cast(bn.moving_mean, "float32")
    kl = 0.5 * (
        ops.log(running_var / batch_var)
        + (batch_var + ops.square(mean - running_mean)) / running_var
        - 1.0
    )
    return ops.mean(kl)


class BatchNormTap(keras.layers.Layer):
    """Runs a BatchNorm in inference mode and adds its input's statistics divergence as a loss.

    Internal to `kc.data_free` (not serialized): `tapped_copy` puts one in
    place of each BatchNorm of a copied model.

    Args:
        bn: the (copied, built) `keras.layers.BatchNormalization` to run.
        **kwargs: base layer arguments (name, ...).
    """

    def __init__(self, bn, **kwargs):
        super().__init__(**kwargs)
        self.bn = bn
        self.built = True

    def call(self, inputs, training=None, mask=None):
        self.add_loss(gaussian_divergence(inputs, self.bn))
        return self.bn(inputs, training=False, mask=mask)

    def compute_output_shape(self, input_shape):
        return input_shape


def batchnorm_layers(model):
    """`(tappable, hidden)`: the BatchNorm layers of `model` a tap can reach, and the others.

    Tappable are the BatchNorms of a Sequential or functional model's graph,
    nested Sequential/functional models expanded; hidden are BatchNorms inside
    custom layers or subclassed models, whose inputs cannot be reached.
    """
    tappable = []
    if is_graph_model(model):
        tappable = [
            layer
            for layer in leaf_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
    seen = {id(layer) for layer in tappable}
    hidden = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and id(layer) not in seen
    ]
    return tappable, hidden


def tapped_copy(model):
    """A frozen copy of `model` whose BatchNorms are `BatchNormTap`s.

    Calling the copy returns the model's outputs (BatchNorms in inference
    mode) and leaves one divergence per BatchNorm in `copy.losses`.

    Args:
        model: a built Sequential or functional `keras.Model`.

    Returns:
        `(copy, taps)`: the copy (not trainable) and its `BatchNormTap` layers.
    """
    taps = []

    def clone_layer(layer):
        new, copy_weights = copying.plain_copy(layer)
        if isinstance(layer, keras.layers.BatchNormalization):
            new = BatchNormTap(new, name=f"{layer.name}_tap")
            taps.append(new)
        return new, copy_weights

    copy = copying.clone_with(model, clone_layer)
    copy.trainable = False
    return copy, taps
