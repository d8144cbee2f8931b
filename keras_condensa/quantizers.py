"""Quantization maths: pure functions on `keras.ops`.

Weights are quantized symmetrically (zero is exactly representable, so pruned
zeros stay zero) with Keras's own `keras.quantizers.fake_quant_with_min_max_vars`,
which on the TensorFlow backend lowers to the `FakeQuantWithMinMaxVars` ops that
the TFLite converter turns into integer kernels. Activations are quantized
asymmetrically within ranges tracked during training.
"""

import keras
from keras import ops

DTYPES = ("float16", "int8", "int4")
# Activations whose int8 LiteRT kernels have a fixed output range: [min, max] of
# the fake-quant that gives the kernel's scale (1/256 or 1/128) and zero point.
FIXED_RANGES = {"sigmoid": (0.0, 255.0 / 256.0), "softmax": (0.0, 255.0 / 256.0),
                "tanh": (-1.0, 127.0 / 128.0)}
BITS = {"int8": 8, "int4": 4}
# A channel (or tensor) of zeros still needs a non-empty range.
_EPSILON = 1e-8


def check_dtype(dtype):
    """Raises unless `dtype` is a dtype `kc.Quantize` knows."""
    if dtype not in DTYPES:
        raise ValueError(f"Quantize dtype must be one of {DTYPES}. Received: dtype={dtype!r}")


def output_activation(layer):
    """The name of the activation that makes a layer's output (`"linear"` if none)."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    return getattr(activation, "__name__", type(activation).__name__)


def _straight_through(x, quantized):
    # Forward: the quantized value; backward: identity.
    return x + ops.stop_gradient(quantized - x)


def _nonzero_limit(limit):
    # A channel (or tensor) of zeros, pruned away or folded to nothing, gets the
    # range [-1, 1]: its zeros stay exact, and its bias, which the int8 file
    # stores in int32 units of input scale x weight scale, stays in int32
    # (a near-zero weight scale would saturate it and change the result).
    return ops.where(limit > _EPSILON, limit, ops.ones_like(limit))


def symmetric_max(weight, axes=()):
    """max |w| over all entries (per tensor) or per channel of `axes` (flattened)."""
    if not axes:
        return _nonzero_limit(ops.max(ops.abs(weight)))
    rank = len(weight.shape)
    axes = tuple(sorted(a % rank for a in axes))
    reduce = tuple(a for a in range(rank) if a not in axes)
    per_channel = ops.max(ops.abs(weight), axis=reduce)
    return _nonzero_limit(ops.reshape(per_channel, (-1,)))


def fake_quant_weight(weight, dtype, axes=()):
    """Fake-quantizes a weight as its deployed form would compute.

    Args:
        weight: the (masked) weight tensor.
        dtype: `"float16"`, `"int8"` or `"int4"`.
        axes: output-channel axes for per-channel scales (`()`: per tensor).
            Several axes (a depthwise kernel's input channel and multiplier)
            are flattened into one channel axis.

    Returns:
        A tensor of the weight's shape and dtype; gradients pass straight through.
    """
    if dtype == "float16":
        return _straight_through(weight, ops.cast(ops.cast(weight, "float16"), weight.dtype))
    bits = BITS[dtype]
    limit = ops.stop_gradient(symmetric_max(weight, axes))
    if not axes:
        return keras.quantizers.fake_quant_with_min_max_vars(
            weight, -limit, limit, num_bits=bits, narrow_range=True
        )
    rank = len(weight.shape)
    axes = tuple(sorted(a % rank for a in axes))
    if len(axes) == 1:
        return keras.quantizers.fake_quant_with_min_max_vars(
            weight, -limit, limit, num_bits=bits, narrow_range=True, axis=axes[0]
        )
    # Consecutive trailing channel axes (depthwise kernels): merge, quantize, split.
    shape = tuple(weight.shape)
    merged = ops.reshape(weight, shape[: axes[0]] + (-1,))
    out = keras.quantizers.fake_quant_with_min_max_vars(
        merged, -limit, limit, num_bits=bits, narrow_range=True, axis=-1
    )
    return ops.reshape(out, shape)


def track_range(current, x, initialized, decay):
    """Moving-average [min, max] of `x`, including 0; the first batch sets it.

    Args:
        current: the tracked `[min, max]` (shape `(2,)`).
        x: the activation tensor of this batch.
        initialized: 0 before the first batch, 1 after.
        decay: weight of the old range in the moving average.

    Returns:
        The new `[min, max]`.
    """
    batch = ops.stack([ops.minimum(ops.min(x), 0.0), ops.maximum(ops.max(x), 0.0)])
    batch = ops.cast(ops.stop_gradient(batch), current.dtype)
    averaged = decay * current + (1.0 - decay) * batch
    return ops.where(initialized > 0, averaged, batch)


def fake_quant_activation(x, value_range, num_bits=8):
    """Fake-quantizes an activation within `value_range` = `[min, max]` (asymmetric)."""
    low = ops.minimum(value_range[0], -_EPSILON)
    high = ops.maximum(value_range[1], _EPSILON)
    return keras.quantizers.fake_quant_with_min_max_vars(x, low, high, num_bits=num_bits)
