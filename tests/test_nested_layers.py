"""Layers nested in custom layers and subclassed models are reached, copied and stripped.

`scheme.apply` wraps a custom layer as a whole and transforms the weights of
its sublayers by attribute path; a subclassed model is wrapped in a functional
model that `kc.strip` unwraps again.
"""

import warnings

import keras
import numpy as np
import pytest
from conftest import compile_classifier, quantized_weights, weights_of

import keras_condensa as kc
from keras_condensa import masking


@keras.saving.register_keras_serializable(package="test_nested_layers")
class Block(keras.layers.Layer):
    """A residual MLP block holding Dense layers as an attribute and in a list, and a weight."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.expand = keras.layers.Dense(units * 2, activation="relu", name="expand")
        self.branches = [keras.layers.Dense(units, name=f"branch{i}") for i in range(2)]
        self.norm = keras.layers.LayerNormalization(name="norm")

    def build(self, input_shape):
        self.expand.build(input_shape)
        for branch in self.branches:
            branch.build((None, self.units * 2))
        self.norm.build((None, self.units))
        self.gain = self.add_weight(shape=(self.units,), initializer="ones", name="gain")

    def call(self, x):
        h = self.expand(x)
        return self.norm(x + self.gain * (self.branches[0](h) + self.branches[1](h)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def block_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    h = Block(64, name="block")(inputs)
    outputs = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs)


@keras.saving.register_keras_serializable(package="test_nested_layers")
class Classifier(keras.Model):
    """A subclassed model: its layers are called in Python."""

    def __init__(self, hidden=64, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.body = Block(hidden, name="body")
        self.head = keras.layers.Dense(10, name="head")

    def call(self, x):
        return self.head(self.body(x))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


def _nested_density(model, names):
    rows = {r.name: r for r in kc.summary(model, print_fn=None).rows}
    return {n: rows[n].density for n in names}


def test_dense_layers_inside_a_custom_layer_are_pruned_to_the_global_density(digits):
    x, y, x_val, _ = digits
    model = compile_classifier(block_model())
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    before = weights_of(model)
    scheme = kc.Prune(density=0.2)
    with pytest.warns(UserWarning, match=r"cannot reach 64 trainable parameters.*block \(Block\)"):
        pruned = scheme.apply(model)
    assert all(
        np.array_equal(a, b) for a, b in zip(before, weights_of(model), strict=True)
    )  # untouched
    info = kc.summary(pruned, print_fn=None)
    nested = _nested_density(pruned, ["block/expand", "block/branch0", "block/branch1"])
    assert all(0.05 < d < 0.5 for d in nested.values()), nested
    assert info.masked_density == pytest.approx(0.2, abs=0.005)
    assert info.skipped["block/norm"] == "normalization scales are not pruned"
    assert 0.9 < info.coverage < 1.0
    compile_classifier(pruned).fit(x, y, epochs=1, batch_size=64, verbose=0)
    final = kc.strip(pruned)
    assert not list(masking.iter_wrappers(final))
    assert isinstance(final.get_layer("block"), Block)
    np.testing.assert_allclose(
        final.predict(x_val, verbose=0), pruned.predict(x_val, verbose=0), atol=1e-5
    )
    assert "block/expand" in {r.name for r in kc.summary(final, print_fn=None).rows}
    mask = next(masking.iter_wrappers(pruned)).masks["expand.kernel"]
    assert np.count_nonzero(final.get_layer("block").expand.kernel) == int(np.sum(mask))


def test_a_wrapped_custom_layer_saves_and_loads_with_its_masks(tmp_path, digits):
    x, y, x_val, _ = digits
    scheme = kc.Prune(0.3, exclude=["logits"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pruned = compile_classifier(scheme.apply(block_model()))
    pruned.save(tmp_path / "pruned.keras")
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")
    np.testing.assert_allclose(
        loaded.predict(x_val, verbose=0), pruned.predict(x_val, verbose=0), atol=1e-6
    )
    loaded.fit(x, y, epochs=1, batch_size=64, verbose=0)
    kernel = kc.strip(loaded).get_layer("block").branches[1].kernel
    mask = next(masking.iter_wrappers(loaded)).masks["branches.1.kernel"]
    assert np.all(np.asarray(kernel)[np.asarray(mask) == 0] == 0)


def test_include_names_a_nested_layer_by_name_or_path():
    model = block_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        by_name = kc.Prune(0.5, include=["branch0"]).apply(model)
        by_path = kc.Prune(0.5, include=["block/branch0"]).apply(model)
    for pruned in (by_name, by_path):
        (wrapper,) = masking.iter_wrappers(pruned)
        assert wrapper.masked_weights == ("branches.0.kernel",)
    with pytest.raises(ValueError, match=r"names layers that are not in model.*branch7"):
        kc.Prune(0.5, include=["branch7"]).apply(model)


def test_nested_layers_take_structured_pruning_and_quantization(digits):
    x, y, x_val, _ = digits
    scheme = kc.Compose([kc.NeuronPrune(0.5, include=["expand"]), kc.Quantize("int8")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        qat = compile_classifier(scheme.apply(block_model()))
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    wrapper = next(w for w in masking.iter_wrappers(qat) if w.layer.name == "block")
    assert set(quantized_weights(wrapper)) == {
        "expand.kernel",
        "branches.0.kernel",
        "branches.1.kernel",
    }
    mask = np.asarray(wrapper.masks["expand.kernel"])
    assert sorted(set(mask.sum(axis=0))) == [0.0, 64.0]  # whole neurons
    assert mask.sum(axis=0).astype(bool).sum() == 64


def test_a_subclassed_model_is_compressed_and_strip_gives_back_its_class(digits):
    x, y, x_val, _ = digits
    keras.utils.set_random_seed(0)
    model = compile_classifier(Classifier())
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    before = weights_of(model)
    scheme = kc.Prune(
        0.25, schedule=kc.PolynomialDecay(end_step=0.5, frequency=5), exclude=["head"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pruned = compile_classifier(scheme.apply(model))
    pruned.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=kc.callbacks(scheme))
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(model), strict=True))
    final = kc.strip(pruned)
    assert isinstance(final, Classifier) and final.name == model.name
    np.testing.assert_allclose(
        final.predict(x_val, verbose=0), pruned.predict(x_val, verbose=0), atol=1e-5
    )
    assert kc.summary(final, print_fn=None).rows[-1].density == 1.0  # the excluded head
    assert pruned.evaluate(x_val, verbose=0, y=_y_val(digits))[1] > 0.8


def _y_val(digits):
    return digits[3]


def test_a_subclassed_model_that_cannot_be_copied_says_what_it_needs():
    class Opaque(keras.Model):
        def __init__(self, layer):
            super().__init__()
            self.inner = layer

        def call(self, x):
            return self.inner(x)

    model = Opaque(keras.layers.Dense(4))
    model(np.zeros((2, 8), "float32"))
    with pytest.raises(
        TypeError, match=r"(?s)Cannot copy subclassed model.*get_config\(\) that returns"
    ):
        kc.Prune(0.5).apply(model)


def test_an_unbuilt_subclassed_model_is_a_clear_error():
    with pytest.raises(ValueError, match="is not built"):
        kc.Prune(0.5).apply(Classifier())


def test_bidirectional_and_time_distributed_layers_are_reached():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(50, 8, name="emb")(inputs)
    h = keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True), name="bi")(h)
    h = keras.layers.TimeDistributed(keras.layers.Dense(4), name="td")(h)
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    pruned = kc.Prune(0.3).apply(model)
    paths = {w.layer.name: set(w.masked_weights) for w in masking.iter_wrappers(pruned)}
    assert paths["bi"] == {
        "forward_layer.cell.kernel",
        "forward_layer.cell.recurrent_kernel",
        "backward_layer.cell.kernel",
        "backward_layer.cell.recurrent_kernel",
    }
    assert paths["td"] == {"layer.kernel"}
    assert kc.summary(pruned, print_fn=None).masked_density == pytest.approx(0.3, abs=0.01)
    x = np.random.default_rng(0).integers(0, 50, (8, 12)).astype("int32")
    np.testing.assert_allclose(
        kc.strip(pruned).predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5
    )


@keras.saving.register_keras_serializable(package="test_nested_layers")
class LazyBlock(keras.layers.Layer):
    """Sublayers built by the first call (no build()), as the Keras guide's examples do."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(32, activation="relu")
        self.out = keras.layers.Dense(16)

    def call(self, x):
        return self.out(self.hidden(x))


