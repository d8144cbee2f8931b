"""Knowledge distillation: a pruned LeNet learns from the dense one's soft targets."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier, lenet_300_100, weights_of

import keras_condensa as kc

EPOCHS = 6


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def _fine_tune(model, digits, density, alpha):
    x_train, y_train, x_val, y_val = digits
    keras.utils.set_random_seed(0)
    scheme = kc.Prune(
        density, schedule=kc.PolynomialDecay(begin_step=0.0, end_step=0.7, frequency=10)
    )
    student = compile_classifier(scheme.apply(model))
    trainer = kc.distill(student, model, temperature=2.0, alpha=alpha)
    trainer.fit(
        x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme)
    )
    final = kc.strip(student)
    return final, _accuracy(final, x_val, y_val)


def test_student_learns_from_soft_targets_alone_and_keeps_its_masks(trained_lenet, digits):
    """alpha=1: no labels in the loss, only the teacher's soft targets; the masks stay enforced."""
    model, _ = trained_lenet
    before = weights_of(model)
    student, accuracy = _fine_tune(model, digits, 0.1, alpha=1.0)
    kernels = [np.asarray(keras.ops.convert_to_numpy(layer.kernel)) for layer in student.layers]
    density = sum(np.count_nonzero(k) for k in kernels) / sum(k.size for k in kernels)
    assert density == pytest.approx(0.1, abs=0.002)
    assert accuracy > 0.93, accuracy
    x_val = digits[2]
    agreement = np.mean(
        np.argmax(student.predict(x_val, verbose=0), -1)
        == np.argmax(model.predict(x_val, verbose=0), -1)
    )
    assert agreement > 0.93, agreement
    for a, b in zip(before, weights_of(model), strict=True):  # the teacher is not trained
        np.testing.assert_array_equal(a, b)


def test_soft_loss_is_zero_when_student_is_the_teacher(trained_lenet, digits):
    model, _ = trained_lenet
    distiller = kc.Distiller(kc.strip(model), model, temperature=3.0, alpha=1.0)
    x = digits[2][:64]
    assert float(keras.ops.convert_to_numpy(distiller.soft_loss(x, distiller(x)))) == (
        pytest.approx(0.0, abs=1e-5)
    )
    other = compile_classifier(lenet_300_100(seed=1))
    assert float(keras.ops.convert_to_numpy(distiller.soft_loss(x, other(x)))) > 0.1


def test_distiller_config_round_trips_through_a_keras_file(trained_lenet, tmp_path):
    model, _ = trained_lenet
    distiller = kc.Distiller(kc.strip(model), model, temperature=3.0, alpha=0.7, from_logits=True)
    config = distiller.get_config()
    for key in ("student", "teacher", "temperature", "alpha", "from_logits"):
        assert key in config
    x = np.zeros((2, 64), "float32")
    distiller(x)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kc.Distiller)
    assert (loaded.temperature, loaded.alpha) == (3.0, 0.7)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0))


def test_bad_distillation_input_raises_with_the_fix(trained_lenet):
    model, _ = trained_lenet
    inputs = keras.Input((64,))
    five = keras.Model(inputs, keras.layers.Dense(5)(inputs))
    with pytest.raises(ValueError, match=r"teacher output shape \(5,\).*student output shape"):
        kc.distill(kc.strip(model), five)
    with pytest.raises(ValueError, match="temperature .* > 0.*Received: temperature=0"):
        kc.Distiller(kc.strip(model), model, temperature=0)
    with pytest.raises(ValueError, match="alpha .* in \\[0, 1\\].*Received: alpha=1.5"):
        kc.Distiller(kc.strip(model), model, alpha=1.5)
    with pytest.raises(TypeError, match="teacher must be a keras.Model"):
        kc.distill(kc.strip(model), "dense.keras")
