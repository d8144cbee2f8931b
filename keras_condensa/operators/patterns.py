"""Pattern pruning: `BlockPrune` (whole tiles) and `NMPrune` (N of every M)."""

import keras

from keras_condensa import masks, prunable
from keras_condensa.operators.mask import MaskOperator, PruningOperator
from keras_condensa.operators.prune import check_min_density, check_scope


@keras.saving.register_keras_serializable(package="keras_condensa")
class BlockPrune(PruningOperator):
    """Keeps the highest-norm `block_size` tiles of each kernel's 2-D view.

    A kernel is viewed as `(inputs, outputs)`: every axis but the last is
    flattened into rows. Tiles at the edges may be partial.

    Args:
        density: fraction of tiles to keep, in (0, 1].
        block_size: `(rows, cols)` of a tile, e.g. `(4, 4)`.
        criterion: `"l1"` or `"l2"` (mean over the tile's entries).
        scope: `"layer"` (default) or `"global"`.
        min_layer_density: with global scope, the least fraction a weight keeps.
        schedule, include, exclude: as in `kc.Prune`.
    """

    scheme_word = "block"
    scheme_args = ("D", "RxC")
    scheme_help = "keep fraction D of the RxC blocks of each kernel (e.g. block:0.25:4x4)"

    def __init__(
        self,
        density,
        block_size=(4, 4),
        criterion="l1",
        scope="layer",
        min_layer_density=0.0,
        schedule=None,
        include=None,
        exclude=None,
    ):
        super().__init__(density, schedule=schedule, include=include, exclude=exclude)
        if (
            isinstance(block_size, (str, bytes))
            or len(block_size) != 2
            or not all(isinstance(b, int) and b >= 1 for b in block_size)
        ):
            raise ValueError(
                "block_size must be two positive ints (rows, cols). "
                f"Received: block_size={block_size!r}"
            )
        masks.check_criterion(criterion)
        check_scope(scope)
        check_min_density(min_layer_density)
        self.block_size = tuple(block_size)
        self.criterion = criterion
        self.scope = scope
        self.min_layer_density = float(min_layer_density)

    def paths(self, layer, spec):
        return spec.weights

    def compute_masks(self, items, density):
        keys, values, grids = [], [], []
        for item in items:
            for path in item.paths:
                keys.append((id(item.wrapper), path))
                values.append(item.values[path])
                grids.append(masks.block_scores(item.values[path], self.block_size, self.criterion))
        if self.scope == "global":
            counts = masks.global_keep_counts(grids, density, self.min_layer_density)
        else:
            counts = [masks.keep_count(density, g.size) for g in grids]
        return {
            k: masks.expand_block_mask(masks.topk_mask(g, c), v, self.block_size)
            for k, v, g, c in zip(keys, values, grids, counts, strict=True)
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            block_size=list(self.block_size),
            criterion=self.criterion,
            scope=self.scope,
            min_layer_density=self.min_layer_density,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_condensa")
class NMPrune(MaskOperator):
    """N:M sparsity: in every group of `m` weights along the input axis, keep `n`.

    2:4 (the default) is what sparse tensor cores accelerate. Groups run along
    a kernel's input (reduction) axis; a layer whose input axis is not a
    multiple of `m`, or that has no such axis (depthwise kernels,
    embeddings), is skipped with the reason in `kc.summary`.

    Args:
        n: weights kept per group.
        m: group size.
        include, exclude: as in `kc.Prune`.
    """

    scheme_word = "nm"
    scheme_args = ("N", "M")
    scheme_help = "keep N nonzeros in every M weights (e.g. nm:2:4)"

    def __init__(self, n=2, m=4, include=None, exclude=None):
        super().__init__(include=include, exclude=exclude)
        if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
            raise ValueError(f"NMPrune needs ints 0 < n <= m. Received: n={n!r}, m={m!r}")
        self.n, self.m = n, m
        self.density = n / m

    def reason_unsupported(self, layer, spec):
        reason = super().reason_unsupported(layer, spec)
        if reason is not None:
            return reason
        if not spec.reduction_axes:
            return f"{type(layer).__name__} has no input axis to group N:M"
        if not self.paths(layer, spec):
            sizes = {p: prunable.resolve(layer, p).shape[a] for p, a in spec.reduction_axes.items()}
            return f"input axis sizes {sizes} are not multiples of m={self.m}"
        return None

    def paths(self, layer, spec):
        return tuple(
            p
            for p, axis in spec.reduction_axes.items()
            if prunable.resolve(layer, p).shape[axis] % self.m == 0
        )

    def compute_masks(self, items, density):
        return {
            (id(item.wrapper), path): masks.nm_mask(
                item.values[path], self.n, self.m, item.spec.reduction_axes[path]
            )
            for item in items
            for path in item.paths
        }

    def get_config(self):
        config = {"n": self.n, "m": self.m}
        config.update(super().get_config())
        return config
