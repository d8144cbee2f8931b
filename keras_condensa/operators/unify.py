"""`Unify`: micro-structured weight unification, each block of weights one shared magnitude."""

import keras
import numpy as np
from keras import ops

from keras_condensa import masks
from keras_condensa.operators.base import check_density
from keras_condensa.operators.mask import MaskOperator


def check_block(block):
    """Raises unless `block` is two positive ints `(rows, cols)`; returns it as a tuple."""
    if (
        isinstance(block, (str, bytes))
        or not hasattr(block, "__len__")
        or len(block) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)
    ):
        raise ValueError(
            f"block must be two positive ints (rows, cols), e.g. (1, 4). Received: block={block!r}"
        )
    return tuple(block)


@keras.saving.register_keras_serializable(package="keras_condensa")
class Unify(MaskOperator):
    """Micro-structured weight unification: every block of a kernel shares one magnitude.

    A kernel is viewed as `(inputs, outputs)` (every axis but the last
    flattened into rows, as `kc.BlockPrune` does) and tiled into `block`
    tiles. Each tile's weights keep their signs and share one magnitude,
    the mean of their magnitudes (the least-squares choice); a tile whose
    magnitude is zero is pruned. With a `density`, the tiles that lose the
    least when zeroed (lowest `count * magnitude**2`) are pruned until that
    fraction of tiles remains.

    The intended training is ADMM through `kc.LC` (the same
    augmented-Lagrangian family): `kc.LC(kc.Unify((1, 4), density=0.3))`
    runs the block projection as its C step, so the weights are pulled
    towards a unified model while they learn. Applied on its own, the
    forward pass uses the unified weights and the gradient passes straight
    through to the weights (the mask of pruned tiles is fixed at `apply`).

    The magnitudes are free floats: compose with `kc.Cluster(symmetric=True)`
    (`kc.Compose([kc.Unify((1, 4), 0.3), kc.Cluster(8, symmetric=True)])`)
    or a quantizer for few distinct values, which `kc.codec.save` codes in a
    few bits each.

    Args:
        block: `(rows, cols)` of a tile, e.g. `(1, 4)`: four neighbouring
            output channels of one input share a magnitude.
        density: fraction of tiles to keep, in (0, 1]; `None` (default)
            prunes only the tiles that are already zero.
        include: layer names or classes to cover (default: every kernel).
        exclude: layer names or classes to leave untouched.

    Example:

    ```python
    lc = kc.LC(kc.Unify(block=(1, 4), density=0.3), steps=20)
    unified = lc.fit(model, x, y, epochs=4, batch_size=64)
    final = kc.strip(unified)
    ```
    """

    scheme_word = "unify"
    scheme_args = ("D", "RxC")
    scheme_help = "weight unification: RxC blocks share one magnitude, keep fraction D of them"
    scheme_names = ("density", "block")

    def __init__(self, block=(1, 4), density=None, include=None, exclude=None):
        super().__init__(include=include, exclude=exclude)
        self.block = check_block(block)
        if density is not None:
            check_density(density)
        self.density = None if density is None else float(density)

    def paths(self, layer, spec):
        return tuple(spec.weights)

    def build(self, wrapper, path, variable):
        state = super().build(wrapper, path, variable)
        rows, cols = masks.block_view(np.zeros(variable.shape, "int8")).shape
        r, c = self.block
        br, bc = -(-rows // r), -(-cols // c)
        state["grid"] = (rows, cols, br, bc)
        real = np.pad(np.ones((rows, cols), "float32"), [(0, br * r - rows), (0, bc * c - cols)])
        state["counts"] = real.reshape(br, r, bc, c).sum(axis=(1, 3))
        return state

    def unified(self, state, value):
        """Each weight's sign times its tile's mean magnitude (`keras.ops`)."""
        rows, cols, br, bc = state["grid"]
        r, c = self.block
        shape = ops.shape(value)
        view = ops.reshape(ops.abs(value), (rows, cols))
        view = ops.pad(view, [[0, br * r - rows], [0, bc * c - cols]])
        sums = ops.sum(ops.reshape(view, (br, r, bc, c)), axis=(1, 3))
        mean = sums / ops.convert_to_tensor(state["counts"], value.dtype)
        tiles = ops.broadcast_to(ops.reshape(mean, (br, 1, bc, 1)), (br, r, bc, c))
        full = ops.reshape(tiles, (br * r, bc * c))[:rows, :cols]
        return ops.sign(value) * ops.reshape(full, shape)

    def transform(self, state, value, training):
        value = super().transform(state, value, training)
        unified = self.unified(state, value)
        if training:
            return value + ops.stop_gradient(unified - value)
        return unified

    def density_at(self, step, schedule=None):
        return 1.0 if self.density is None else self.density

    def compute_masks(self, items, density):
        out = {}
        for item in items:
            for path in item.paths:
                value = np.asarray(item.values[path], "float32")
                state = item.states[path]
                gain = masks.block_scores(value, self.block) ** 2 * state["counts"]
                keep = masks.keep_count(density, gain.size)
                grid = masks.topk_mask(gain, keep) * (gain > 0)
                out[(id(item.wrapper), path)] = masks.expand_block_mask(grid, value, self.block)
        return out

    def get_config(self):
        config = {"block": list(self.block), "density": self.density}
        config.update(super().get_config())
        return config
