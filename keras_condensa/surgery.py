"""Model surgery: copy a user's model with layers wrapped or unwrapped.

`apply_scheme` and `strip` both rebuild the model with `keras.models.clone_model`
(recursively, so nested models work) and copy every weight; the input model
is never modified.
"""

import logging

import keras
from keras import ops

from keras_condensa import masking, prunable
from keras_condensa.wrappers import PruneWrapper

logger = logging.getLogger("keras_condensa")


def check_model(model):
    """Raises a clear error unless `model` is a built Sequential or functional Keras 3 model."""
    if not isinstance(model, keras.Model):
        module = type(model).__module__
        if module.startswith(("tf_keras", "tensorflow.python.keras", "keras.engine", "keras.src.engine")):
            raise TypeError(
                f"'{getattr(model, 'name', model)}' is a tf_keras (Keras 2) model. keras-condensa "
                "works on Keras 3 models: its wrappers are Keras 3 layers written with keras.ops "
                "so that they run on TensorFlow, JAX and PyTorch. Rebuild the model with "
                "`import keras` (Keras 3), or save it as .keras from Keras 3 and load it with "
                "keras.saving.load_model."
            )
        raise TypeError(f"Expected a keras.Model. Received: {type(model).__name__}")
    if not masking.is_graph_model(model):
        raise TypeError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed keras.Model: its layers "
            "are created and called in Python code that keras-condensa cannot rewire. Build it as a "
            "Sequential or functional model (keras.Model(inputs, outputs)), which can contain "
            "your custom layers."
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built. Give it an Input (keras.Input(shape)) or call "
            "model.build(input_shape) first."
        )


def _copy_layer(layer):
    """A new, unbuilt layer with the same config (weights are copied later)."""
    try:
        return layer.__class__.from_config(layer.get_config())
    except Exception as error:  # noqa: BLE001 - re-raised with the layer named
        raise TypeError(
            f"Cannot copy layer '{layer.name}' ({type(layer).__name__}): from_config(get_config()) "
            f"failed with: {error}. Give the layer a complete get_config()."
        ) from error


def _clone(model, clone_layer):
    """Clones `model`, mapping each leaf layer through `clone_layer`.

    `clone_layer(layer)` returns `(new_layer, copy_weights)`, where
    `copy_weights()` is called once the new model is built.
    """
    copies = []

    def clone_function(layer):
        new_layer, copy_weights = clone_layer(layer)
        copies.append(copy_weights)
        return new_layer

    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    for copy_weights in copies:
        copy_weights()
    return clone


def _prebuild(source, target):
    build_config = source.get_build_config()
    if source.built and build_config:
        target.build_from_config(build_config)


def _plain_copy(layer):
    new = _copy_layer(layer)
    _prebuild(layer, new)
    return new, lambda: new.set_weights(layer.get_weights())


def _plan(scheme, model):
    """Decides which layers each operator wraps. Returns ({id(layer): paths}, skipped)."""
    plan, skipped, seen_names = {}, {}, set()
    for layer in masking.iter_leaf_layers(model):
        seen_names.add(layer.name)
        if isinstance(layer, PruneWrapper):
            raise ValueError(
                f"Layer '{layer.layer.name}' is already wrapped by {type(layer).__name__} "
                f"('{layer.name}'). Strip the model first (kc.strip(model)), or put all the "
                "operators in one kc.Compose([...]) and apply it to the original model."
            )
        spec = prunable.prune_spec(layer)
        for op in scheme.operators():
            if not op.selects(layer):
                continue
            reason = op.reason_unsupported(layer, spec)
            if reason is None:
                plan.setdefault(id(layer), [])
                plan[id(layer)] += [p for p in op.paths(layer, spec) if p not in plan[id(layer)]]
            elif op.names_explicitly(layer):
                raise ValueError(
                    f"{type(op).__name__} cannot handle layer '{layer.name}' "
                    f"({type(layer).__name__}): {reason}. Remove it from include=, or leave "
                    f"include= unset and pass exclude=['{layer.name}']."
                )
            elif layer.weights:
                skipped[layer.name] = f"{type(layer).__name__}: {reason}"
    for op in scheme.operators():
        unknown = [s for s in op.include if isinstance(s, str) and s not in seen_names]
        if unknown:
            raise ValueError(
                f"{type(op).__name__}(include=...) names layers that are not in model "
                f"'{model.name}': {unknown}. Its layers are: {sorted(seen_names)}"
            )
    if not plan:
        why = "; ".join(f"'{n}' ({r})" for n, r in skipped.items()) or "no weighted layers"
        raise ValueError(
            f"The scheme {scheme!r} covers no layer of model '{model.name}': {why}. "
            "Check include=/exclude=, or choose an operator that supports these layers."
        )
    return plan, skipped


def apply_scheme(scheme, model):
    """Returns a copy of `model` with the layers `scheme` covers wrapped and masks computed."""
    check_model(model)
    plan, skipped = _plan(scheme, model)

    def clone_layer(layer):
        if id(layer) not in plan:
            return _plain_copy(layer)
        inner = _copy_layer(layer)
        _prebuild(layer, inner)
        wrapper = PruneWrapper(inner, masked_weights=plan[id(layer)])
        return wrapper, lambda: wrapper.layer.set_weights(layer.get_weights())

    clone = _clone(model, clone_layer)
    if skipped:
        logger.info("Layers left dense: %s", "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    masking.update_masks(scheme, clone, masking.initial_densities(scheme))
    return clone


def strip(model):
    """Returns a plain Keras model: wrappers removed, masked weights baked in as zeros.

    The result uses only Keras layer classes, so it loads with
    `keras.saving.load_model` without keras_condensa imported. The input model
    is not modified.

    Args:
        model: a model returned by `scheme.apply` (or any Sequential or
            functional model, which is copied as is).

    Returns:
        A new `keras.Model`.

    Example:

    ```python
    final = kc.strip(pruned)
    final.save("model.keras")
    ```
    """
    check_model(model)

    def clone_layer(layer):
        if not isinstance(layer, PruneWrapper):
            return _plain_copy(layer)
        inner = _copy_layer(layer.layer)
        _prebuild(layer.layer, inner)

        def copy_weights():
            masked = {id(layer.weight(p)): layer.masked_value(p) for p in layer.masked_weights}
            values = [
                ops.convert_to_numpy(masked.get(id(w), w)) for w in layer.layer.weights
            ]
            inner.set_weights(values)

        return inner, copy_weights

    return _clone(model, clone_layer)
