"""Optimal 1-D k-means: the exact clustering of a weight tensor's values, in NumPy.

Weight sharing replaces each weight by the nearest of `clusters` centroids. In one
dimension the best centroids (the least sum of squared errors) can be found exactly: the
clusters are runs of the sorted values, and a dynamic programme over those runs finds
the best split (Ckmeans.1d.dp, Wang and Song 2011; Grønlund et al. 2017):

    D[q][b] = min over a of D[q-1][a] + SSE(values a..b-1)

where `D[q][b]` is the least error of `q` clusters over the `b` smallest values and
`SSE` comes from prefix sums. The argmin `J[q][b]` never decreases in `b`, so each row
is filled by divide and conquer over `b`, one recursion depth at a time in NumPy, and
`J[q-1][b] <= J[q][b]` bounds every search from below. The rows are only filled where
the answer can come from: a coarse solve (the values in a few thousand bins) guesses
where each cluster starts, and every row is checked to be exact from its lower end up;
a guess too tight falls back to the full programme. Equal values are merged and
weighted, so duplicates (a pruned tensor's zeros) cost nothing.

`kmeans_plus_plus` is the usual heuristic (k-means++ seeding, Lloyd iterations), also in
one dimension: a reference, and the fast choice when a local optimum is enough.
"""

import numbers

import numpy as np

_CHUNK = 1 << 15  # candidates per vectorized block: the temporaries stay in cache
_BINS = 2048  # bins of the coarse solve that guesses the rows' windows
_MARGIN = 0.15  # a window starts this fraction of a coarse cluster below its guess


def _distinct(values, clusters):
    """Checks the arguments; returns the values, their sorted distinct values and counts."""
    if isinstance(clusters, bool) or not isinstance(clusters, numbers.Integral) or clusters < 1:
        raise ValueError(f"`clusters` must be an int >= 1. Received: clusters={clusters!r}")
    x = np.asarray(values)
    if x.size == 0:
        raise ValueError(f"`values` is empty (shape {x.shape}); pass at least one value.")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"`values` must be real numbers. Received dtype {x.dtype}.")
    if not np.isfinite(x).all():
        raise ValueError("`values` has NaN or infinite entries; k-means needs finite values.")
    distinct, counts = np.unique(x.ravel(), return_counts=True)
    if clusters > distinct.size:
        raise ValueError(
            f"`values` has {distinct.size} distinct values, fewer than clusters={clusters}: "
            f"lower `clusters` to at most {distinct.size}."
        )
    return x, distinct.astype(np.float64), counts.astype(np.float64)


def _prefix_sums(distinct, counts):
    """Weights, sums and squared sums of the centered values, with a leading 0."""
    mean = float(np.dot(distinct, counts) / counts.sum())
    centered = distinct - mean
    sums = [np.zeros(distinct.size + 1) for _ in range(3)]
    np.cumsum(counts, out=sums[0][1:])
    np.cumsum(centered * counts, out=sums[1][1:])
    np.cumsum(centered * centered * counts, out=sums[2][1:])
    return mean, *sums


def _first_min(vals, starts, lens):
    """Least value of each run `vals[starts[i] : starts[i] + lens[i]]` (lens >= 1), and the
    position of its first occurrence."""
    mins = np.minimum.reduceat(vals, starts)
    hits = np.flatnonzero(vals == np.repeat(mins, lens))
    if hits.size == starts.size:  # no ties: one hit per run
        return mins, hits
    return mins, hits[np.searchsorted(hits, starts)]


def _ranges_min(e, s1, w, s1m, wm, lo, hi):
    """Row minima when each midpoint has its own candidate range [lo, hi] (top depths)."""
    lens = hi - lo + 1
    starts = np.cumsum(lens) - lens
    cand = np.arange(int(starts[-1] + lens[-1])) - np.repeat(starts - lo, lens)
    t = np.repeat(s1m, lens) - s1.take(cand)
    t *= t
    t /= np.repeat(wm, lens) - w.take(cand)
    np.subtract(e.take(cand), t, out=t)
    mins, first = _first_min(t, starts, lens)
    return mins, cand.take(first)


