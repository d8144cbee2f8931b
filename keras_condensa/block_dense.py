"""`BlockDense`: a block-diagonal Dense layer, `blocks` small matrix products in one einsum.

What `kc.shrink` turns a `kc.BlockDiagonalPrune`d Dense (or 1x1 convolution)
into. Its input is read in block order (block 0's inputs, then block 1's, ...),
its output is written in block order; the permutations that take the model's
order to block order are folded into the neighbouring layers' weights by
`keras_condensa.shrink_blocks`, or, where they cannot be, gathered here
(`input_index`, `output_index`, with `keras.ops.take`).

The block product is `einsum("nki,kio->nko")` on the input reshaped to
`(-1, blocks, block_inputs)`. In LiteRT (XNNPACK, float32, one thread) it
becomes a BATCH_MATMUL; measured for two 1024x1024 layers with 8 blocks, it
ran as fast as a transposed batched `matmul` and slightly faster than a
grouped 1x1 `Conv2D`, 26x faster than the dense layers (see
`benchmarks/blocks.py`).
"""

import keras
import numpy as np
from keras import ops


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
    return int(value)


def _check_index(name, value, size, limit=None):
    if value is None:
        return None
    index = np.asarray(value)
    if index.ndim != 1 or index.dtype.kind not in "iu" or (size and len(index) != size):
        raise ValueError(
            f"{name} must be a list of {size or 'some'} ints (positions to gather). "
            f"Received: {name} of shape {index.shape} and dtype {index.dtype}"
        )
    if len(index) and (index.min() < 0 or (limit is not None and index.max() >= limit)):
        raise ValueError(
            f"{name} holds positions outside [0, {limit}). Received: min {index.min()}, "
            f"max {index.max()}"
        )
    return index.astype("int32")


@keras.saving.register_keras_serializable(package="keras_condensa")
class BlockDense(keras.layers.Layer):
    """A Dense layer whose kernel is `blocks` independent `(block_inputs, block_units)` blocks.

    Computes, on the last axis of its input,
    `y = activation(take(einsum(x_blocks, kernel) + bias, output_index))` where
    `x_blocks` is `take(x, input_index)` (or `x` itself) reshaped to
    `(..., blocks, block_inputs)`. Parameters: `blocks * block_inputs *
    block_units` kernel weights (`1 / blocks` of the equivalent Dense) and
    `blocks * block_units` biases.

    Args:
        blocks: number of blocks.
        block_inputs: inputs per block.
        block_units: outputs per block.
        input_index: optional positions of the input to gather into block
            order (length `blocks * block_inputs`); `None`: the input is in
            block order already.
        output_index: optional positions of the block-order output to
            return (the layer's outputs in the model's order); `None`: the
            output is `blocks * block_units` values in block order.
        activation: as in `keras.layers.Dense` (applied after the gather).
        use_bias: whether to add a bias.
        kernel_initializer, bias_initializer: as in `keras.layers.Dense`.
        **kwargs: base `Layer` arguments.

    Example:

    ```python
    layer = kc.BlockDense(blocks=8, block_inputs=128, block_units=128, activation="relu")
    y = layer(keras.ops.ones((2, 1024)))   # (2, 1024)
    ```
    """

    def __init__(
        self,
        blocks,
        block_inputs,
        block_units,
        input_index=None,
        output_index=None,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.blocks = _check_count("blocks", blocks)
        self.block_inputs = _check_count("block_inputs", block_inputs)
        self.block_units = _check_count("block_units", block_units)
        width_in = self.blocks * self.block_inputs
        width_out = self.blocks * self.block_units
        self.input_index = _check_index("input_index", input_index, width_in)
        self.output_index = _check_index("output_index", output_index, None, width_out)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    @property
    def units(self):
        """The number of outputs."""
        if self.output_index is not None:
            return len(self.output_index)
        return self.blocks * self.block_units

    def build(self, input_shape):
        width = input_shape[-1]
        needed = self.blocks * self.block_inputs
        if self.input_index is None and width is not None and width != needed:
            raise ValueError(
                f"BlockDense '{self.name}' takes {needed} inputs in block order "
                f"({self.blocks} blocks x {self.block_inputs}). Received: input width {width}. "
                "Give input_index to gather them."
            )
        if self.input_index is not None and width is not None and self.input_index.max() >= width:
            raise ValueError(
                f"BlockDense '{self.name}': input_index reaches position "
                f"{self.input_index.max()} but the input has {width} values."
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.blocks, self.block_inputs, self.block_units),
            initializer=self.kernel_initializer,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.blocks * self.block_units,),
                initializer=self.bias_initializer,
            )

    def call(self, inputs):
        x = inputs
        if self.input_index is not None:
            x = ops.take(x, self.input_index, axis=-1)
        lead = ops.shape(x)[:-1]
        # Leading axes merged: one 3-D BATCH_MATMUL in LiteRT (no transposes at batch 1).
        x = ops.reshape(x, (-1, self.blocks, self.block_inputs))
        y = ops.einsum("nki,kio->nko", x, self.kernel)
        y = ops.reshape(y, (*lead, self.blocks * self.block_units))
        if self.bias is not None:
            y = y + self.bias
        if self.output_index is not None:
            y = ops.take(y, self.output_index, axis=-1)
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            blocks=self.blocks,
            block_inputs=self.block_inputs,
            block_units=self.block_units,
            input_index=None if self.input_index is None else self.input_index.tolist(),
            output_index=None if self.output_index is None else self.output_index.tolist(),
            activation=keras.activations.serialize(self.activation),
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config
