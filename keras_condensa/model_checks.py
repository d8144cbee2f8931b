"""`check_model`: the clear error for a model the library cannot take."""

import keras

from keras_condensa.graph_walk import is_graph_model


def check_model(model, subclassed=False):
    """Raises a clear error unless `model` is a built Keras 3 model.

    Args:
        model: the model to check.
        subclassed: whether a subclassed `keras.Model` is accepted (`apply`
            takes one; `strip`, `shrink` and `LC` take what `apply` returns).
    """
    if not isinstance(model, keras.Model):
        module = type(model).__module__
        if module.startswith(
            ("tf_keras", "tensorflow.python.keras", "keras.engine", "keras.src.engine")
        ):
            raise TypeError(
                f"'{getattr(model, 'name', model)}' is a tf_keras (Keras 2) model. keras-condensa "
                "works on Keras 3 models: its wrappers are Keras 3 layers written with keras.ops "
                "so that they run on TensorFlow, JAX and PyTorch. Rebuild the model with "
                "`import keras` (Keras 3), or save it as .keras from Keras 3 and load it with "
                "keras.saving.load_model."
            )
        raise TypeError(f"Expected a keras.Model. Received: {type(model).__name__}")
    if not subclassed and not is_graph_model(model):
        raise TypeError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed keras.Model: "
            "its layers "
            "are created and called in Python code that this function cannot rewire. It takes a "
            "Sequential or functional model, or the model scheme.apply(model) returned for a "
            "subclassed one; scheme.apply itself takes subclassed models."
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built. Give it an Input (keras.Input(shape)), call it "
            "once on a batch, or call model.build(input_shape) first."
        )