def _contiguous_min(e, s1, w, s1m, wm, lo, hi):
    """Row minima when the ranges tile a span: midpoint i owns (hi[i-1], hi[i]] plus lo[i].

    The owned candidates are slices of the prefix arrays (no gathers); `lo[i]` (shared
    with the previous midpoint when `lo[i] == hi[i-1]`) is evaluated apart and wins ties.
    Owned candidates below `lo[i]` are valid splits too, so they do no harm.
    """
    d = s1m - s1.take(lo)
    d *= d
    d /= wm - w.take(lo)
    best = e.take(lo) - d
    arg = lo.copy()
    own = np.diff(hi, prepend=lo[0] - 1)
    total = np.cumsum(own)
    cuts = np.searchsorted(total, np.arange(_CHUNK, total[-1], _CHUNK))
    cuts = np.unique(np.r_[0, cuts, lo.size]).tolist()
    for s0, s9 in zip(cuts[:-1], cuts[1:], strict=True):
        a0, a1 = int(hi[s0] - own[s0]) + 1, int(hi[s9 - 1]) + 1
        if a1 <= a0:
            continue
        owners = np.flatnonzero(own[s0:s9]) + s0
        lens = own[owners]
        t = np.repeat(s1m[owners], lens)
        t -= s1[a0:a1]
        t *= t
        u = np.repeat(wm[owners], lens)
        u -= w[a0:a1]
        t /= u
        np.subtract(e[a0:a1], t, out=t)
        mins, first = _first_min(t, np.cumsum(lens) - lens, lens)
        better = mins < best[owners]
        owners = owners[better]
        best[owners] = mins[better]
        arg[owners] = first[better] + a0
    return best, arg


def _row(e, sums, j_prev, start, floor):
    """One row of the programme for `b` in [start, n], splits `a` in [floor, b - 1].

    `e[a] = D[q-1][a] - S2[a]` (the terms that depend on `a` alone) and `j_prev` is the
    previous row's argmin (exact from `start` up). Returns `D[q]` and `J[q]` (length
    n + 1, then padding): divide and conquer on a dyadic grid, so the midpoints of one
    depth and their neighbours (whose argmins bound the search) are strided slices.
    """
    w, s1, s2 = sums
    n = w.size - 1
    d = np.full(n + 1, np.inf)
    j = np.empty(2 * n + 2, np.intp)
    cand = np.arange(max(floor, int(j_prev[n])), n)
    vals = e[cand] - (s1[n] - s1[cand]) ** 2 / (w[n] - w[cand])
    i = int(np.argmin(vals))
    d[n] = s2[n] + vals[i]
    j[n:] = cand[i]  # b = n first: it bounds every other b; the padding reads as J[n]
    base = start - 1
    j[base] = floor
    step = 1 << max(n - start, 1).bit_length() - 1
    while step and start < n:
        mids = slice(base + step, n, 2 * step)
        count = len(range(base + step, n, 2 * step))
        hi = np.minimum(
            j[base + 2 * step : base + 2 * step * count + 1 : 2 * step],
            np.arange(count) * (2 * step) + (base + step - 1),
        )
        lo = np.maximum(j[base : base + 2 * step * count : 2 * step], j_prev[mids])
        np.minimum(lo, hi, out=lo)
        tight = int((hi - lo).sum()) + count
        if count > 4 and int(hi[-1] - lo[0]) + count < 1.5 * tight:
            mins, arg = _contiguous_min(e, s1, w, s1[mids], w[mids], lo, hi)
        else:
            mins, arg = _ranges_min(e, s1, w, s1[mids], w[mids], lo, hi)
        d[mids] = s2[mids] + mins
        j[mids] = arg
        step >>= 1
    return d, j


def _partition(distinct, counts, clusters, windows=None):
    """Start index (into `distinct`) of each optimal cluster, or None if `windows` failed.

    `windows[q]` is a guess of the lowest `b` row `q` is needed at. A row is filled from
    its window up only; it stays exact because its argmins are checked to stay in the
    previous row's window (`J[q-1][b] <= J[q][b]`), raising the window where they do not.
    """
    n = distinct.size
    _, *sums = _prefix_sums(distinct, counts)
    w, s1, s2 = sums
    if clusters == 1:
        return np.zeros(1, np.intp)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = s2 - s1 * s1 / w
    d[0] = np.inf
    j = np.zeros(n + 1, np.intp)
    lower, rows = 1, []
    for q in range(2, clusters):
        floor = max(q - 1, lower)
        start = max(q, lower + 1, 0 if windows is None else int(windows[q]))
        if start > n:
            return None
        if floor > q - 1 and j[start] < floor:
            start = floor + int(np.searchsorted(j[floor : n + 1], floor))
            if start > n:
                return None
        d, j = _row(d - s2, sums, j, start, floor)
        rows.append((start, j[start : n + 1].astype(np.int32)))
        lower = start
    floor = max(clusters - 1, lower)
    if floor > clusters - 1 and j[n] < floor:
        return None
    cand = np.arange(max(floor, int(j[n])), n)
    vals = d[cand] - s2[cand] - (s1[n] - s1[cand]) ** 2 / (w[n] - w[cand])
    starts = [int(cand[np.argmin(vals)])]
    for start, argmins in reversed(rows):
        starts.append(int(argmins[starts[-1] - start]))
    return np.array([0, *reversed(starts)], np.intp)


