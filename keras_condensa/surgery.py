"""Model surgery: copy a user's model with layers wrapped or unwrapped.

`apply_scheme` and `strip` both rebuild the model with `keras.models.clone_model`
(recursively, so nested models work) and copy every weight; the input model
is never modified.
"""

import logging

import keras
from keras import ops

from keras_condensa import masking, prunable
from keras_condensa.wrappers import CompressionWrapper

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
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless operation (`x + y` in a functional model)
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


def _merge(arguments, new, layer):
    """Merges one operator's wrapper arguments into a layer's."""
    masked = list(arguments.get("masked_weights", ()))
    masked += [p for p in new.pop("masked_weights", ()) if p not in masked]
    if masked:
        arguments["masked_weights"] = masked
    if new.get("quantize") and arguments.get("quantize"):
        raise ValueError(
            f"Layer '{layer.name}' is quantized twice ({arguments['quantize']} and "
            f"{new['quantize']}); give each layer one Quantize (use include=/exclude=)."
        )
    arguments.update(new)


def _plan(scheme, model):
    """Decides how each covered layer is wrapped: ({id(layer): wrapper arguments}, skipped)."""
    plan, skipped, seen_names = {}, {}, set()
    for layer in masking.iter_leaf_layers(model):
        seen_names.add(layer.name)
        if isinstance(layer, CompressionWrapper):
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
                _merge(plan.setdefault(id(layer), {}), op.wrapper_arguments(layer, spec), layer)
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
        wrapper = CompressionWrapper(inner, **plan[id(layer)])
        return wrapper, lambda: wrapper.layer.set_weights(layer.get_weights())

    clone = _clone(model, clone_layer)
    if skipped:
        logger.info("Layers left dense: %s", "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    masking.update_masks(scheme, clone, masking.initial_densities(scheme))
    return clone


def strip(model, keep_quantization=True, shrink=False):
    """Returns the model ready for export: masked weights baked in as zeros.

    Pruning wrappers are removed: the result uses Keras layer classes, so it
    loads with `keras.saving.load_model` without keras_condensa imported.
    float16-quantized weights are baked in (rounded to float16 values).
    Layers trained with `Quantize("int8")` or `"int4"` keep a wrapper holding
    only their quantizers: the fake-quant ops and the learned activation
    ranges stay in the graph, which is how they reach the TFLite converter
    (`tflite_export.export(final, path, quantize="int8")` needs no
    representative data for them). `keep_quantization=False` bakes the
    fake-quantized weights in and drops the activation ranges instead, for a
    plain Keras model. `shrink=True` then removes the channels that
    structured pruning zeroed (`kc.shrink`), so the model is smaller and
    faster instead of full of zeros. The input model is not modified.

    Args:
        model: a model returned by `scheme.apply` (or any Sequential or
            functional model, which is copied as is).
        keep_quantization: keep integer QAT quantizers (see above).
        shrink: remove pruned channels, as `kc.shrink(model)` does (use
            `kc.shrink` itself for its `align` and `on_unknown` options).
            Shrinking rebuilds plain Keras layers, so it needs
            `keep_quantization=False` when the model has int8/int4 QAT
            layers.

    Returns:
        A new `keras.Model`.

    Raises:
        ValueError: with `shrink=True` on a model with int8/int4 QAT layers
            and `keep_quantization=True`.

    Example:

    ```python
    final = kc.strip(pruned)
    final.save("model.keras")
    small = kc.strip(kc.FilterPrune(0.5).apply(model), shrink=True)
    ```
    """
    check_model(model)
    if shrink:
        qat = [w.layer.name for w in masking.iter_wrappers(model) if w.quantize in ("int8", "int4")]
        if qat and keep_quantization:
            raise ValueError(
                f"strip(shrink=True) rebuilds plain Keras layers, which would drop the int8/int4 "
                f"quantizers of {qat}. Pass keep_quantization=False to bake the fake-quantized "
                "weights in, or strip without shrink=True."
            )
        from keras_condensa.shrink import shrink as shrink_model  # noqa: PLC0415 - shrink imports surgery

        return shrink_model(model)

    def clone_layer(layer):
        if not isinstance(layer, CompressionWrapper):
            return _plain_copy(layer)
        inner = _copy_layer(layer.layer)
        _prebuild(layer.layer, inner)
        keep = keep_quantization and layer.quantize in ("int8", "int4")
        baked = layer.masked_value if keep else layer.effective_value
        paths = dict.fromkeys(layer.masked_weights + tuple(layer.quantized_weights))
        new = inner
        if keep:
            new = CompressionWrapper(
                inner,
                quantize=layer.quantize,
                quantized_weights=layer.quantized_weights,
                quantize_activations=layer.quantize_activations,
                range_decay=layer.range_decay,
                name=layer.name,
            )

        def copy_weights():
            values = {id(layer.weight(p)): baked(p) for p in paths}
            inner.set_weights(
                [ops.convert_to_numpy(values.get(id(w), w)) for w in layer.layer.weights]
            )
            if keep and layer.quantize_activations:
                for name in ("input_range", "output_range", "ranges_initialized"):
                    getattr(new, name).assign(ops.convert_to_numpy(getattr(layer, name)))

        return new, copy_weights

    return _clone(model, clone_layer)
