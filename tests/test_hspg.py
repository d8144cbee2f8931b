"""kc.optimizers.HSPG: channels trained to exactly zero by half-space projection, then shrunk."""

import math
import warnings

import keras
import numpy as np
import pytest
from conftest import small_cnn
from keras import ops
from test_shrink import _filters, _images, _resnet

import keras_condensa as kc
from keras_condensa.operators.hspg_prune import HSPGPrune
from keras_condensa.optimizers import (
    HSPG,
    AdamHSPG,
    ChannelGroup,
    channel_groups,
    zero_channels,
)

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(48, activation="relu", name="fc1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(32, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="out"),
        ],
        name="mlp",
    )


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))  # also on PyTorch (tensors that need a detach)


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(_numpy(model(x, training=False)), axis=-1) == y))


def _max_error(a, b, x):
    return float(np.max(np.abs(_numpy(a(x, training=False)) - _numpy(b(x, training=False)))))


def _zero_columns(model, name):
    """Per output channel of layer `name`: whether its kernel column is exactly zero."""
    kernel = _numpy(model.get_layer(name).kernel)
    return ~np.any(kernel.reshape(-1, kernel.shape[-1]) != 0, axis=0)


def _steps(x, epochs, batch_size=32):
    return epochs * math.ceil(len(x) / batch_size)


@pytest.fixture(scope="module")
def hspg_cnn(digits):
    """The small CNN trained 5 epochs with HSPG (SGD, momentum) to zero half of its 112 channels."""
    x_train, y_train, _ = _images(digits)
    model = small_cnn()
    steps = _steps(x_train, 5)
    optimizer = HSPG(
        model,
        sparsity=0.5,
        start_step=steps // 5,
        end_step=steps * 3 // 5,
        learning_rate=0.02,
        momentum=0.9,
    )
    model.compile(optimizer, LOSS)
    model.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)
    return model, optimizer


def test_channel_groups_are_the_coupled_channels_with_their_batchnorms():
    cnn = channel_groups(small_cnn())
    assert [(g.size, g.members) for g in cnn] == [
        (16, (("conv1/kernel", 3), ("conv1/bias", 0))),
        (32, (("conv2/kernel", 3), ("conv2/bias", 0))),
        (64, (("fc/kernel", 1), ("fc/bias", 0))),
    ]  # the logits reach the output: never a group
    mlp = channel_groups(_mlp())
    assert [g.size for g in mlp] == [48, 32]
    assert [p.split("/")[-2:] for p, _ in mlp[0].members] == [
        ["fc1", "kernel"],
        ["fc1", "bias"],
        ["bn", "gamma"],
        ["bn", "beta"],
    ]
    # Convs whose outputs meet at residual adds are one group, with each BatchNorm after them.
    groups = channel_groups(_resnet())
    coupled = [g for g in groups if ("stem/kernel", 3) in g.members][0]
    paths = {p for p, _ in coupled.members}
    assert {"b0_conv2/kernel", "b1_conv2/kernel", "stem_bn/gamma", "b1_bn2/beta"} <= paths
    assert len(groups) == 3  # the residual group and the first conv of each block
    # A wrapped model has the same groups: a wrapper counts as the layer it wraps.
    wrapped = kc.FilterPrune(0.5).apply(small_cnn())
    assert channel_groups(wrapped) == cnn
    assert ChannelGroup.from_config(cnn[0].get_config()) == cnn[0]


def test_hspg_reaches_the_exact_target_and_shrink_removes_it(hspg_cnn, digits):
    model, optimizer = hspg_cnn
    _, _, x_val = _images(digits)
    y_val = digits[3]
    dead = {name: _zero_columns(model, name) for name in ("conv1", "conv2", "fc")}
    assert sum(int(d.sum()) for d in dead.values()) == 56 == zero_channels(model, optimizer.groups)
    for name, d in dead.items():
        assert not d.all()  # every layer keeps a channel
        assert np.all(_numpy(model.get_layer(name).bias)[d] == 0)
    assert _accuracy(model, x_val, y_val) > 0.85
    small = kc.shrink(model)
    assert _max_error(model, small, x_val) < 1e-4
    kept = _filters(small)
    for name, d in dead.items():
        assert kept[name] == d.size - d.sum()
    assert sum(kept.values()) == sum(_filters(model).values()) - 56


