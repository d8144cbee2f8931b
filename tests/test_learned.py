"""Learned sparsity budgets: `kc.SoftThresholdPrune` (STR) and `kc.ChannelGates`."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier, small_cnn

import keras_condensa as kc
from keras_condensa import dependency, masking
from keras_condensa.channel_cost import ChannelCost, keras_latency
from keras_condensa.scheme_grammar import SchemeSyntaxError, parse_scheme
from keras_condensa.workflows.fine_tune import fine_tune


def _images(digits):
    x_train, y_train, x_val, y_val = digits
    return x_train.reshape(-1, 8, 8, 1), y_train, x_val.reshape(-1, 8, 8, 1), y_val


def _fit(model, scheme, x, y, epochs):
    compile_classifier(model)
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=kc.callbacks(scheme))
    return model


def _macs(model):
    return ChannelCost(dependency.DependencyGraph(model, on_unknown="skip")).total()


# -- SoftThresholdPrune -----------------------------------------------------------


def test_str_reaches_the_density_and_strips_to_exact_zeros(trained_lenet, digits):
    model, _ = trained_lenet
    x_train, y_train, x_val, y_val = digits
    scheme = kc.SoftThresholdPrune(density=0.05)
    pruned = _fit(scheme.apply(model), scheme, x_train, y_train, epochs=6)
    summary = kc.summary(pruned, print_fn=None)
    assert summary.masked_density == pytest.approx(0.05, abs=1e-3)
    assert not summary.skipped  # the schedule ran
    final = kc.strip(pruned)
    assert kc.summary(final, print_fn=None).density <= summary.density + 1e-9
    np.testing.assert_allclose(
        np.asarray(final.predict(x_val, verbose=0)),
        np.asarray(pruned.predict(x_val, verbose=0)),
        atol=1e-5,
    )
    # Short: most of the recovery happens after the cut (benchmarks/learned.py compares).
    accuracy = compile_classifier(final).evaluate(x_val, y_val, verbose=0)[1]
    assert accuracy > 0.5
    assert model.get_layer("fc1").kernel.shape == final.get_layer("fc1").kernel.shape


def test_str_without_a_density_learns_thresholds(trained_lenet, digits):
    model, _ = trained_lenet
    x_train, y_train, _, _ = digits
    scheme = kc.SoftThresholdPrune(threshold_init=-3.0, weight_decay=1e-3)
    pruned = scheme.apply(model)
    wrapper = next(masking.iter_wrappers(pruned))
    before = np.asarray(wrapper.states[(0, "kernel")]["threshold"]).copy()
    assert any("threshold" in v.path for v in pruned.trainable_weights)
    _fit(pruned, scheme, x_train, y_train, epochs=2)
    after = np.asarray(wrapper.states[(0, "kernel")]["threshold"])
    assert not np.allclose(before, after)  # the threshold is trained
    density = kc.summary(pruned, print_fn=None).masked_density
    assert 0 < density < 1  # sigmoid(-3) = 0.047 already zeroes the smallest weights


def test_str_per_channel_compose_with_int8_and_save_mid_training(trained_lenet, digits, tmp_path):
    model, _ = trained_lenet
    x_train, y_train, x_val, _ = digits
    scheme = kc.Compose(
        [kc.SoftThresholdPrune(density=0.1, granularity="channel"), kc.Quantize("int8")]
    )
    pruned = _fit(scheme.apply(model), scheme, x_train, y_train, epochs=1)
    path = tmp_path / "str.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        np.asarray(loaded.predict(x_val[:32], verbose=0)),
        np.asarray(pruned.predict(x_val[:32], verbose=0)),
        atol=1e-5,
    )
    wrapper = next(masking.iter_wrappers(loaded))
    assert tuple(wrapper.states[(0, "kernel")]["threshold"].shape) == (300,)
    # The schedule resumes where the optimizer's step count left it.
    loaded.fit(x_train, y_train, epochs=5, batch_size=64, verbose=0, callbacks=kc.callbacks(loaded))
    assert kc.summary(loaded, print_fn=None).masked_density == pytest.approx(0.1, abs=2e-3)
    assert kc.strip(loaded) is not None


def test_str_bad_input():
    with pytest.raises(ValueError, match="granularity"):
        kc.SoftThresholdPrune(0.1, granularity="row")
    with pytest.raises(ValueError, match="schedule only with a target density"):
        kc.SoftThresholdPrune(schedule=kc.PolynomialDecay(end_step=0.5))
    with pytest.raises(ValueError, match="density"):
        kc.SoftThresholdPrune(density=1.5)
    inputs = keras.Input((4,), dtype="int32")
    h = keras.layers.Embedding(20, 8, name="embed")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    with pytest.raises(ValueError, match="embed.*granularity='layer'"):
        kc.SoftThresholdPrune(0.5, granularity="channel", include=["embed"]).apply(model)


# -- ChannelGates -----------------------------------------------------------------


def test_gates_meet_the_flops_budget_and_shrink_to_the_same_function(digits):
    x_train, y_train, x_val, y_val = _images(digits)
    model = compile_classifier(small_cnn())
    model.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    scheme = kc.ChannelGates(budget=0.5, cost="flops")
    gated = _fit(scheme.apply(model), scheme, x_train, y_train, epochs=4)
    assert not kc.summary(gated, print_fn=None).skipped
    small = kc.strip(gated, shrink=True)
    assert _macs(small) <= 0.5 * _macs(model) + 1e-6
    assert _macs(small) >= 0.35 * _macs(model)  # the budget is used, not overshot
    assert small.get_layer("conv2").filters < 32
    np.testing.assert_allclose(
        np.asarray(small.predict(x_val, verbose=0)),
        np.asarray(gated.predict(x_val, verbose=0)),
        atol=1e-4,
    )
    assert compile_classifier(small).evaluate(x_val, y_val, verbose=0)[1] > 0.8


def test_gates_follow_batchnorm_and_coupled_channels(digits):
    x_train, y_train, x_val, _ = _images(digits)
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 1))
    stem = keras.layers.Conv2D(16, 3, padding="same", name="stem")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(stem)
    h = keras.layers.ReLU()(h)
    branch = keras.layers.Conv2D(16, 3, padding="same", name="branch")(h)
    h = keras.layers.ReLU()(keras.layers.Add()([h, branch]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = compile_classifier(keras.Model(inputs, keras.layers.Dense(10, name="logits")(h)))
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    scheme = kc.ChannelGates(budget=0.6, cost="params")
    gated = _fit(scheme.apply(model), scheme, x_train, y_train, epochs=3)
    small = kc.strip(gated, shrink=True)
    assert small.get_layer("stem").filters == small.get_layer("branch").filters < 16
    np.testing.assert_allclose(
        np.asarray(small.predict(x_val, verbose=0)),
        np.asarray(gated.predict(x_val, verbose=0)),
        atol=1e-4,
    )


def test_gates_save_mid_training_and_continue(digits, tmp_path):
    x_train, y_train, x_val, _ = _images(digits)
    model = compile_classifier(small_cnn())
    scheme = kc.ChannelGates(budget=0.4, cost="params")
    gated = compile_classifier(scheme.apply(model))
    gated.fit(x_train[:512], y_train[:512], epochs=1, verbose=0, callbacks=kc.callbacks(scheme))
    path = tmp_path / "gated.keras"
    gated.save(path)
    loaded = keras.saving.load_model(path)
    assert kc.scheme_of(loaded).get_config() == scheme.get_config()
    np.testing.assert_allclose(
        np.asarray(loaded.predict(x_val[:32], verbose=0)),
        np.asarray(gated.predict(x_val[:32], verbose=0)),
        atol=1e-5,
    )
    loaded.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0, callbacks=kc.callbacks(loaded))
    small = kc.strip(loaded, shrink=True)
    params = ChannelCost(dependency.DependencyGraph(small, on_unknown="skip"), "params").total()
    dense = ChannelCost(dependency.DependencyGraph(model, on_unknown="skip"), "params").total()
    assert params <= 0.4 * dense + 1e-6
    np.testing.assert_allclose(
        np.asarray(small.predict(x_val, verbose=0)),
        np.asarray(loaded.predict(x_val, verbose=0)),
        atol=1e-4,
    )


def test_gates_latency_table_and_budget(digits):
    x_train, y_train, _, _ = _images(digits)
    model = compile_classifier(small_cnn())
    measured = kc.latency_table(
        model, fractions=(0.5,), measure=lambda m, x: keras_latency(m, x, repeats=3)
    )
    assert set(measured) == {"conv1", "conv2", "fc", "__total__"}  # logits feeds the output
    for name in ("conv1", "conv2", "fc"):
        (half, t_half), (one, t_one) = measured[name]
        assert (half, one) == (0.5, 1.0) and t_half <= t_one == measured["__total__"]
    # A table whose times fall with the work, so that the budget is reachable.
    table = {n: [[0.25, 1e-3], [1.0, 4e-3]] for n in ("conv1", "conv2", "fc")}
    table["__total__"] = 4e-3
    scheme = kc.ChannelGates(budget=0.5, cost="latency", latency_table=table)
    gated = _fit(scheme.apply(model), scheme, x_train, y_train, epochs=2)
    small = kc.strip(gated, shrink=True)
    graph = dependency.DependencyGraph(gated, on_unknown="skip")
    cost = ChannelCost(graph, "latency", table)
    kept = {
        id(graph.channels_of(gated.get_layer(f"{name}_compressed")).segments[0].root()): width
        for name, width in (
            ("conv1", small.get_layer("conv1").filters),
            ("conv2", small.get_layer("conv2").filters),
            ("fc", small.get_layer("fc").units),
        )
    }
    assert cost.total(kept) <= 0.5 * cost.total() * (1 + 1e-6)
    assert cost.total(kept) >= 0.3 * cost.total()


def test_gates_bad_input(digits):
    with pytest.raises(ValueError, match="budget"):
        kc.ChannelGates(budget=0.0)
    with pytest.raises(ValueError, match="cost must be one of"):
        kc.ChannelGates(cost="energy")
    with pytest.raises(ValueError, match="only with cost='latency'"):
        kc.ChannelGates(latency_table={"x": [[1.0, 1.0]]})
    x_train, y_train, _, _ = digits
    only_output = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, name="out")])
    scheme = kc.ChannelGates(0.5)
    gated = compile_classifier(scheme.apply(only_output))
    with pytest.raises(ValueError, match="no channels it may gate"):
        gated.fit(x_train, y_train, epochs=1, verbose=0, callbacks=kc.callbacks(scheme))
    model = small_cnn()
    with pytest.raises(ValueError, match="no latency measured for the channels of layer 'conv1'"):
        ChannelCost(dependency.DependencyGraph(model), "latency", {"__total__": 1.0})


def test_scheme_terms():
    assert isinstance(parse_scheme("str:0.05"), kc.SoftThresholdPrune)
    gates = parse_scheme("gates:latency:0.4")
    assert (gates.cost, gates.budget) == ("latency", 0.4)
    with pytest.raises(SchemeSyntaxError, match="cost must be one of"):
        parse_scheme("gates:energy:0.5")


# -- through the fine-tune workflow (the command line and the search) ----------------


def test_fine_tune_runs_one_schedule_over_its_two_fits(trained_lenet, digits, recwarn):
    model, _ = trained_lenet
    x_train, y_train, _, _ = digits
    scheme = kc.Prune(0.1, schedule=kc.PolynomialDecay(end_step=0.8, frequency=5))
    tuned = fine_tune(model, scheme, x_train, y_train, epochs=3, batch_size=64)
    kernels = [np.asarray(layer.kernel) for layer in tuned.model.layers if hasattr(layer, "kernel")]
    density = sum(np.count_nonzero(k) for k in kernels) / sum(k.size for k in kernels)
    assert density == pytest.approx(0.1, abs=1e-3)  # was 0.107: each fit ran its own schedule
    assert not [w for w in recwarn if "will reach sparsity" in str(w.message)]


@pytest.mark.parametrize("term", ["str:0.1", "gates:flops:0.5", "hspg:0.5"])
def test_learned_scheme_terms_fine_tune_and_shrink(term, digits):
    x_train, y_train, x_val, _ = _images(digits)
    model = compile_classifier(small_cnn())
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    scheme = parse_scheme(term)
    tuned = fine_tune(model, scheme, x_train, y_train, epochs=3, batch_size=64, shrink=True)
    small = tuned.model
    if term.startswith("str"):
        assert kc.summary(small, print_fn=None).density < 0.15
    elif term.startswith("gates"):
        assert _macs(small) <= 0.5 * _macs(model) + 1e-6
    else:  # half of the 112 gateable channels (conv1, conv2, fc) are gone
        widths = [small.get_layer(n).filters for n in ("conv1", "conv2")]
        assert sum(widths) + small.get_layer("fc").units == 56
    assert np.isfinite(np.asarray(small.predict(x_val[:16], verbose=0))).all()
