"""`kc.flops`: the arithmetic a model's kernel layers cost per sample."""

import keras
import numpy as np

import keras_condensa as kc


def _cnn():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = keras.layers.Conv2D(8, 1, groups=4, name="grouped")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    return keras.Model(inputs, outputs)


def test_counts_every_kernel_layer_kind():
    conv = 8 * 8 * 16 * (3 * 3 * 1)
    depthwise = 6 * 6 * 32 * (3 * 3)
    grouped = 6 * 6 * 8 * (32 // 4)
    head = 8 * 10
    assert kc.flops(_cnn()) == 2 * (conv + depthwise + grouped + head)


def test_layers_called_inside_a_layer_count_each_position():
    inputs = keras.Input((16, 32))
    outputs = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)(inputs, inputs)
    model = keras.Model(inputs, outputs)
    # Query, key, value and output projections, each 32 x 32 at each of 16 tokens.
    assert kc.flops(model) == 2 * 4 * 16 * 32 * 32


def test_shrinking_pruned_filters_lowers_the_count(digits):
    x = digits[0][:8].reshape(-1, 8, 8, 1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, name="conv"),
            keras.layers.Conv2D(16, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    scheme = kc.FilterPrune(density=0.5, include=["conv"])
    pruned = scheme.apply(model)
    masked = kc.strip(pruned)
    assert kc.flops(masked) == kc.flops(model)  # Zeros in a mask are still computed.
    small = kc.strip(pruned, shrink=True)
    assert kc.flops(small) < 0.8 * kc.flops(model)
    np.testing.assert_allclose(small.predict(x, verbose=0), masked.predict(x, verbose=0), atol=1e-4)


def test_separable_einsum_and_width_matching_layers_count_right():
    # Input channels equal to the width (16) once divided a layer's count by 16 more.
    inputs = keras.Input((16, 16, 16))
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
    x = keras.layers.SeparableConv2D(8, 3, padding="same", name="separable")(x)
    x = keras.layers.Reshape((16, 128))(x)
    x = keras.layers.Dense(16, name="dense")(x)
    outputs = keras.layers.EinsumDense("abc,cde->abde", (16, 2, 8), name="heads")(x)
    model = keras.Model(inputs, outputs)
    conv = 16 * 16 * 16 * (3 * 3 * 16)
    separable = 16 * 16 * (3 * 3 * 16 + 16 * 8)  # depthwise, then pointwise, per position
    dense = 16 * 128 * 16
    heads = 16 * 16 * 2 * 8
    assert kc.flops(model) == 2 * (conv + separable + dense + heads)


def test_a_transposed_convolution_applies_its_kernel_at_each_input_position():
    inputs = keras.Input((8, 8, 2))
    outputs = keras.layers.Conv2DTranspose(4, 3, strides=2, name="up")(inputs)
    assert kc.flops(keras.Model(inputs, outputs)) == 2 * (8 * 8) * (3 * 3 * 4 * 2)
