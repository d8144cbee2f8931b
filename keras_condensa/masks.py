"""Mask maths: pure functions on `keras.ops`, no layers and no state.

Every function takes weight tensors (or scores) and returns 0/1 masks of the
same shape as the weight, in the weight's dtype. Counts are exact: a density
`d` over `n` entries keeps `max(1, round(d * n))` of them (ties broken by index).
"""

import math

from keras import ops

CRITERIA = ("l1", "l2")


def check_criterion(criterion):
    """Raises unless `criterion` names a structure norm."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}. Received: criterion={criterion!r}")


def keep_count(density, total, align=None):
    """How many of `total` items a density keeps, rounded up to `align`.

    Args:
        density: fraction to keep, in (0, 1].
        total: number of items.
        align: optional multiple to round the kept count up to.

    Returns:
        An int in [1, total].
    """
    k = max(1, int(round(density * total)))
    if align:
        k = int(math.ceil(k / align)) * align
    return min(k, total)


def _topk_flat_mask(scores, k):
    """0/1 vector marking the `k` largest entries of the 1-D `scores`.

    Ranks come from a double argsort rather than `top_k`, so that shapes do not
    depend on `k` (a changing `k` would recompile on JAX at every update).
    """
    order = ops.argsort(-scores)
    ranks = ops.argsort(order)
    return ops.cast(ranks < k, "float32")


def magnitude_mask(weight, density):
    """Keeps the `density` fraction of entries with the largest magnitude.

    Example:

    >>> m = magnitude_mask(ops.convert_to_tensor([[0.1, -3.0], [2.0, 0.5]]), 0.5)
    >>> ops.convert_to_numpy(m).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    flat = ops.reshape(ops.abs(weight), (-1,))
    k = keep_count(density, int(flat.shape[0]))
    return ops.cast(ops.reshape(_topk_flat_mask(flat, k), ops.shape(weight)), weight.dtype)


def global_keep_counts(scores, density, min_density=0.0, aligns=None):
    """Splits one global budget across layers by one threshold on their scores.

    The largest `round(density * total)` scores over all layers are kept, as
    Condensa's global pruning does; a layer that would keep less than
    `min_density` of its items keeps its own top `min_density` instead, and the
    rest of the budget is shared by the other layers (water-filling).

    Args:
        scores: list of 1-D score tensors, one per layer.
        density: fraction of all items to keep, in (0, 1].
        min_density: per-layer floor, in [0, 1].
        aligns: optional per-layer multiples to round kept counts up to.

    Returns:
        A list of ints, items to keep per layer.
    """
    sizes = [int(s.shape[0]) for s in scores]
    total = sum(sizes)
    budget = keep_count(density, total)
    floors = [keep_count(min_density, n) if min_density > 0 else 0 for n in sizes]
    if sum(floors) > budget:
        raise ValueError(
            f"min_layer_density={min_density} keeps {sum(floors)} items but density={density} "
            f"allows only {budget} of {total}. Lower min_layer_density or raise density."
        )
    fixed = set()
    while True:
        free = [i for i in range(len(scores)) if i not in fixed]
        left = budget - sum(floors[i] for i in fixed)
        flat = ops.concatenate([ops.cast(scores[i], "float32") for i in free])
        keep = _topk_flat_mask(flat, left) if left > 0 else ops.zeros_like(flat)
        counts, start = {}, 0
        for i in free:
            counts[i] = int(ops.convert_to_numpy(ops.sum(keep[start : start + sizes[i]])))
            start += sizes[i]
        below = [i for i in free if counts[i] < max(floors[i], 1)]
        if not below:
            break
        fixed.update(below)
        floors = [max(f, 1) if i in below else f for i, f in enumerate(floors)]
    result = [floors[i] if i in fixed else counts[i] for i in range(len(scores))]
    if aligns:
        result = [keep_count(c / n, n, a) for c, n, a in zip(result, sizes, aligns)]
    return result


def topk_mask(scores, k):
    """0/1 mask (shape of `scores`) of the `k` largest scores."""
    flat = ops.reshape(ops.cast(scores, "float32"), (-1,))
    return ops.reshape(_topk_flat_mask(flat, k), ops.shape(scores))


