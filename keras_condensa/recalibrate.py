"""`recalibrate_batchnorm`: BatchNorm moving statistics re-estimated for a compressed model.

Pruning, quantizing or fine-tuning for a few epochs changes what each
BatchNormalization layer sees, while its moving mean and variance still
describe the dense model (or lag the fine-tuning at momentum 0.99). The
compressed model then scores below what its weights can do in inference
mode. Re-estimating the statistics on training inputs fixes it and trains
no weight ("adaptive BatchNorm", EagleEye, Li et al. 2020).
"""

import numbers

import keras
import numpy as np


def _batchnorms(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def _check(x, batch_size, max_samples):
    for name, value in (("batch_size", batch_size), ("max_samples", max_samples)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
    lengths = {len(a) for a in keras.tree.flatten(x)}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(
            "x must hold at least one sample, as many in every input. "
            f"Received inputs of lengths {sorted(lengths)}."
        )
    return lengths.pop()


def recalibrate_batchnorm(model, x, batch_size=32, max_samples=2048):
    """Sets every trainable BatchNorm's moving statistics to their average over `x`.

    Runs the model in training mode over `x` (at most `max_samples` of it,
    evenly spaced) in batches; each BatchNormalization's momentum is set
    before each batch so that its moving mean and variance end as the average
    of the batches' statistics weighted by their sizes, whatever the layer's
    own momentum. Only those statistics change: no weight is trained, frozen
    BatchNorms (`trainable=False`) keep theirs, and every other non-trainable
    variable (quantization ranges a QAT wrapper tracks, seed states) is
    restored. The model is modified in place (call it on a copy: `kc.strip`
    returns one).

    Args:
        model: a Keras model (plain or wrapped).
        x: training inputs from the data the model will see (an array, or a
            list or dict of arrays for a model with several inputs).
        batch_size: samples per forward pass, a positive int.
        max_samples: the most samples used, a positive int.

    Returns:
        The number of BatchNormalization layers recalibrated.

    Raises:
        ValueError: a bad `batch_size` or `max_samples`, or an empty `x`.

    Example:

    ```python
    small = kc.strip(pruned, shrink=True)
    kc.recalibrate_batchnorm(small, x_train)
    ```
    """
    n = _check(x, batch_size, max_samples)
    layers = _batchnorms(model)
    if not layers:
        return 0
    index = np.unique(np.linspace(0, n - 1, min(n, int(max_samples))).astype("int64"))
    statistics = {id(v) for layer in layers for v in (layer.moving_mean, layer.moving_variance)}
    kept = [(v, keras.ops.copy(v.value)) for v in model.non_trainable_variables]
    kept = [(v, value) for v, value in kept if id(v) not in statistics]
    momenta = [layer.momentum for layer in layers]
    x = keras.tree.map_structure(np.asarray, x)
    try:
        seen = 0
        for start in range(0, len(index), batch_size):
            rows = index[start : start + batch_size]
            for layer in layers:
                layer.momentum = seen / (seen + len(rows))
            model(keras.tree.map_structure(lambda a, r=rows: a[r], x), training=True)
            seen += len(rows)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for variable, value in kept:
            variable.assign(value)
    return len(layers)