def test_a_custom_layer_without_build_and_auto_named_sublayers_keeps_its_masks(digits, tmp_path):
    x, y, x_val, _ = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    outputs = keras.layers.Dense(10, name="logits")(LazyBlock(name="lazy")(inputs))
    model = compile_classifier(keras.Model(inputs, outputs))
    hidden_name = model.get_layer("lazy").hidden.name  # an automatic name, e.g. "dense_12"
    scheme = kc.Prune(
        0.2, include=[hidden_name], schedule=kc.PolynomialDecay(end_step=0.5, frequency=5)
    )
    pruned = scheme.apply(model)
    assert pruned.get_layer("lazy_compressed").layer.hidden.name == hidden_name
    pruned.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=kc.callbacks(scheme))
    pruned.save(tmp_path / "lazy.keras")
    loaded = keras.saving.load_model(tmp_path / "lazy.keras")
    loaded.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=kc.callbacks(scheme))
    # The reloaded sublayer has another automatic name: its mask is kept, not reset to ones.
    (wrapper,) = [w for w in masking.iter_wrappers(loaded)]
    assert float(np.mean(np.asarray(wrapper.masks["hidden.kernel"]))) == pytest.approx(
        0.2, abs=0.01
    )


def test_apply_keeps_the_compile_set_up_of_a_compiled_model():
    model = block_model()
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
        run_eagerly=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pruned = kc.Prune(0.5).apply(model)
    config = pruned._compile_config.config
    assert (
        isinstance(pruned.optimizer, keras.optimizers.SGD)
        and pruned.optimizer is not model.optimizer
    )
    assert config["run_eagerly"] is True
    assert config["metrics"][0] is not model._compile_config.config["metrics"][0]


