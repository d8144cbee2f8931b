"""Weight sharing: `kc.Cluster` (exact 1-D k-means) and `kc.Unify` (one magnitude per block)."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier, lenet_300_100

import keras_condensa as kc
from keras_condensa import scheme_grammar


def kernels(model):
    return {
        layer.name: np.asarray(layer.kernel)
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense)
    }


def nonzero_distinct(value):
    return np.unique(value[value != 0]).size


def test_cluster_shares_values_and_fine_tunes_centroids(trained_lenet, digits):
    model, dense_accuracy = trained_lenet
    x_train, y_train, x_val, y_val = digits
    scheme = kc.Cluster(clusters=16)
    clustered = compile_classifier(scheme.apply(model))
    applied = clustered.evaluate(x_val, y_val, verbose=0)[1]
    centroids_before = np.asarray(clustered.layers[1].states[(0, "kernel")]["centroids"]).copy()
    clustered.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    final = kc.strip(clustered)
    for name, kernel in kernels(final).items():
        assert np.unique(kernel).size <= 16, name
    centroids_after = np.asarray(clustered.layers[1].states[(0, "kernel")]["centroids"])
    assert not np.allclose(centroids_before, centroids_after)  # the shared values trained
    # 16 shared values lose little on LeNet; the stripped model computes what was trained.
    assert applied >= dense_accuracy - 0.03
    np.testing.assert_allclose(
        final.predict(x_val, verbose=0), clustered.predict(x_val, verbose=0), atol=1e-5
    )
    assert clustered.evaluate(x_val, y_val, verbose=0)[1] >= dense_accuracy - 0.03
    # The user's model is not modified.
    assert np.unique(np.asarray(model.layers[0].kernel)).size > 1000


def test_cluster_keeps_pruned_zeros_exactly(trained_lenet):
    model, _ = trained_lenet
    scheme = kc.Compose([kc.Prune(density=0.1), kc.Cluster(clusters=15)])
    final = kc.strip(scheme.apply(model))
    pruned = kc.strip(kc.Prune(density=0.1).apply(model))
    for name, kernel in kernels(final).items():
        # Zeros where pruning put them, no others: the smallest centroid is not zero.
        np.testing.assert_array_equal(kernel != 0, kernels(pruned)[name] != 0)
        assert nonzero_distinct(kernel) <= 15, name
        assert np.unique(kernel).size <= 16


def test_cluster_alone_keeps_the_zeros_of_a_pruned_model(trained_lenet, digits):
    model, _ = trained_lenet
    x_train, y_train, _, _ = digits
    pruned = kc.strip(kc.Prune(density=0.1).apply(model))
    clustered = compile_classifier(kc.Cluster(clusters=8).apply(pruned))
    clustered.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    for name, kernel in kernels(kc.strip(clustered)).items():
        np.testing.assert_array_equal(kernel != 0, kernels(pruned)[name] != 0)


def test_cluster_biases_too(trained_lenet):
    model, _ = trained_lenet
    final = kc.strip(kc.Compose([kc.Prune(0.1), kc.Cluster(8, bias=True)]).apply(model))
    for layer in final.layers:
        assert np.unique(np.asarray(layer.bias)).size <= 8 + 1, layer.name  # zero is kept


def test_optimal_clusters_no_worse_than_kmeans_plus_plus(trained_lenet):
    model, _ = trained_lenet
    errors = {}
    for method in ("optimal", "kmeans++"):
        final = kc.strip(kc.Cluster(clusters=8, method=method).apply(model))
        errors[method] = sum(
            float(np.sum((kernels(final)[name] - kernel) ** 2))
            for name, kernel in kernels(model).items()
        )
    assert errors["optimal"] <= errors["kmeans++"] * (1 + 1e-9)


def test_cluster_reassigns_on_its_schedule(trained_lenet, digits):
    model, dense_accuracy = trained_lenet
    x_train, y_train, x_val, y_val = digits
    scheme = kc.Cluster(clusters=8, schedule=kc.ConstantSparsity(0.0, frequency=0.25))
    clustered = compile_classifier(scheme.apply(model))
    state = clustered.layers[0].states[(0, "kernel")]
    assert float(np.asarray(state["clustered"])) == 0.0  # scheduled: clusters on its first step

    def fit():
        clustered.fit(
            x_train, y_train, epochs=2, batch_size=64, verbose=0, callbacks=kc.callbacks(scheme)
        )
        return np.asarray(state["labels"]).copy()

    first = fit()
    assert float(np.asarray(state["clustered"])) == 1.0
    # The weights train through the shared values and move to other clusters.
    assert np.count_nonzero(fit() != first) > 0
    for name, kernel in kernels(kc.strip(clustered)).items():
        assert np.unique(kernel).size <= 8, name
    assert clustered.evaluate(x_val, y_val, verbose=0)[1] >= dense_accuracy - 0.05


def test_lc_projects_onto_clusters(trained_lenet, digits):
    model, dense_accuracy = trained_lenet
    x_train, y_train, x_val, y_val = digits
    lc = kc.LC(kc.Compose([kc.Prune(density=0.2), kc.Cluster(clusters=8)]), steps=6)
    final = lc.fit(model, x_train, y_train, epochs=3, batch_size=64, seed=0)
    total = sum(k.size for k in kernels(final).values())
    nonzeros = sum(np.count_nonzero(k) for k in kernels(final).values())
    assert nonzeros / total == pytest.approx(0.2, abs=0.002)
    for name, kernel in kernels(final).items():
        assert nonzero_distinct(kernel) <= 8, name
    assert final.evaluate(x_val, y_val, verbose=0)[1] >= dense_accuracy - 0.05


def test_unify_blocks_share_one_magnitude_after_strip(trained_lenet, digits):
    model, dense_accuracy = trained_lenet
    x_train, y_train, x_val, y_val = digits
    lc = kc.LC(kc.Unify(block=(1, 4), density=0.5), steps=6)
    final = lc.fit(model, x_train, y_train, epochs=3, batch_size=64, seed=0)
    for name, kernel in kernels(final).items():
        rows, cols = kernel.shape
        pad = (-cols) % 4
        tiles = np.abs(np.pad(kernel, [(0, 0), (0, pad)], constant_values=np.nan))
        tiles = tiles.reshape(rows, -1, 4)
        spread = np.nanmax(tiles, axis=-1) - np.nanmin(tiles, axis=-1)
        assert np.all(spread <= 1e-6 * (1 + np.nanmax(tiles, axis=-1))), name
        kept = np.nanmax(tiles, axis=-1) > 0
        assert kept.mean() == pytest.approx(0.5, abs=0.01), name
    # Half the blocks and one magnitude per block: L-C on a short budget keeps most accuracy.
    assert final.evaluate(x_val, y_val, verbose=0)[1] >= dense_accuracy - 0.15


def test_unify_then_symmetric_cluster_keeps_blocks(trained_lenet):
    model, _ = trained_lenet
    scheme = kc.Compose([kc.Unify(block=(1, 4), density=0.5), kc.Cluster(4, symmetric=True)])
    final = kc.strip(scheme.apply(model))
    kernel = kernels(final)["fc1"]
    assert np.unique(np.abs(kernel[kernel != 0])).size <= 4
    tiles = np.abs(kernel).reshape(kernel.shape[0], -1, 4)
    assert np.all(tiles.max(axis=-1) == tiles.min(axis=-1))


def test_cluster_saved_mid_training_continues(tmp_path, trained_lenet, digits):
    model, _ = trained_lenet
    x_train, y_train, _, _ = digits
    clustered = compile_classifier(kc.Cluster(clusters=8).apply(model))
    path = tmp_path / "clustered.keras"
    clustered.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(kc.scheme_of(loaded), kc.Cluster)
    np.testing.assert_array_equal(
        kernels(kc.strip(loaded))["fc1"], kernels(kc.strip(clustered))["fc1"]
    )
    loaded.fit(x_train[:256], y_train[:256], epochs=1, batch_size=64, verbose=0)
    assert np.unique(kernels(kc.strip(loaded))["fc1"]).size <= 8


def test_scheme_words_parse():
    scheme = scheme_grammar.parse_scheme("prune:0.1+cluster:15")
    assert [type(op) for op in scheme.operators()] == [kc.Prune, kc.Cluster]
    assert scheme.operators()[1].clusters == 15
    unify = scheme_grammar.parse_scheme("unify:0.3:1x4")
    assert (unify.density, unify.block) == (0.3, (1, 4))


@pytest.mark.parametrize("clusters", [1, 0, 2.5, "16", True, 70000])
def test_cluster_count_out_of_range(clusters):
    with pytest.raises(ValueError, match="clusters"):
        kc.Cluster(clusters=clusters)


def test_cluster_count_above_distinct_values_names_the_layer():
    keras.utils.set_random_seed(0)
    model = lenet_300_100()
    few = np.round(np.asarray(model.get_layer("fc2").kernel) * 4) / 4  # a handful of values
    model.get_layer("fc2").kernel.assign(few)
    with pytest.raises(ValueError, match=r"'fc2'.*distinct nonzero values.*exclude"):
        kc.Cluster(clusters=32).apply(model)


@pytest.mark.parametrize("block", [(0, 4), (4,), "1x4", (1.0, 4)])
def test_unify_bad_block(block):
    with pytest.raises(ValueError, match="block"):
        kc.Unify(block=block)


def test_bad_cluster_arguments():
    with pytest.raises(ValueError, match="method"):
        kc.Cluster(8, method="lloyd")
    with pytest.raises(ValueError, match="regularization"):
        kc.Cluster(8, regularization=-1.0)
    with pytest.raises(TypeError, match="schedule"):
        kc.Cluster(8, schedule=10)