def _windows(distinct, counts, clusters):
    """Guessed lower ends of the rows: where the best `clusters - 1` clusters of a coarse
    copy start, less a margin.

    The bins are equal in count of distinct values and in value range (the tails' small
    clusters need the second), and the margin is a fraction of the previous cluster in
    both counts and values. A guess too high is caught by `_partition`, not trusted.
    """
    n = distinct.size
    by_value = np.searchsorted(distinct, np.linspace(distinct[0], distinct[-1], _BINS + 1))
    edges = np.unique(np.r_[np.linspace(0, n, _BINS + 1).astype(np.intp), by_value[1:-1]])
    weight = np.add.reduceat(counts, edges[:-1])
    means = np.add.reduceat(distinct * counts, edges[:-1]) / weight
    starts = edges[_partition(means, weight, clusters - 1)]
    by_count = starts[1:] - (_MARGIN * np.diff(starts)).astype(np.intp)
    by_range = np.searchsorted(distinct, distinct[starts[1:]] - _MARGIN * np.diff(distinct[starts]))
    windows = np.zeros(clusters, np.intp)
    windows[2:] = np.minimum(by_count, by_range) - 2
    return windows


def _labels_of_runs(x, distinct, starts):
    """Cluster of each value when cluster i holds distinct[starts[i]:starts[i + 1]]."""
    return np.asarray(np.searchsorted(distinct[starts[1:]], x, side="right"), np.int32)


def nearest(values, centroids):
    """Index of each value's nearest centroid.

    Args:
        values: an array.
        centroids: a 1-D array, in any order (trained centroids need not stay sorted).

    Returns:
        An int32 array shaped like `values`, indexes into `centroids`.
    """
    centroids = np.asarray(centroids)
    order = np.argsort(centroids, kind="stable")
    ranked = centroids[order]
    return np.asarray(order[np.searchsorted((ranked[1:] + ranked[:-1]) / 2, values)], np.int32)


def _run_means(mean, w, s1, s2, bounds):
    """Means (uncentered) and total squared error of the runs between `bounds`."""
    weight = w[bounds[1:]] - w[bounds[:-1]]
    total = s1[bounds[1:]] - s1[bounds[:-1]]
    err = s2[bounds[1:]] - s2[bounds[:-1]] - total * total / weight
    return total / weight + mean, float(err.sum())


def _cluster_means(distinct, counts, bounds):
    """Mean of each run between `bounds`, summed per run (pairwise, not by prefix sums)."""
    weighted = distinct * counts
    runs = zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
    return np.array([weighted[a:b].sum() / counts[a:b].sum() for a, b in runs])


def optimal(values, clusters):
    """Exact 1-D k-means: the centroids with the least sum of squared errors.

    Dynamic programming over the sorted distinct values (module docstring); the result is
    the global optimum, not a local one. Time grows as `clusters * n log n` and memory as
    `clusters * n` for `n` distinct values: a million float32 weights take about 1.8 s of
    one core at 16 clusters, 4 s at 32 (`benchmarks/kmeans1d.py`).

    Args:
        values: array of real numbers, any shape (a weight tensor).
        clusters: number of centroids, an int in [1, number of distinct values].

    Returns:
        `(centroids, labels)`: float64 centroids sorted ascending (`clusters` of them,
        each the mean of its cluster) and int32 labels with the shape of `values`, the
        index of each value's centroid (its nearest one).

    Raises:
        ValueError: if `clusters` is not an int >= 1 or exceeds the number of distinct
            values, or if `values` is empty or not finite.

    Example:

    >>> centroids, labels = optimal([[0.0, 1.0, 2.0], [9.0, 10.0, 11.0]], 2)
    >>> centroids.tolist(), labels.tolist()
    ([1.0, 10.0], [[0, 0, 0], [1, 1, 1]])
    """
    x, distinct, counts = _distinct(values, clusters)
    windows = None
    if 2 < clusters <= _BINS // 8 and distinct.size >= 16 * _BINS:
        windows = _windows(distinct, counts, clusters)
    starts = _partition(distinct, counts, clusters, windows)
    if starts is None:  # a window guessed too high: fill the rows in full
        starts = _partition(distinct, counts, clusters)
    centroids = _cluster_means(distinct, counts, np.r_[starts, distinct.size])
    return centroids, _labels_of_runs(x, distinct, starts)


