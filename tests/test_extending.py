"""Extending the library from outside.

docs/operators.md runs, and an outside operator goes end to end.
"""

import pathlib
import re

import keras
import numpy as np
import pytest
from conftest import compile_classifier, lenet_300_100
from keras import ops

import keras_condensa as kc
from keras_condensa import masking

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "operators.md"


def test_the_extension_guide_runs_as_written():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace = {"__name__": "extension_guide"}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)  # noqa: S102 - the guide's own code
    assert isinstance(namespace["scheme"], kc.Operator)


@keras.saving.register_keras_serializable(package="outside_tests")
class GatedScale(kc.Operator):
    """A trainable scale per output channel with an L1 loss: written outside the package."""

    def __init__(self, l1=1e-2, include=None, exclude=None):
        super().__init__(include=include, exclude=exclude)
        self.l1 = float(l1)

    def reason_unsupported(self, layer, spec):
        reason = super().reason_unsupported(layer, spec)
        return reason or (None if spec.channel_weight else "no output channels")

    def paths(self, layer, spec):
        return (spec.channel_weight,)

    def build(self, wrapper, path, variable):
        return {
            "scale": wrapper.add_weight(name="scale", shape=variable.shape[-1:], initializer="ones")
        }

    def transform(self, state, value, training):
        return value * state["scale"]

    def losses(self, state, value):
        return [self.l1 * ops.sum(ops.abs(state["scale"]))]

    def get_config(self):
        return {"l1": self.l1, **super().get_config()}


def test_an_operator_defined_outside_goes_through_apply_fit_save_strip_and_export(tmp_path, digits):
    x, y, x_val, _ = digits
    dense = compile_classifier(lenet_300_100())
    dense.fit(x, y, epochs=2, batch_size=64, verbose=0)
    scheme = kc.Compose(
        [kc.Prune(0.3, scope="layer", exclude=["logits"]), GatedScale(l1=0.05, exclude=["logits"])]
    )
    model = compile_classifier(scheme.apply(dense))
    model(x[:4])
    assert len(model.losses) == 2  # one L1 term per scaled kernel, through add_loss
    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=kc.callbacks(scheme))
    wrapper = next(masking.iter_wrappers(model))
    index = next(i for i, op in enumerate(wrapper.operators) if isinstance(op, GatedScale))
    scale = np.asarray(ops.convert_to_numpy(wrapper.states[(index, "kernel")]["scale"]))
    assert scale.mean() < 0.99  # the L1 term pulled the scales down
    mask = np.asarray(wrapper.masks["kernel"])
    assert abs(mask.mean() - 0.3) < 0.02

    path = tmp_path / "gated.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x_val, verbose=0), model.predict(x_val, verbose=0), atol=1e-5
    )
    restored = kc.scheme_of(loaded)
    assert [type(op).__name__ for op in restored.operators()] == ["Prune", "GatedScale"]
    assert restored.operators()[1].l1 == 0.05 and restored.operators()[1].exclude == ("logits",)
    loaded.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    loaded.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=kc.callbacks(loaded))

    final = kc.strip(model)
    assert not any(isinstance(layer, kc.CompressionWrapper) for layer in final.layers)
    np.testing.assert_allclose(
        final.predict(x_val, verbose=0), model.predict(x_val, verbose=0), atol=1e-5
    )
    kernel = ops.convert_to_numpy(final.get_layer("fc1").kernel)
    np.testing.assert_allclose(
        kernel, ops.convert_to_numpy(wrapper.weight("kernel")) * mask * scale, atol=1e-6
    )
    assert abs(np.mean(kernel != 0) - 0.3) < 0.02

    if keras.backend.backend() != "tensorflow":
        pytest.skip("LiteRT export runs under the TensorFlow backend")
    import tflite_export as te

    result = te.export(final, tmp_path / "gated.tflite")
    check = te.verify(result, final, x_val[:64])
    assert check.top1_agreement == 1.0 and check.max_abs_error < 1e-4


def test_a_loaded_model_continues_its_schedule_from_its_own_scheme(tmp_path, digits):
    x, y, *_ = digits
    scheme = kc.Prune(0.2, schedule=kc.PolynomialDecay(begin_step=0, end_step=15, frequency=5))
    model = compile_classifier(scheme.apply(lenet_300_100()))
    model.fit(x[:320], y[:320], epochs=1, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme))
    mid = kc.summary(model, print_fn=None).density
    assert 0.2 < mid < 1.0
    model.save(tmp_path / "mid.keras")
    loaded = keras.saving.load_model(tmp_path / "mid.keras")
    loaded.fit(x[:320], y[:320], epochs=1, batch_size=32, verbose=0, callbacks=kc.callbacks(loaded))
    assert kc.summary(loaded, print_fn=None).density == pytest.approx(0.2, abs=0.01)
    with pytest.raises(ValueError, match="runs 1 operators but the scheme given"):
        loaded.fit(
            x[:32],
            y[:32],
            verbose=0,
            callbacks=kc.callbacks(kc.Compose([kc.Prune(0.5), kc.Quantize()])),
        )