def test_adam_hspg_on_an_mlp_zeroes_batchnorm_channels_with_their_dense(digits):
    x_train, y_train, x_val, y_val = digits
    model = _mlp()
    steps = _steps(x_train, 4)
    optimizer = AdamHSPG(
        model, sparsity=0.5, start_step=steps // 5, end_step=steps // 2, learning_rate=1e-2
    )
    model.compile(optimizer, LOSS)
    model.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0)
    assert zero_channels(model, optimizer.groups) == 40  # half of 48 + 32
    dead = _zero_columns(model, "fc1")
    bn = model.get_layer("bn")
    assert 0 < dead.sum() < 48
    assert np.all(_numpy(bn.gamma)[dead] == 0) and np.all(_numpy(bn.beta)[dead] == 0)
    assert _accuracy(model, x_val, y_val) > 0.85
    small = kc.shrink(model)
    assert _max_error(model, small, x_val) < 1e-4
    assert small.get_layer("fc1").units == 48 - dead.sum()
    assert small.get_layer("fc2").units == 32 - (40 - dead.sum())


def _step_fixture(**kwargs):
    """One group of four channels (kernel columns and bias), stepped with zero loss gradient."""
    kernel = keras.Variable(np.tile([[1.0, 0.5, 0.2, 2.0]], (3, 1)).astype("float32"))
    bias = keras.Variable(np.zeros(4, "float32"))
    groups = [ChannelGroup(4, ((kernel.path, 1), (bias.path, 0)))]
    optimizer = HSPG(groups, sparsity=0.5, learning_rate=0.1, **kwargs)
    zero = [keras.ops.zeros((3, 4)), keras.ops.zeros((4,))]

    def step():
        optimizer.apply(zero, [kernel, bias])
        return _numpy(kernel)[0].copy()

    return step


def test_half_space_step_zeroes_a_candidate_once_it_crosses_zero():
    # With no loss gradient only the group-lasso term moves a candidate: its norm
    # shrinks by lr * penalty per step until a step would cross zero.
    step = _step_fixture(start_step=2, penalty=1.0)
    assert np.allclose(step(), [1.0, 0.5, 0.2, 2.0])  # before start_step: plain SGD
    step()
    seen = [step() for _ in range(12)]
    assert np.allclose(seen[0], [1.0, 0.5 - 0.1 / np.sqrt(3), 0.2 - 0.1 / np.sqrt(3), 2.0])
    crossed = next(i for i, w in enumerate(seen) if w[2] == 0)
    assert seen[crossed - 1][2] > 0  # zeroed when the step would cross, not before
    assert all(w[2] == 0.0 for w in seen[crossed:])  # exactly zero, and it stays there
    assert all(w[0] == 1.0 and w[3] == 2.0 for w in seen)  # the largest are no candidates
    assert seen[-1][1] == 0.0


def test_end_step_zeroes_every_candidate():
    step = _step_fixture(start_step=0, end_step=3, penalty=0.0)
    assert np.allclose([step() for _ in range(3)], [1.0, 0.5, 0.2, 2.0])
    assert np.array_equal(step(), [1.0, 0.0, 0.0, 2.0])
    assert np.array_equal(step(), [1.0, 0.0, 0.0, 2.0])


def test_training_continues_after_saving_mid_run(digits, tmp_path):
    x_train, y_train, x_val, y_val = digits
    model = _mlp(seed=1)
    steps = _steps(x_train, 3)
    optimizer = HSPG(
        model,
        sparsity=0.25,
        start_step=5,
        end_step=steps * 2 // 3 + 3,
        scope="layer",
        learning_rate=0.05,
        momentum=0.9,
    )
    model.compile(optimizer, LOSS)
    model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    assert zero_channels(model, optimizer.groups) < 20  # the end step is still ahead
    model.save(tmp_path / "mid.keras")
    loaded = keras.saving.load_model(tmp_path / "mid.keras")
    restored = loaded.optimizer
    assert type(restored) is HSPG
    assert int(_numpy(restored.iterations)) == int(_numpy(optimizer.iterations))
    # Loaded Sequential variables lose the model-name prefix; the groups still find them.
    assert restored.groups == optimizer.groups and restored.scope == "layer"
    config = optimizer.get_config()
    assert HSPG.from_config(config).get_config() == config
    loaded.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    assert zero_channels(loaded, restored.groups) == 12 + 8  # a quarter of 48 and of 32
    assert _accuracy(loaded, x_val, y_val) > 0.85


