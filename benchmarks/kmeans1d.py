"""Optimal 1-D k-means (`keras_condensa.kmeans1d`) against k-means++ and scikit-learn's KMeans.

    .venv/bin/python benchmarks/kmeans1d.py
    .venv/bin/python benchmarks/kmeans1d.py --sizes 10000,100000 --clusters 4,16   # quicker

Weight sharing clusters each tensor's values; in one dimension the clustering with the
least squared error can be found exactly (`kmeans1d.optimal`, a dynamic programme). The
values are float32 standard-normal samples (`np.random.default_rng(0)`), as a layer
stores its weights. For each size `n` and cluster count `k`:

- DP s:      `kmeans1d.optimal`, median wall-clock seconds of 3 runs (DP cpu: CPU seconds);
- k++ s:     `kmeans1d.kmeans_plus_plus(n_init=3)`, one run;
- sklearn s: `sklearn.cluster.KMeans(k, init="k-means++", n_init=3, random_state=0)` on the
             values as float64, one run, one thread (threadpoolctl);
- SSE DP/k++ and DP/sklearn: the DP's squared error over the heuristics' (never above 1).

Everything runs on one core (NumPy's element-wise work is single-threaded). Then the goal
of issue #19: a million float32 weights (normal and Laplace) at k=16 in under 2 s of one
core; DP median of 3, CPU and wall-clock seconds. On a shared machine the wall clock also
counts the time spent waiting for a core (the load average is printed), so the verdict
reads the CPU time.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from keras_condensa import kmeans1d  # noqa: E402

GOAL_SECONDS = 2.0


def timed(fn, *args, **kwargs):
    """`(result, wall seconds, CPU seconds)` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def dp_runs(values, clusters, repeats):
    """The DP's result and the median wall and CPU seconds of `repeats` runs."""
    runs = [timed(kmeans1d.optimal, values, clusters) for _ in range(repeats)]
    wall = statistics.median(r[1] for r in runs)
    cpu = statistics.median(r[2] for r in runs)
    return runs[0][0], wall, cpu


def row(values, clusters, repeats):
    (centroids, labels), dp_wall, dp_cpu = dp_runs(values, clusters, repeats)
    dp_sse = kmeans1d.sse(values, centroids, labels)
    (pp_centroids, pp_labels), pp_wall, _ = timed(kmeans1d.kmeans_plus_plus, values, clusters)
    pp_sse = kmeans1d.sse(values, pp_centroids, pp_labels)
    reference = KMeans(n_clusters=clusters, init="k-means++", n_init=3, random_state=0)
    with threadpool_limits(1):
        _, sk_wall, _ = timed(reference.fit, values.reshape(-1, 1).astype(np.float64))
    return dp_wall, dp_cpu, pp_wall, sk_wall, dp_sse / pp_sse, dp_sse / reference.inertia_


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--clusters", default="4,16,32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cluster_counts = [int(k) for k in args.clusters.split(",")]

    print(f"numpy {np.__version__}; load average before: {os.getloadavg()[0]:.1f}")
    columns = [("n", 9), ("k", 3), ("DP s", 7), ("DP cpu", 7), ("k++ s", 7), ("sklearn s", 9)]
    columns += [("DP/k++", 8), ("DP/sklearn", 10)]
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    print(header)
    print("-" * len(header))
    for n in sizes:
        values = np.random.default_rng(0).standard_normal(n).astype("float32")
        for k in cluster_counts:
            dp, cpu, pp, sk, vs_pp, vs_sk = row(values, k, args.repeats)
            times = f"{dp:7.3f} {cpu:7.3f} {pp:7.3f} {sk:9.3f}"
            print(f"{n:>9} {k:>3} {times} {vs_pp:8.6f} {vs_sk:10.6f}", flush=True)

    print(f"\nGoal: 1,000,000 float32 weights, k=16, under {GOAL_SECONDS:.0f} s on one core")
    rng = np.random.default_rng(0)
    samples = {
        "normal": rng.standard_normal(1_000_000).astype("float32"),
        "laplace": rng.laplace(size=1_000_000).astype("float32"),
    }
    for name, values in samples.items():
        _, wall, cpu = dp_runs(values, 16, args.repeats)
        verdict = "met" if cpu < GOAL_SECONDS else "missed"
        times = f"DP CPU {cpu:.2f} s, wall {wall:.2f} s (median of {args.repeats})"
        print(f"  {name:8s} {times}: {verdict}")
    print(f"load average after: {os.getloadavg()[0]:.1f} (2 cores)")


if __name__ == "__main__":
    main()
