"""`flops`: the floating-point operations one sample costs a model's kernel layers.

A search that removes channels (`kc.shrink`) or runs blocks (`kc.BlockDiagonalPrune`)
saves arithmetic; `flops` counts it, as the tuner's `flops` metric.
"""

import math

import keras

_KERNELS = ("kernel", "depthwise_kernel")
# A separable convolution's second kernel, applied at each output position after the first.
_POINTWISE = "pointwise_kernel"
_TRANSPOSED = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)


def _output_shape(layer):
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # Never called, or called more than once.
        return None
    return tuple(shape) if all(d is not None for d in shape[1:]) else None


def _outputs_per_application(layer, kernel_shape, output_shape):
    """How many output values one application of the kernel writes (its output features).

    A convolution's filters, an `EinsumDense`'s kernel dimensions that its
    output keeps (heads and features), a depthwise convolution's channels
    times its multiplier; otherwise the output's last dimension (a Dense's or
    a block layer's units).
    """
    if isinstance(layer, keras.layers.EinsumDense):
        operands, output = layer.equation.split("->")
        labels = operands.split(",")[1]
        return math.prod(d for d, a in zip(kernel_shape, labels, strict=True) if a in output)
    if isinstance(getattr(layer, "filters", None), int):
        return layer.filters
    if getattr(layer, "depthwise_kernel", None) is not None:
        return kernel_shape[-2] * kernel_shape[-1]
    return output_shape[-1]


def _kernel(layer):
    for name in _KERNELS:
        kernel = getattr(layer, name, None)
        if isinstance(kernel, keras.Variable):
            return kernel
    return None


def layer_flops(layer, positions=1):
    """`2 x` the multiply-accumulates of one sample through `layer`'s kernel (0 without one).

    Each output value costs the kernel's size divided by the values one kernel
    application writes (a separable convolution's two kernels both run at each
    output position; a transposed convolution's whole kernel at each input
    position). A layer whose output shape is unknown (called inside
    another layer, or shared) applies its kernel at `positions` places.
    """
    kernel = _kernel(layer)
    if kernel is None:
        return 0
    kernel_shape = tuple(kernel.shape)
    size = math.prod(kernel_shape)
    pointwise = getattr(layer, _POINTWISE, None)
    if isinstance(pointwise, keras.Variable):
        size += math.prod(pointwise.shape)
    if isinstance(layer, _TRANSPOSED):  # The whole kernel at each input position.
        try:
            return 2 * size * math.prod(layer.input.shape[1:-1])
        except (AttributeError, ValueError, TypeError):  # Never called, or shared.
            return 2 * size * positions
    output_shape = _output_shape(layer)
    if output_shape is None:
        return 2 * size * positions
    per_application = _outputs_per_application(layer, kernel_shape, output_shape)
    return 2 * size * math.prod(output_shape[1:]) // per_application


def _walk(layer, positions):
    shape = _output_shape(layer)
    if shape is not None and len(shape) > 2:
        positions = math.prod(shape[1:-1])
    total = layer_flops(layer, positions)
    for child in layer._flatten_layers(include_self=False, recursive=False):
        total += _walk(child, positions)
    return total


def flops(model):
    """Floating-point operations per sample of `model`'s kernel layers (2 x multiply-adds).

    Dense, EinsumDense, convolutions (grouped, depthwise and separable too) and block
    layers count every weight they hold: zeros a mask keeps are still
    computed. `kc.strip(model, shrink=True)` removes pruned channels, and the
    count drops with them. Nested layers are counted; activations, norms and
    pooling are not. A layer called inside another (the projections of a
    `MultiHeadAttention`) is applied at each position of the nearest enclosing
    layer's output (each token of a sequence). A length the model leaves
    unknown (the token ids of a KerasHub backbone) counts as one position:
    the count is then per token.

    Args:
        model: a Keras model (built).

    Returns:
        An int.

    Example:

    ```python
    small = kc.strip(pruned, shrink=True)
    kc.flops(small) / kc.flops(model)
    ```
    """
    return _walk(model, 1)