def test_hspg_prune_scheme_masks_the_zero_channels_and_strips_smaller(digits, tmp_path):
    x_train, y_train, x_val = _images(digits)
    scheme = HSPGPrune(density=0.75, end=0.6, scope="layer", include=["conv2", "fc", "logits"])
    pruned = scheme.apply(small_cnn())
    steps = _steps(x_train, 3)
    sgd = scheme.training_optimizer(pruned, keras.optimizers.SGD(0.05, momentum=0.9), steps)
    assert type(sgd) is HSPG and sgd.momentum == 0.9 and sgd.end_step == round(0.6 * (steps - 1))
    optimizer = scheme.training_optimizer(pruned, keras.optimizers.Adam(2e-3), steps)
    assert type(optimizer) is AdamHSPG and optimizer.sparsity == pytest.approx(0.25)
    assert [g.members[0][0] for g in optimizer.groups] == ["conv2/kernel", "fc/kernel"]
    pruned.compile(optimizer, LOSS)
    pruned.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme))
    assert zero_channels(pruned, optimizer.groups) == 24  # a quarter of 32 + 64
    for name in ("conv2", "fc"):
        wrapper = pruned.get_layer(f"{name}_compressed")
        mask = _numpy(wrapper.masks["kernel"]).reshape(-1, wrapper.layer.kernel.shape[-1])
        dead = ~np.any(_numpy(wrapper.layer.kernel).reshape(mask.shape) != 0, axis=0)
        assert np.array_equal(mask.max(axis=0) == 0, dead)
        assert dead.sum() == wrapper.layer.kernel.shape[-1] // 4  # scope="layer": a quarter each
    # The logits feed the output: covered, never zeroed, and no "schedule never ran" warning.
    assert _numpy(pruned.get_layer("logits_compressed").masks["kernel"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        small = kc.strip(pruned, shrink=True)
    assert _max_error(pruned, small, x_val) < 1e-4
    assert _accuracy(small, x_val, digits[3]) > 0.85
    assert small.get_layer("conv1").filters == 16
    assert small.get_layer("conv2").filters + small.get_layer("fc").units == 96 - 24
    pruned.save(tmp_path / "hspg.keras")
    assert kc.scheme_of(keras.saving.load_model(tmp_path / "hspg.keras")).get_config() == (
        scheme.get_config()
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sparsity=1.0), "sparsity is the fraction"),
        (dict(sparsity=-0.1), "sparsity is the fraction"),
        (dict(sparsity="0.5"), "sparsity is the fraction"),
        (dict(start_step=-1), "start_step must be a non-negative int"),
        (dict(start_step=1.5), "start_step must be a non-negative int"),
        (dict(start_step=10, end_step=5), "end_step must be None or an int >= start_step"),
        (dict(penalty=-1.0), "penalty must be a number >= 0"),
        (dict(half_space_epsilon=1.0), "half_space_epsilon must be in"),
        (dict(scope="model"), "scope must be one of"),
        (dict(sparsity=0.99), "at most 109 can go"),
        (dict(sparsity=0.99, scope="layer"), "at most 15 can go there"),
        (dict(use_ema=True), "does not take use_ema"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HSPG(small_cnn(), **kwargs)


def test_models_without_groups_and_foreign_groups_raise():
    only_output = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)], name="linear")
    with pytest.raises(ValueError, match="'linear' has no channel group.*Dense and Conv"):
        HSPG(only_output)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(TypeError, match="subclassed keras.Model"):
        HSPG(Subclassed())
    optimizer = HSPG(_mlp())
    with pytest.raises(ValueError, match="not among the trainable variables.*fc1/kernel"):
        optimizer.build(small_cnn().trainable_variables)
    with pytest.raises(ValueError, match="density is the fraction"):
        HSPGPrune(density=0.0)
    with pytest.raises(ValueError, match="end must be >= start"):
        HSPGPrune(density=0.5, start=0.6, end=0.4)
    with pytest.raises(ValueError, match="end is a fraction"):
        HSPGPrune(density=0.5, end=1.0)
    with pytest.raises(ValueError, match="epsilon is the half-space threshold"):
        HSPGPrune(density=0.5, epsilon=1.5)
    with pytest.raises(ValueError, match="total_steps"):
        HSPGPrune(density=0.5).training_optimizer(small_cnn(), None, 0)
