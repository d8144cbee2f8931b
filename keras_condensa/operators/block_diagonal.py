"""`BlockDiagonalPrune`: permuted block-diagonal masks (MPDCompress).

After Supic et al., "MPDCompress - Matrix Permutation Decomposition Algorithm
for Deep Neural Network Compression" (2018): the mask of a weight matrix is
block-diagonal once its rows (inputs) and columns (outputs) are put through
fixed random permutations. Each output then reads `1 / blocks` of the inputs,
and the layer computes as `blocks` independent small matrix products, which
`kc.shrink` turns into a `kc.BlockDense` layer (see
`keras_condensa.shrink_blocks`).
"""

import zlib

import keras
import numpy as np

from keras_condensa.operators.mask import MaskOperator


def check_blocks(blocks):
    """Raises unless `blocks` is an int >= 2; returns it."""
    if isinstance(blocks, (bool, np.bool_)) or not isinstance(blocks, (int, np.integer)):
        raise ValueError(f"blocks must be an int >= 2. Received: blocks={blocks!r}")
    if blocks < 2:
        raise ValueError(
            f"blocks must be an int >= 2 (1 block keeps every weight). Received: blocks={blocks!r}"
        )
    return int(blocks)


def block_of_positions(size, blocks):
    """The block of each position 0..size-1: `blocks` runs whose sizes differ by at most one.

    Example:

    >>> block_of_positions(5, 2).tolist()
    [0, 0, 0, 1, 1]
    """
    sizes = [len(part) for part in np.array_split(np.arange(size), blocks)]
    return np.repeat(np.arange(blocks), sizes)


def block_ids(permutation, blocks):
    """The block of each original index, given the permutation (`perm[position] = index`).

    Example:

    >>> block_ids(np.array([2, 0, 3, 1]), 2).tolist()
    [0, 1, 0, 1]
    """
    ids = np.empty(len(permutation), "int64")
    ids[np.asarray(permutation)] = block_of_positions(len(permutation), blocks)
    return ids


def block_diagonal_mask(row_permutation, col_permutation, blocks):
    """The 0/1 `(rows, cols)` mask: 1 where a row and a column fall in the same block.

    Example:

    >>> block_diagonal_mask(np.arange(4), np.array([1, 0, 2, 3]), 2).tolist()
    [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    """
    rows = block_ids(row_permutation, blocks)
    cols = block_ids(col_permutation, blocks)
    return (rows[:, None] == cols[None, :]).astype("float32")


def _not_pointwise_reason(layer):
    """Why `layer` is not a Dense or a 1x1, stride-1, ungrouped Conv1D/Conv2D, or `None`."""
    if isinstance(layer, keras.layers.Dense):
        return None
    conv = (keras.layers.Conv1D, keras.layers.Conv2D)
    transposed = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose)
    if not isinstance(layer, conv) or isinstance(layer, transposed):
        return (
            f"{type(layer).__name__} is not a Dense or 1x1 convolution, the layers whose "
            "kernel is one (inputs x outputs) matrix that kc.BlockDense runs"
        )
    if any(k != 1 for k in layer.kernel_size):
        return (
            f"kernel_size={tuple(layer.kernel_size)}: not a Dense or 1x1 convolution, the "
            "layers whose kernel is one (inputs x outputs) matrix"
        )
    if any(s != 1 for s in layer.strides):
        return f"a 1x1 convolution with strides={tuple(layer.strides)}: kc.BlockDense has no stride"
    if layer.groups != 1:
        return f"a grouped convolution (groups={layer.groups}): its kernel is blocks already"
    return None