class _ListHeld(keras.layers.Layer):
    """A layer that keeps its weight in a list and shows it through a property."""

    def build(self, input_shape):
        self._held = [self.add_weight(shape=(input_shape[-1], 4), name="w")]

    @property
    def kernel(self):
        return self._held[0]

    def call(self, x):
        return x @ self.kernel


kc.register_prunable(_ListHeld, lambda layer: kc.PruneSpec(weights=("kernel",)))


@keras.saving.register_keras_serializable(package="test_nested_layers")
class Holder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = _ListHeld(name="held")
        self.dense = keras.layers.Dense(4, name="ok")

    def build(self, input_shape):
        self.inner.build(input_shape)
        self.dense.build((None, 4))

    def call(self, x):
        return self.dense(self.inner(x))


def test_a_nested_weight_that_cannot_be_swapped_is_skipped_with_its_path_or_refused():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, Holder(name="holder")(inputs))
    with pytest.warns(UserWarning, match=r"cannot reach 32 .*holder/held"):
        pruned = kc.Prune(0.5).apply(model)
    (wrapper,) = masking.iter_wrappers(pruned)
    assert wrapper.masked_weights == ("dense.kernel",)
    assert kc.summary(pruned, print_fn=None).skipped["holder/held"] == "not covered by the scheme"
    with pytest.raises(ValueError, match=r"attribute path 'inner.kernel' of 'holder'"):
        kc.Prune(0.5, include=["held"]).apply(model)
