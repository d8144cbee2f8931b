"""`Cluster`: weight sharing, each weight one of a few trained values (exact 1-D k-means)."""

import numbers

import keras
import numpy as np
from keras import ops

from keras_condensa import kmeans1d
from keras_condensa.operators.base import Operator
from keras_condensa.schedules import PruningSchedule

METHODS = ("optimal", "kmeans++")
MAX_CLUSTERS = 65536


def check_clusters(clusters):
    """Raises unless `clusters` is an int in [2, 65536]; returns it."""
    if (
        isinstance(clusters, bool)
        or not isinstance(clusters, numbers.Integral)
        or not 2 <= clusters <= MAX_CLUSTERS
    ):
        raise ValueError(
            f"clusters is the number of shared values of each weight and must be an int in "
            f"[2, {MAX_CLUSTERS}] (16 gives 4-bit indices). Received: clusters={clusters!r}"
        )
    return int(clusters)


@keras.saving.register_keras_serializable(package="keras_condensa")
class Cluster(Operator):
    """Weight sharing: each weight takes one of `clusters` trained values.

    The covered kernels are clustered one at a time: `method="optimal"` is
    exact 1-D k-means (dynamic programming over the sorted weights, the
    DP-Net / Ckmeans.1d.dp recurrence, `keras_condensa.kmeans1d.optimal`),
    `"kmeans++"` is k-means++ seeding with Lloyd iterations. The forward pass
    uses each weight's centroid; the centroids are trainable (each gets the
    sum of its weights' gradients) and the weights themselves train through
    the straight-through estimator, so that, with a `schedule`, weights that
    moved nearer another centroid are reassigned on its steps.
    `regularization` adds `regularization * mean((w - centroid(w))**2)` to
    the loss, which pulls weights towards their centroids between
    reassignments (DP-Net's clustering-friendly regularizer).

    Zeros stay exactly zero and are not clustered: after a pruning operator
    in a `kc.Compose` (`kc.Compose([kc.Prune(0.1), kc.Cluster(15)])`), a
    weight holds at most `clusters` nonzero values besides zero.

    Inside `kc.LC`, the C step is the clustering projection (Condensa's own
    formulation): every C step reclusters the shifted weights exactly.

    `kc.strip` bakes the shared values in, so a stripped kernel has at most
    `clusters + 1` distinct values and `kc.codec.save` codes it in a few
    bits per weight. LiteRT has no palettized weights: export a clustered
    model as int8 (its few distinct values stay few, so gzip shrinks it).

    Args:
        clusters: shared nonzero values per weight, an int in [2, 65536].
        method: `"optimal"` (exact, default) or `"kmeans++"`.
        symmetric: cluster magnitudes and keep signs, so that the values
            are `±centroid` (keeps `kc.Unify`'s blocks unified).
        regularization: weight of the pull towards the centroids (0: none).
        bias: also cluster the biases (each its own shared values). A bias
            with at most `clusters` distinct values keeps them all. On a
            small model the float biases can be a third of a coded file.
        schedule: a `kc.PruningSchedule` whose steps reassign the weights
            to their nearest centroid during `fit` (its sparsity is not
            used: `kc.ConstantSparsity(0.0, frequency=0.1)` reassigns every
            tenth of the run); the first due step clusters. `None`
            (default): clusters once at `apply`, assignments fixed, centroids
            fine-tuned.
        include: layer names or classes to cover (default: every kernel).
        exclude: layer names or classes to leave untouched.

    Raises:
        ValueError: at `apply`, when a kernel has fewer distinct nonzero
            values than `clusters` (the message names the layer).

    Example:

    ```python
    scheme = kc.Compose([kc.Prune(density=0.1), kc.Cluster(clusters=15)])
    clustered = scheme.apply(model)
    clustered.compile(...)
    clustered.fit(x, y, epochs=3, callbacks=kc.callbacks(scheme))
    kc.codec.save(kc.strip(clustered), "model.kcz")
    ```
    """

    scheme_word = "cluster"
    scheme_args = ("K",)
    scheme_help = "weight sharing: K trained values per kernel (exact 1-D k-means)"

    def __init__(
        self,
        clusters=16,
        method="optimal",
        symmetric=False,
        regularization=0.0,
        bias=False,
        schedule=None,
        include=None,
        exclude=None,
    ):
        super().__init__(include=include, exclude=exclude)
        self.clusters = check_clusters(clusters)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}. Received: method={method!r}")
        if not isinstance(regularization, numbers.Real) or not regularization >= 0:
            raise ValueError(
                f"regularization must be a number >= 0. Received: regularization={regularization!r}"
            )
        if schedule is not None and not isinstance(schedule, PruningSchedule):
            raise TypeError(
                "schedule says when weights are reassigned and must be a kc.PruningSchedule, "
                f"e.g. kc.ConstantSparsity(0.0, frequency=0.1). Received: schedule={schedule!r}"
            )
        self.method = method
        self.symmetric = bool(symmetric)
        self.regularization = float(regularization)
        self.bias = bool(bias)
        self.schedule = schedule.with_final_sparsity(0.0) if schedule is not None else None

    def paths(self, layer, spec):
        return tuple(spec.weights) + ((spec.bias,) if self.bias and spec.bias else ())

    def build(self, wrapper, path, variable):
        prefix = path.replace(".", "_")
        return {
            "centroids": wrapper.add_weight(
                name=f"{prefix}_centroids",
                shape=(self.clusters,),
                initializer="zeros",
                trainable=True,
            ),
            "labels": wrapper.add_weight(
                name=f"{prefix}_labels",
                shape=variable.shape,
                dtype="int32",
                initializer="zeros",
                trainable=False,
            ),
            "clustered": wrapper.add_weight(
                name=f"{prefix}_clustered", shape=(), initializer="zeros", trainable=False
            ),
            # 0 where the weight was zero when clustered (pruned before): it stays zero.
            "live": wrapper.add_weight(
                name=f"{prefix}_live",
                shape=variable.shape,
                initializer="ones",
                trainable=False,
            ),
        }

    def _zero(self, state, value):
        """Where the weight is zero: zero now (a pruner before this one), or when clustered."""
        return ops.logical_or(ops.equal(value, 0), ops.equal(state["live"], 0))

    def shared(self, state, value):
        """Each weight's centroid (`±centroid` when symmetric), zeros kept."""
        centroids = ops.cast(state["centroids"], value.dtype)
        shared = ops.take(centroids, state["labels"])
        if self.symmetric:
            shared = ops.sign(value) * shared
        return ops.where(self._zero(state, value), ops.zeros((), value.dtype), shared)

    def transform(self, state, value, training):
        # Centroid values forward; the gradient reaches both the centroids and the weights,
        # and not the zeros, which stay zero.
        zero = ops.zeros((), value.dtype)
        moved = ops.where(self._zero(state, value), zero, value - ops.stop_gradient(value))
        out = self.shared(state, value) + moved
        return ops.where(ops.not_equal(state["clustered"], 0), out, value)

    def finalize(self, state, value):
        return ops.where(ops.not_equal(state["clustered"], 0), self.shared(state, value), value)

    def losses(self, state, value):
        if not self.regularization:
            return []
        gap = value - ops.stop_gradient(self.shared(state, value))
        live = ops.cast(state["clustered"], value.dtype)
        return [self.regularization * live * ops.mean(ops.square(gap))]

    # -- host side ------------------------------------------------------------
    def update(self, items, context):
        """Clusters every covered weight (at `apply`, or the schedule's first due step).

        On the schedule's later steps, reassigns each weight to its nearest centroid.
        """
        for item in items:
            for path in item.paths:
                state = item.states[path]
                value = np.asarray(item.values[path])
                first = context.step is None or not float(ops.convert_to_numpy(state["clustered"]))
                if first:
                    centroids, labels = self._cluster(item, path, value)
                    context.assign(state["centroids"], centroids.astype(state["centroids"].dtype))
                    context.assign(state["clustered"], np.asarray(1.0, "float32"))
                    context.assign(state["live"], (value != 0).astype(state["live"].dtype))
                else:
                    centroids = np.asarray(ops.convert_to_numpy(state["centroids"]), "float64")
                    labels = kmeans1d.nearest(self._points(value), centroids)
                context.assign(state["labels"], labels.astype("int32"))

    def _points(self, value):
        return np.abs(value) if self.symmetric else value

    def _cluster(self, item, path, value):
        points = self._points(value)
        live = points[value != 0]
        distinct = np.unique(live)
        if distinct.size <= self.clusters and path not in item.spec.weights:  # a small bias
            last = distinct[-1:] if distinct.size else np.zeros(1)
            centroids = np.concatenate([distinct, np.repeat(last, self.clusters)])
            full = np.zeros(value.shape, "int64")
            full[value != 0] = np.searchsorted(distinct, live)
            return centroids[: self.clusters], full
        distinct = distinct.size
        if distinct < self.clusters:
            raise ValueError(
                f"Cluster(clusters={self.clusters}) cannot cluster '{path}' of layer "
                f"'{item.wrapper.layer.name}': it has {distinct} distinct nonzero "
                f"{'magnitudes' if self.symmetric else 'values'}. Lower clusters to at most "
                f"{distinct}, or exclude the layer (exclude=['{item.wrapper.layer.name}'])."
            )
        if self.method == "optimal":
            centroids, labels = kmeans1d.optimal(live, self.clusters)
        else:
            centroids, labels = kmeans1d.kmeans_plus_plus(live, self.clusters)
        full = np.zeros(value.shape, "int64")
        full[value != 0] = labels
        return np.asarray(centroids), full

    def get_config(self):
        config = super().get_config()
        config.update(
            clusters=self.clusters,
            method=self.method,
            symmetric=self.symmetric,
            regularization=self.regularization,
            bias=self.bias,
            schedule=(
                None
                if self.schedule is None
                else keras.saving.serialize_keras_object(self.schedule)
            ),
        )
        return config

