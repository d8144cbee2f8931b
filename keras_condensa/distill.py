"""Knowledge distillation: fine-tune a compressed student on a dense teacher's soft targets.

`Distiller` is a `keras.Model` that runs the student and overrides
`compute_loss` (the Keras 3 hook every backend's `fit` calls) to mix the
compiled loss on the labels with Hinton's soft-target loss:
`(1 - alpha) * loss(y, student) + alpha * T^2 * KL(softmax(teacher / T) ||
softmax(student / T))`, plus the losses the student's layers add (the
operators' `losses`, L-C's penalty) unscaled. Optimizers, callbacks (`kc.callbacks(scheme)` keeps a
pruned student's masks enforced) and the training loop stay Keras's.
"""

import numbers

import keras
from keras import ops

from keras_condensa import surgery
from keras_condensa.compiling import compile_like


def _output_shape(model):
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        return None
    return tuple(outputs[0].shape[1:])


def _logits(outputs, from_logits):
    if from_logits:
        return outputs
    return ops.log(ops.clip(outputs, 1e-7, 1.0))


def check_pair(student, teacher):
    """Raises unless `student` and `teacher` are Keras models with the same output shape."""
    for name, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"{name} must be a keras.Model. Received: {name}={type(model).__name__}"
            )
    student_shape, teacher_shape = _output_shape(student), _output_shape(teacher)
    if student_shape is not None and teacher_shape is not None and student_shape != teacher_shape:
        raise ValueError(
            "The teacher's output shape must match the student's: distillation compares their "
            f"per-class outputs. Received: teacher output shape {teacher_shape} (model "
            f"'{teacher.name}'), student output shape {student_shape} (model '{student.name}'). "
            "Pass the dense model the student was compressed from as teacher."
        )


@keras.saving.register_keras_serializable(package="keras_condensa")
class Distiller(keras.Model):
    """Trains `student` on the labels and on `teacher`'s softened outputs.

    The teacher is frozen (a copy is made when it is trainable, so the
    caller's model is not modified) and runs in inference mode. Compile the
    distiller like the student (its loss is the loss on the labels) and
    `fit` it; the trained student is `distiller.student`.

    Args:
        student: the model to train, e.g. `scheme.apply(model)`.
        teacher: the dense model, with the same output shape.
        temperature: softmax temperature `T` (> 0) of the soft targets.
        alpha: weight in [0, 1] of the soft-target loss; the loss on the
            labels gets `1 - alpha`.
        from_logits: whether the models output logits (default) or
            probabilities (then their logs are used).
        **kwargs: base `keras.Model` arguments (name, ...).

    Raises:
        TypeError: student or teacher is not a `keras.Model`.
        ValueError: their output shapes differ, or temperature/alpha are
            out of range.

    Example:

    ```python
    pruned = scheme.apply(model)
    distiller = kc.Distiller(pruned, teacher=model, temperature=4.0, alpha=0.9)
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller.fit(x, y, epochs=3, callbacks=kc.callbacks(scheme))
    final = kc.strip(distiller.student)
    ```
    """

    def __init__(self, student, teacher, temperature=4.0, alpha=0.9, from_logits=True, **kwargs):
        kwargs.setdefault("name", f"{getattr(student, 'name', 'student')}_distiller")
        super().__init__(**kwargs)
        check_pair(student, teacher)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, numbers.Real)
            or not (temperature > 0)
        ):
            raise ValueError(
                "temperature softens the teacher's outputs and must be > 0 (typically 2-8). "
                f"Received: temperature={temperature!r}"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
            raise ValueError(
                "alpha is the weight of the soft-target loss and must be in [0, 1] (the label "
                f"loss gets 1 - alpha). Received: alpha={alpha!r}"
            )
        if teacher.trainable:
            teacher = surgery.unwrap(teacher)  # a copy, frozen below
            teacher.trainable = False
        self.student = student
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.from_logits = bool(from_logits)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def soft_loss(self, x, y_pred):
        """`T^2 * KL(softmax(teacher / T) || softmax(student / T))`, averaged over the batch."""
        t = self.temperature
        teacher_logits = _logits(self.teacher(x, training=False), self.from_logits)
        student_logits = _logits(y_pred, self.from_logits)
        teacher_log_p = ops.log_softmax(ops.divide(teacher_logits, t), axis=-1)
        student_log_p = ops.log_softmax(ops.divide(student_logits, t), axis=-1)
        kl = ops.sum(ops.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
        return ops.multiply(ops.mean(kl), t * t)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Keras's loss: the compiled loss on the labels plus the layers' `add_loss`
        # terms (operators' losses, L-C's penalty), which distillation leaves whole.
        total = super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )
        if self.alpha == 0.0:
            return total
        added = [ops.cast(loss, total.dtype) for loss in self.losses]
        added = ops.sum(ops.stack(added)) if added else ops.zeros((), total.dtype)
        hard = ops.subtract(total, added)
        soft = ops.cast(self.soft_loss(x, y_pred), total.dtype)
        mixed = ops.add(ops.multiply(hard, 1.0 - self.alpha), ops.multiply(soft, self.alpha))
        return ops.add(mixed, added)

    def get_config(self):
        config = super().get_config()
        config.update(
            student=keras.saving.serialize_keras_object(self.student),
            teacher=keras.saving.serialize_keras_object(self.teacher),
            temperature=self.temperature,
            alpha=self.alpha,
            from_logits=self.from_logits,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)


def distill(student, teacher, temperature=4.0, alpha=0.9, from_logits=True):
    """Returns a `Distiller` compiled like `student`, ready to `fit`.

    The distiller's optimizer is a fresh copy of the student's compiled one
    (same class and config) and its label loss and metrics are the
    student's; an uncompiled student gives an uncompiled distiller.

    Args:
        student: the (compressed) model to fine-tune.
        teacher: the dense model whose soft targets it learns from.
        temperature: softmax temperature (> 0).
        alpha: weight of the soft-target loss, in [0, 1].
        from_logits: whether the models output logits.

    Returns:
        A `kc.Distiller`; after `fit`, the student is `distiller.student`.

    Raises:
        TypeError, ValueError: see `Distiller`.

    Example:

    ```python
    pruned = scheme.apply(model)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    distiller = kc.distill(pruned, model, temperature=4.0, alpha=0.9)
    distiller.fit(x, y, epochs=3, callbacks=kc.callbacks(scheme))
    final = kc.strip(distiller.student)
    ```
    """
    distiller = Distiller(
        student, teacher, temperature=temperature, alpha=alpha, from_logits=from_logits
    )
    if getattr(student, "optimizer", None) is not None and getattr(student, "loss", None):
        compile_like(distiller, student)
    return distiller
