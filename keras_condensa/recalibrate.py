"""`recalibrate_batchnorm`: BatchNorm moving statistics re-estimated for a compressed model.

Pruning, quantizing or fine-tuning for a few epochs changes what each
BatchNormalization layer sees, while its moving mean and variance still
describe the dense model (or lag the fine-tuning at momentum 0.99). The
compressed model then scores below what its weights can do in inference
mode. Re-estimating the statistics on training inputs fixes it and trains
no weight ("adaptive BatchNorm", EagleEye, Li et al. 2020).
"""

import keras
import numpy as np


def _batchnorms(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def recalibrate_batchnorm(model, x, batch_size=32, max_samples=2048):
    """Sets every trainable BatchNorm's moving statistics to their average over `x`.

    Runs the model in training mode over (up to `max_samples` of) `x` in
    batches; before the k-th batch each BatchNormalization's momentum is
    `k / (k + 1)`, so the moving mean and variance end as the plain average
    of the batches' statistics, whatever the layer's own momentum. Frozen
    BatchNorms (`trainable=False`) keep theirs, and no weight is trained. The
    model is modified in place (call it on a copy: `kc.strip` returns one).

    Args:
        model: a Keras model (plain or wrapped).
        x: training inputs (an array, or a list or dict of arrays for a
            model with several inputs).
        batch_size: samples per forward pass.
        max_samples: the most samples used (the first ones).

    Returns:
        The number of BatchNormalization layers recalibrated.

    Example:

    ```python
    small = kc.strip(pruned, shrink=True)
    kc.recalibrate_batchnorm(small, x_train)
    ```
    """
    layers = _batchnorms(model)
    if not layers:
        return 0
    n = min(len(keras.tree.flatten(x)[0]), int(max_samples))
    momenta = [layer.momentum for layer in layers]
    try:
        for k, start in enumerate(range(0, n, batch_size)):
            for layer in layers:
                layer.momentum = k / (k + 1.0)
            end = start + batch_size
            model(
                keras.tree.map_structure(lambda a, s=start, e=end: np.asarray(a[s:e]), x),
                training=True,
            )
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)