def _seed(distinct, counts, clusters, rng):
    """k-means++ seeding on weighted distinct values: each new centroid drawn ∝ count * D²."""
    chosen = [int(np.searchsorted(np.cumsum(counts), rng.random() * counts.sum(), "right"))]
    dist = counts * (distinct - distinct[chosen[0]]) ** 2
    for _ in range(1, clusters):
        cum = np.cumsum(dist)
        pick = min(int(np.searchsorted(cum, rng.random() * cum[-1], "right")), distinct.size - 1)
        chosen.append(pick)
        np.minimum(dist, counts * (distinct - distinct[pick]) ** 2, out=dist)
    return np.sort(distinct[chosen])


def _lloyd(distinct, counts, centroids, max_iter, sums):
    """Lloyd iterations; in 1-D a cluster is a run of sorted values, found by bisection.

    Returns the runs' bounds (indices into `distinct`) and their squared error.
    """
    mean, w, s1, s2 = sums
    bounds, err = None, np.inf
    for _ in range(max_iter):
        cuts = np.searchsorted(distinct, (centroids[1:] + centroids[:-1]) / 2, "right")
        new = np.r_[0, cuts, distinct.size]
        empty = np.flatnonzero(np.diff(new) == 0)
        if empty.size:  # move empty clusters' centroids to the worst-served values
            err_each = counts * (distinct - centroids[nearest(distinct, centroids)]) ** 2
            far = np.argpartition(err_each, -empty.size)[-empty.size :]
            centroids = np.sort(np.r_[np.delete(centroids, empty), distinct[far]])
            continue
        if bounds is not None and np.array_equal(new, bounds):
            break
        bounds = new
        centroids, err = _run_means(mean, w, s1, s2, bounds)
    return bounds, err


def kmeans_plus_plus(values, clusters, seed=0, n_init=3, max_iter=100):
    """1-D k-means by k-means++ seeding and Lloyd iterations, best of `n_init` runs.

    A local optimum, usually close to `optimal`'s error and never below it.

    Args:
        values: array of real numbers, any shape.
        clusters: number of centroids, an int in [1, number of distinct values].
        seed: seed of the NumPy generator that draws the seeds.
        n_init: number of seedings; the run with the least error is kept.
        max_iter: most Lloyd iterations per run.

    Returns:
        `(centroids, labels)` as in `optimal`: sorted float64 centroids and int32
        labels (index of each value's nearest centroid) with the shape of `values`.

    Raises:
        ValueError: as `optimal`, and if `n_init` or `max_iter` is not a positive int.

    Example:

    >>> centroids, labels = kmeans_plus_plus([0.0, 1.0, 2.0, 9.0, 10.0, 11.0], 2)
    >>> centroids.tolist(), labels.tolist()
    ([1.0, 10.0], [0, 0, 0, 1, 1, 1])
    """
    for name, value in (("n_init", n_init), ("max_iter", max_iter)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")
    x, distinct, counts = _distinct(values, clusters)
    sums = _prefix_sums(distinct, counts)
    rng = np.random.default_rng(seed)
    best, best_err = None, np.inf
    for _ in range(n_init):
        bounds, err = _lloyd(
            distinct, counts, _seed(distinct, counts, clusters, rng), max_iter, sums
        )
        if best is None or err < best_err:
            best, best_err = bounds, err
    centroids = _cluster_means(distinct, counts, best)
    return centroids, nearest(np.asarray(x, np.float64), centroids)


def sse(values, centroids, labels):
    """Quantization error: sum of `(value - centroids[label])**2`, in float64.

    Args:
        values: array of real numbers.
        centroids: 1-D array of centroids.
        labels: int array with the shape of `values`, indices into `centroids`.

    Returns:
        The sum of squared errors, a float.

    Raises:
        ValueError: if `labels` does not have the shape of `values` or indexes outside
            `centroids`.

    Example:

    >>> round(sse([0.0, 1.0, 4.0], [0.5, 4.0], [0, 0, 1]), 6)
    0.5
    """
    x = np.asarray(values, np.float64)
    c = np.asarray(centroids, np.float64).ravel()
    labels = np.asarray(labels)
    if labels.shape != x.shape:
        raise ValueError(f"`labels` has shape {labels.shape}; it must match values' {x.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= c.size):
        raise ValueError(f"`labels` must index the {c.size} centroids (0 to {c.size - 1}).")
    return float(np.sum((x - c[labels]) ** 2))
