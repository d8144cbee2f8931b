"""Optimal 1-D k-means (`keras_condensa.kmeans1d`): exact, never beaten, clear errors."""

import itertools

import numpy as np
import pytest
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from keras_condensa import kmeans1d


def brute_force_sse(values, clusters):
    """Least error over every split of the sorted values into `clusters` runs."""
    x = np.sort(np.asarray(values, np.float64).ravel())
    best = np.inf
    for cuts in itertools.combinations(range(1, x.size), clusters - 1):
        runs = np.split(x, cuts)
        best = min(best, sum(float(((r - r.mean()) ** 2).sum()) for r in runs))
    return best


def weight_like(kind, size, seed):
    """Samples shaped like trained weights (float32, as a layer stores them)."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.normal(0.0, 0.05, size)
    elif kind == "laplace":
        x = rng.laplace(0.0, 0.03, size)
    elif kind == "bimodal":
        x = np.where(rng.random(size) < 0.5, -0.1, 0.1) + rng.normal(0.0, 0.02, size)
    else:  # "pruned": 80% exact zeros, the rest heavy-tailed
        x = rng.laplace(0.0, 0.05, size) * (rng.random(size) < 0.2)
    return x.astype("float32")


@pytest.mark.parametrize("seed", range(6))
def test_optimal_matches_brute_force_with_duplicates(seed):
    rng = np.random.default_rng(seed)
    values = np.r_[rng.integers(-3, 4, 7) * 0.5, rng.normal(0.0, 1.0, 4)]
    distinct = np.unique(values).size
    for clusters in range(1, distinct + 1):
        centroids, labels = kmeans1d.optimal(values, clusters)
        assert centroids.shape == (clusters,)
        assert np.all(np.diff(centroids) > 0)
        assert kmeans1d.sse(values, centroids, labels) == pytest.approx(
            brute_force_sse(values, clusters), rel=1e-9, abs=1e-12
        )


@pytest.mark.parametrize("kind", ["normal", "laplace", "bimodal", "pruned"])
def test_optimal_never_worse_than_kmeans_plus_plus_or_sklearn(kind):
    values = weight_like(kind, 6_000, seed=1).reshape(30, 200)
    for clusters in (4, 16):
        error = kmeans1d.sse(values, *kmeans1d.optimal(values, clusters))
        heuristic = kmeans1d.sse(values, *kmeans1d.kmeans_plus_plus(values, clusters))
        reference = KMeans(n_clusters=clusters, init="k-means++", n_init=3, random_state=0)
        with threadpool_limits(1):  # threads only slow a fit this small down
            reference.fit(values.reshape(-1, 1).astype(np.float64))
        assert error <= heuristic * (1 + 1e-12)
        assert error <= reference.inertia_ * (1 + 1e-9)


def test_windowed_rows_agree_with_full_programme():
    # Past 32768 distinct values the rows are only filled from guessed windows up.
    for kind, size, clusters in (
        ("normal", 40_000, 8),
        ("pruned", 200_000, 5),
        ("bimodal", 40_000, 12),
    ):
        values = weight_like(kind, size, seed=2)
        _, distinct, counts = kmeans1d._distinct(values, clusters)
        assert distinct.size > 16 * kmeans1d._BINS
        windows = kmeans1d._windows(distinct, counts, clusters)
        assert windows[2:].min() > 0  # the guess does prune
        full = kmeans1d._partition(distinct, counts, clusters)
        np.testing.assert_array_equal(
            kmeans1d._partition(distinct, counts, clusters, windows), full
        )
        # Windows guessed too high are caught (None, then the full fill), never wrong.
        high = np.full(clusters, distinct.size - clusters)
        assert kmeans1d._partition(distinct, counts, clusters, high) is None


@pytest.mark.parametrize("method", [kmeans1d.optimal, kmeans1d.kmeans_plus_plus])
def test_labels_index_the_nearest_centroid(method):
    values = weight_like("laplace", 5_000, seed=3).reshape(50, 100)
    centroids, labels = method(values, 7)
    assert labels.shape == values.shape and labels.dtype == np.int32
    assert centroids.dtype == np.float64 and np.all(np.diff(centroids) > 0)
    x = values.astype(np.float64)
    gap = np.abs(x - centroids[labels])
    nearest = np.abs(x[..., None] - centroids).min(axis=-1)
    assert np.all(gap <= nearest + 1e-12)
    if method is kmeans1d.optimal:  # each centroid is the mean of its cluster
        means = [x[labels == i].mean() for i in range(centroids.size)]
        np.testing.assert_allclose(centroids, means, rtol=1e-12, atol=1e-15)


def test_one_cluster_and_one_cluster_per_distinct_value():
    values = np.array([[3.0, 1.0], [1.0, 2.0]])
    centroids, labels = kmeans1d.optimal(values, 1)
    np.testing.assert_allclose(centroids, [1.75])
    assert labels.tolist() == [[0, 0], [0, 0]]
    centroids, labels = kmeans1d.optimal(values, 3)
    np.testing.assert_allclose(centroids, [1.0, 2.0, 3.0])
    assert kmeans1d.sse(values, centroids, labels) == 0.0
    assert labels.tolist() == [[2, 0], [0, 1]]


@pytest.mark.parametrize("method", [kmeans1d.optimal, kmeans1d.kmeans_plus_plus])
def test_bad_arguments_raise_clear_errors(method):
    values = np.array([0.0, 1.0, 1.0, 2.0])
    for clusters in (0, -2, 2.5, True, "3", None):
        with pytest.raises(ValueError, match="`clusters` must be an int >= 1"):
            method(values, clusters)
    with pytest.raises(ValueError, match="3 distinct values.*lower `clusters` to at most 3"):
        method(values, 4)
    with pytest.raises(ValueError, match="empty"):
        method(np.zeros((0, 3)), 2)
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="NaN or infinite"):
            method([0.0, bad, 1.0], 2)


def test_sse_checks_labels():
    assert kmeans1d.sse([0.0, 1.0, 4.0], [0.5, 4.0], [0, 0, 1]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        kmeans1d.sse([0.0, 1.0], [0.5], [0])
    with pytest.raises(ValueError, match="index the 1 centroids"):
        kmeans1d.sse([0.0, 1.0], [0.5], [0, 1])