def _moveaxes_last(weight, axes):
    rank = len(weight.shape)
    axes = [a % rank for a in axes]
    rest = [a for a in range(rank) if a not in axes]
    return ops.transpose(weight, rest + axes), rest + axes


def channel_scores(weight, axes, criterion="l1"):
    """Per-output-channel norms, normalised by the channel's size.

    The norm is divided by the number of entries (L1: mean magnitude) or its
    square root (L2: root mean square), so channels of layers with different
    fan-in are comparable under one global threshold.

    Args:
        weight: the weight tensor.
        axes: the axes that index output channels (flattened together).
        criterion: `"l1"` or `"l2"`.

    Returns:
        A 1-D tensor with one score per channel.
    """
    moved, _ = _moveaxes_last(weight, axes)
    n_channels = math.prod(int(weight.shape[a]) for a in axes)
    rows = ops.reshape(moved, (-1, n_channels))
    per = int(rows.shape[0])
    if criterion == "l1":
        return ops.sum(ops.abs(rows), axis=0) / per
    return ops.sqrt(ops.sum(ops.square(rows), axis=0) / per)


def expand_channel_mask(keep, weight, axes):
    """Broadcasts a per-channel 0/1 vector to the shape of `weight`."""
    rank = len(weight.shape)
    axes = [a % rank for a in axes]
    shape = [int(weight.shape[a]) if a in axes else 1 for a in range(rank)]
    # Channels flatten in row-major order over `axes`, which are in increasing order.
    keep = ops.reshape(keep, [int(weight.shape[a]) for a in axes])
    keep = ops.reshape(keep, shape)
    return ops.cast(ops.broadcast_to(keep, weight.shape), weight.dtype)


def block_view(weight):
    """The 2-D (inputs, outputs) view that blocks tile: all but the last axis flattened."""
    return ops.reshape(weight, (-1, int(weight.shape[-1])))


def block_scores(weight, block_size, criterion="l1"):
    """Scores of `block_size` tiles of the 2-D view of `weight` (edges padded).

    Returns:
        A 2-D tensor `(ceil(rows / r), ceil(cols / c))` of mean magnitudes (L1)
        or root mean squares (L2), each over the tile's real entries.
    """
    view = block_view(weight)
    r, c = block_size
    rows, cols = int(view.shape[0]), int(view.shape[1])
    pr, pc = (-rows) % r, (-cols) % c
    values = ops.abs(view) if criterion == "l1" else ops.square(view)
    padded = ops.pad(values, [(0, pr), (0, pc)])
    counts = ops.pad(ops.ones_like(view), [(0, pr), (0, pc)])
    br, bc = (rows + pr) // r, (cols + pc) // c

    def tile_sum(x):
        return ops.sum(ops.reshape(x, (br, r, bc, c)), axis=(1, 3))

    mean = tile_sum(padded) / tile_sum(counts)
    return mean if criterion == "l1" else ops.sqrt(mean)


def expand_block_mask(keep, weight, block_size):
    """Expands a per-tile 0/1 grid back to the shape of `weight`."""
    r, c = block_size
    rows, cols = block_view(weight).shape
    full = ops.repeat(ops.repeat(keep, r, axis=0), c, axis=1)[: int(rows), : int(cols)]
    return ops.cast(ops.reshape(full, weight.shape), weight.dtype)


def nm_mask(weight, n, m, axis):
    """N:M mask: in every group of `m` consecutive entries along `axis`, keep the `n` largest.

    Args:
        weight: the weight tensor; `weight.shape[axis]` must be a multiple of `m`.
        n: entries kept per group.
        m: group size.
        axis: the input (reduction) axis the groups run along.
    """
    rank = len(weight.shape)
    axis = axis % rank
    size = int(weight.shape[axis])
    if size % m:
        raise ValueError(f"N:M groups of m={m} do not tile an axis of size {size}.")
    moved = ops.moveaxis(ops.abs(weight), axis, -1)
    groups = ops.reshape(moved, (-1, m))
    # Rank of each entry within its group; keep the n best (ties by position).
    order = ops.argsort(-groups, axis=-1)
    ranks = ops.argsort(order, axis=-1)
    keep = ops.cast(ranks < n, weight.dtype)
    keep = ops.reshape(keep, moved.shape)
    return ops.moveaxis(keep, -1, axis)