@keras.saving.register_keras_serializable(package="keras_condensa")
class BlockDiagonalPrune(MaskOperator):
    """Permuted block-diagonal masks (MPDCompress): `blocks` independent sub-matrices per layer.

    The kernel of each covered Dense (or 1x1 Conv1D/Conv2D) layer, viewed as
    `(inputs, outputs)`, keeps the weights whose input and output fall in
    the same block after fixed random permutations of the inputs and of the
    outputs: a block-diagonal matrix with its rows and columns shuffled.
    Density is `1 / blocks`. Sizes that `blocks` does not divide give
    blocks whose sizes differ by at most one (density then slightly above
    `1 / blocks`). The mask is fixed at `apply` (no schedule): fine-tuning
    trains the kept weights, which learn to route through the blocks.

    The permutations are drawn per layer from `seed` and the layer's name
    (the same seed gives the same masks) and are stored with the wrapped
    model (non-trainable variables saved in `.keras`). `kc.strip` bakes the
    mask in as zeros; `kc.shrink` (or `kc.strip(..., shrink=True)`) finds
    the blocks from those zeros and replaces the layer by a `kc.BlockDense`
    that runs the `blocks` small matrix products, folding the permutations
    into the neighbouring layers' weights where it can.

    A classifier's last layer (10 classes, say) has few outputs per block,
    so each class sees only `1 / blocks` of the features: leave it dense
    with `exclude=["logits"]` (its name) unless the accuracy holds.

    Args:
        blocks: number of diagonal blocks, an int >= 2.
        permute: shuffle rows and columns (default `True`); `False` gives a
            plain block-diagonal mask (neighbouring units share a block).
        seed: int seed of the permutations; `None` draws fresh ones (they
            are still saved with the model).
        include: layer names or classes to cover (default: every Dense and
            1x1 convolution).
        exclude: layer names or classes to leave dense.

    Raises:
        ValueError: `blocks` is not an int >= 2; at `apply`, a layer named in
            `include=` has fewer inputs or outputs than `blocks` (one not
            named is left dense, with the reason logged).

    Example:

    ```python
    scheme = kc.BlockDiagonalPrune(blocks=8, seed=0, exclude=["logits"])
    pruned = scheme.apply(model)
    pruned.compile(...); pruned.fit(x, y, epochs=5)
    fast = kc.strip(pruned, shrink=True)   # kc.BlockDense layers
    ```
    """

    scheme_word = "blockdiag"
    scheme_args = ("BLOCKS",)
    scheme_help = "permuted block-diagonal masks (MPDCompress): BLOCKS blocks per Dense/1x1 conv"

    def __init__(self, blocks=8, permute=True, seed=None, include=None, exclude=None):
        super().__init__(include=include, exclude=exclude)
        self.blocks = check_blocks(blocks)
        self.permute = bool(permute)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an int or None. Received: seed={seed!r}")
        self.seed = None if seed is None else int(seed)
        self.density = 1.0 / self.blocks

    def reason_unsupported(self, layer, spec):
        reason = super().reason_unsupported(layer, spec)
        if reason is not None:
            return reason
        reason = _not_pointwise_reason(layer)
        if reason is not None:
            return reason
        rows, cols = int(np.prod(layer.kernel.shape[:-1])), int(layer.kernel.shape[-1])
        if min(rows, cols) < self.blocks:
            return (
                f"{rows} inputs x {cols} outputs cannot split into {self.blocks} blocks (each "
                "needs an input and an output); fewer blocks would cover it"
            )
        return None

    def paths(self, layer, spec):
        return tuple(spec.weights)  # the kernel; prefixed for a Dense nested in a custom layer

    def _permutations(self, wrapper, path, rows, cols):
        if not self.permute:
            return np.arange(rows), np.arange(cols)
        key = zlib.crc32(f"{wrapper.layer.name}/{path}".encode())
        entropy = None if self.seed is None else [self.seed, key]
        rng = np.random.default_rng(entropy)
        return rng.permutation(rows), rng.permutation(cols)

    def build(self, wrapper, path, variable):
        state = super().build(wrapper, path, variable)
        rows, cols = int(np.prod(variable.shape[:-1])), int(variable.shape[-1])
        base = path.replace(".", "_")
        for key, value in zip(
            ("rows", "cols"), self._permutations(wrapper, path, rows, cols), strict=True
        ):
            perm = wrapper.add_weight(
                name=f"{base}_{key}_permutation",
                shape=(len(value),),
                dtype="int32",
                initializer="zeros",
                trainable=False,
            )
            perm.assign(value.astype("int32"))
            state[key] = perm
        return state

    def compute_masks(self, items, density):
        out = {}
        for item in items:
            for path in item.paths:
                state = item.states[path]
                mask = block_diagonal_mask(
                    keras.ops.convert_to_numpy(state["rows"]),
                    keras.ops.convert_to_numpy(state["cols"]),
                    self.blocks,
                )
                out[(id(item.wrapper), path)] = mask.reshape(item.values[path].shape)
        return out

    def get_config(self):
        config = {"blocks": self.blocks, "permute": self.permute, "seed": self.seed}
        config.update(super().get_config())
        return config
