"""Mask maths: pure functions on NumPy arrays, no layers and no state.

Masks are computed outside the training step (in callbacks, at `apply`
time), so they run on the host with NumPy whatever the backend: one
`argpartition` costs a fraction of a millisecond where a sort through eager
backend ops costs tens. Every function takes weights (or scores) as arrays
and returns 0/1 float32 masks of the same shape. Counts are exact: a density
`d` over `n` entries keeps `max(1, round(d * n))` of them.
"""

import math

import numpy as np

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


def topk_mask(scores, k):
    """0/1 mask (shape of `scores`) of the `k` largest scores (ties broken by position)."""
    scores = np.asarray(scores, dtype="float32")
    flat = scores.ravel()
    keep = np.zeros(flat.size, dtype="float32")
    if k >= flat.size:
        keep[:] = 1.0
    elif k > 0:
        keep[np.argpartition(-flat, k - 1, kind="introselect")[:k]] = 1.0
    return keep.reshape(scores.shape)


def magnitude_mask(weight, density):
    """Keeps the `density` fraction of entries with the largest magnitude.

    Example:

    >>> magnitude_mask(np.array([[0.1, -3.0], [2.0, 0.5]]), 0.5).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    weight = np.asarray(weight)
    return topk_mask(np.abs(weight), keep_count(density, weight.size))


def global_keep_counts(scores, density, min_density=0.0, aligns=None):
    """Splits one global budget across layers by one threshold on their scores.

    The largest `round(density * total)` scores over all layers are kept, as
    Condensa's global pruning does; a layer that would keep less than
    `min_density` of its items (or nothing) keeps its own top `min_density`
    (at least one item) instead, and the rest of the budget is shared by the
    other layers (water-filling).

    Args:
        scores: list of 1-D score arrays, one per layer.
        density: fraction of all items to keep, in (0, 1].
        min_density: per-layer floor, in [0, 1].
        aligns: optional per-layer multiples to round kept counts up to.

    Returns:
        A list of ints, items to keep per layer.
    """
    scores = [np.asarray(s, dtype="float32").ravel() for s in scores]
    sizes = [s.size for s in scores]
    total = sum(sizes)
    budget = keep_count(density, total)
    floors = [max(1, keep_count(min_density, n)) if min_density > 0 else 1 for n in sizes]
    if sum(floors) > budget and min_density > 0:
        raise ValueError(
            f"min_layer_density={min_density} keeps {sum(floors)} items but density={density} "
            f"allows only {budget} of {total}. Lower min_layer_density or raise density."
        )
    if sum(floors) > budget:
        raise ValueError(
            f"density={density} keeps {budget} of {total} items, but each of the {len(scores)} "
            f"pruned weights keeps at least one: no item would be kept in "
            f"{len(scores) - budget} of them. The smallest density is "
            f"{len(scores) / total:.3g} ({len(scores)} of {total}); raise density or prune "
            "fewer layers (exclude=...)."
        )
    fixed = set()
    while True:
        free = [i for i in range(len(scores)) if i not in fixed]
        left = budget - sum(floors[i] for i in fixed)
        flat = np.concatenate([scores[i] for i in free])
        keep = topk_mask(flat, left)
        bounds = np.cumsum([0] + [sizes[i] for i in free])
        counts = {
            i: int(keep[a:b].sum())
            for i, a, b in zip(free, bounds[:-1], bounds[1:], strict=True)
        }
        below = [i for i in free if counts[i] < floors[i]]
        if not below:
            break
        fixed.update(below)
    result = [floors[i] if i in fixed else counts[i] for i in range(len(scores))]
    if aligns:
        result = [
            keep_count(c / n, n, a) for c, n, a in zip(result, sizes, aligns, strict=True)
        ]
    return result


def _channels_last(weight, axes):
    rank = weight.ndim
    axes = [a % rank for a in axes]
    rest = [a for a in range(rank) if a not in axes]
    return np.transpose(weight, rest + axes).reshape(-1, math.prod(weight.shape[a] for a in axes))


def channel_scores(weight, axes, criterion="l1"):
    """Per-output-channel norms, normalised by the channel's size.

    The norm is divided by the number of entries (L1: mean magnitude) or its
    square root (L2: root mean square), so channels of layers with different
    fan-in are comparable under one global threshold.

    Args:
        weight: the weight array.
        axes: the axes that index output channels (flattened together, in order).
        criterion: `"l1"` or `"l2"`.

    Returns:
        A 1-D array with one score per channel.
    """
    rows = _channels_last(np.asarray(weight, dtype="float32"), axes)
    if criterion == "l1":
        return np.abs(rows).mean(axis=0)
    return np.sqrt(np.square(rows).mean(axis=0))


def expand_channel_mask(keep, weight, axes):
    """Broadcasts a per-channel 0/1 vector to the shape of `weight`."""
    weight = np.asarray(weight)
    rank = weight.ndim
    axes = sorted(a % rank for a in axes)
    keep = np.asarray(keep, dtype="float32").reshape([weight.shape[a] for a in axes])
    shape = [weight.shape[a] if a in axes else 1 for a in range(rank)]
    return np.broadcast_to(keep.reshape(shape), weight.shape).astype("float32")


def block_view(weight):
    """The 2-D (inputs, outputs) view that blocks tile: all but the last axis flattened."""
    weight = np.asarray(weight)
    return weight.reshape(-1, weight.shape[-1])


def block_scores(weight, block_size, criterion="l1"):
    """Scores of `block_size` tiles of the 2-D view of `weight` (edges padded).

    Returns:
        A 2-D array `(ceil(rows / r), ceil(cols / c))` of mean magnitudes (L1)
        or root mean squares (L2), each over the tile's real entries.
    """
    view = block_view(np.asarray(weight, dtype="float32"))
    r, c = block_size
    rows, cols = view.shape
    pr, pc = (-rows) % r, (-cols) % c
    values = np.abs(view) if criterion == "l1" else np.square(view)
    padded = np.pad(values, [(0, pr), (0, pc)])
    counts = np.pad(np.ones_like(view), [(0, pr), (0, pc)])
    br, bc = (rows + pr) // r, (cols + pc) // c

    def tile_sum(x):
        return x.reshape(br, r, bc, c).sum(axis=(1, 3))

    mean = tile_sum(padded) / tile_sum(counts)
    return mean if criterion == "l1" else np.sqrt(mean)


def expand_block_mask(keep, weight, block_size):
    """Expands a per-tile 0/1 grid back to the shape of `weight`."""
    weight = np.asarray(weight)
    r, c = block_size
    rows, cols = block_view(weight).shape
    full = np.repeat(np.repeat(np.asarray(keep, dtype="float32"), r, axis=0), c, axis=1)
    return full[:rows, :cols].reshape(weight.shape)


def nm_mask(weight, n, m, axis):
    """N:M mask: in every group of `m` consecutive entries along `axis`, keep the `n` largest.

    Args:
        weight: the weight array; `weight.shape[axis]` must be a multiple of `m`.
        n: entries kept per group.
        m: group size.
        axis: the input (reduction) axis the groups run along.
    """
    weight = np.asarray(weight)
    axis = axis % weight.ndim
    size = weight.shape[axis]
    if size % m:
        raise ValueError(f"N:M groups of m={m} do not tile an axis of size {size}.")
    moved = np.moveaxis(np.abs(weight), axis, -1)
    groups = moved.reshape(-1, m)
    # Rank of each entry within its group; keep the n best (ties by position).
    ranks = np.argsort(np.argsort(-groups, axis=-1, kind="stable"), axis=-1, kind="stable")
    keep = (ranks < n).astype("float32").reshape(moved.shape)
    return np.moveaxis(keep, -1, axis)
