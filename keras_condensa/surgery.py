"""Model surgery: copy a user's model with layers wrapped or unwrapped.

`apply_scheme` and `strip` both rebuild the model with `keras.models.clone_model`
(recursively, so nested models work) and copy every weight; the input model
is never modified.
"""

import logging
import math
import warnings

import keras
from keras import ops

from keras_condensa import activation_ranges, batchnorm_fold, copying, masking, prunable, reach
from keras_condensa.wrappers import CompressionWrapper

logger = logging.getLogger("keras_condensa")


def check_model(model, subclassed=False):
    """Raises a clear error unless `model` is a built Keras 3 model.

    Args:
        model: the model to check.
        subclassed: whether a subclassed `keras.Model` is accepted (`apply`
            takes one; `strip`, `shrink` and `LC` take what `apply` returns).
    """
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
    if not subclassed and not masking.is_graph_model(model):
        raise TypeError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed keras.Model: its layers "
            "are created and called in Python code that this function cannot rewire. It takes a "
            "Sequential or functional model, or the model scheme.apply(model) returned for a "
            "subclassed one; scheme.apply itself takes subclassed models."
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built. Give it an Input (keras.Input(shape)), call it "
            "once on a batch, or call model.build(input_shape) first."
        )


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

    clone = copying.clone(model, clone_function)
    for copy_weights in copies:
        copy_weights()
    return copying.compile_copy(clone, model)


def _plain_copy(layer):
    new = copying.copy_layer(layer)
    copying.prebuild(layer, new)
    return new, lambda: new.set_weights(layer.get_weights())


def _merge(arguments, new, unit):
    """Merges one operator's wrapper arguments for `unit` into its container's."""
    masked = list(arguments.get("masked_weights", ()))
    masked += [p for p in new.get("masked_weights", ()) if p not in masked]
    if masked:
        arguments["masked_weights"] = masked
    if new.get("scheduled"):
        arguments["scheduled"] = True
    if not new.get("quantize"):
        return
    quantized = arguments.setdefault("quantized_weights", {})
    twice = [p for p in new["quantized_weights"] if p in quantized]
    dtype = arguments.get("quantize")
    if twice or (dtype and dtype != new["quantize"]):
        what = f"is quantized twice ({dtype} and {new['quantize']})" if twice else (
            f"holds layers quantized to {dtype} and to {new['quantize']}, and one custom layer "
            "takes one dtype"
        )
        raise ValueError(
            f"Layer '{unit.name}' {what}; give each layer one Quantize (use include=/exclude=)."
        )
    arguments["quantize"] = new["quantize"]
    quantized.update(new["quantized_weights"])
    # Activation ranges sit on the inputs and outputs of a layer of the graph; a
    # layer nested in a custom layer has its weights quantized only.
    activations = new.get("quantize_activations", False) and not unit.nested
    arguments["quantize_activations"] = arguments.get("quantize_activations", False) or activations


def _plan(scheme, model, folded=()):
    """Decides how each covered layer is wrapped.

    Returns:
        `(plan, skipped, unreached, covered)`: `{id(container): wrapper
        arguments}`, `{layer name: reason}` for weighted layers left as they
        are, `{unit name: unit}` for the units that no operator can reach
        although one selects them, and `{operator: parameters it masks}`.
        `folded` names layers folded away before planning (BatchNorms folded into
        their convolutions for integer QAT): include=/exclude= may still name them.
    """
    plan, skipped, unreached, covered, seen_names = {}, {}, {}, {}, set(folded)
    for container in masking.containers(model):
        if isinstance(container, CompressionWrapper):
            raise ValueError(
                f"Layer '{container.layer.name}' is already wrapped by {type(container).__name__} "
                f"('{container.name}'). Strip the model first (kc.strip(model)), or put all the "
                "operators in one kc.Compose([...]) and apply it to the original model."
            )
        seen_names.add(container.name)
        for unit in reach.units(container):
            seen_names.update((unit.layer.name, unit.name))
            selected = False
            for op in scheme.operators():
                if not op.selects(unit.layer):
                    continue
                selected = True
                if unit.spec is None and unit.nested:
                    reason = unit.reason  # a nested normalization layer or own variables
                else:
                    reason = op.reason_unsupported(unit.layer, unit.spec)
                if reason is None and unit.nested:
                    reason = _unswappable(container, op.paths(unit.layer, unit.spec))
                    if reason is not None:
                        unreached[unit.name] = unit
                if reason is None:
                    arguments = op.wrapper_arguments(unit.layer, unit.spec)
                    masked = arguments.get("masked_weights", ())
                    covered[op] = covered.get(op, 0) + sum(
                        _size(prunable.resolve(container, p)) for p in masked
                    )
                    if op.prunes and op.schedule is not None:
                        arguments["scheduled"] = True
                    _merge(plan.setdefault(id(container), {}), arguments, unit)
                elif op.names_explicitly(unit.layer):
                    raise ValueError(
                        f"{type(op).__name__} cannot handle layer '{unit.name}' "
                        f"({type(unit.layer).__name__}): {reason}. Remove it from include=, or "
                        f"leave include= unset and pass exclude=['{unit.layer.name}']."
                    )
                else:
                    skipped[unit.name] = f"{type(unit.layer).__name__}: {reason}"
            if selected and unit.spec is None and prunable.not_pruned_reason(unit.layer) is None:
                unreached[unit.name] = unit
    for op in scheme.operators():
        for argument in ("include", "exclude"):
            names = [s for s in getattr(op, argument) if isinstance(s, str)]
            unknown = [s for s in names if s not in seen_names]
            if unknown:
                raise ValueError(
                    f"{type(op).__name__}({argument}=...) names layers that are not in model "
                    f"'{model.name}': {unknown}. Its layers are: {sorted(seen_names)}"
                )
    if not plan:
        why = "; ".join(f"'{n}' ({r})" for n, r in skipped.items()) or "no weighted layers"
        raise ValueError(
            f"The scheme {scheme!r} covers no layer of model '{model.name}': {why}. "
            "Check include=/exclude=, or choose an operator that supports these layers."
        )
    return plan, skipped, unreached, covered


def _size(variable):
    return math.prod(variable.shape)


def _unswappable(container, paths):
    """Why the wrapper of `container` could not swap a nested weight in, or `None`.

    The wrapper replaces the attribute that stores each weight while the
    container runs; a weight held elsewhere (in a list, behind a property
    with no backing attribute) cannot be replaced.
    """
    for path in paths:
        try:
            prunable.storage_of(container, path)
        except (AttributeError, ValueError):
            return (
                f"its weight at attribute path '{path}' of '{container.name}' is not stored as a "
                "plain attribute, so it cannot be swapped while the layer runs"
            )
    return None


def _warn_unreached(model, unreached, covered):
    """Warns with the trainable parameters that no operator can reach, and the density reached."""
    unreached = list(unreached.values())
    params = sum(_size(v) for unit in unreached for v in unit.variables if v.trainable)
    if not params:
        return
    total = sum(_size(v) for v in model.trainable_weights)
    names = ", ".join(f"{u.name} ({type(u.layer).__name__})" for u in unreached[:8])
    more = f" and {len(unreached) - 8} more" if len(unreached) > 8 else ""
    densities = []
    for op, masked in covered.items():
        if op.prunes and masked:
            reached = (op.density * masked + params) / (masked + params)
            densities.append(
                f"{type(op).__name__}(density={op.density:g}) reaches about {reached:.3f} over "
                "the weights it was asked to cover"
            )
    warnings.warn(
        f"The scheme cannot reach {params:,} trainable parameters ({params / max(total, 1):.1%} "
        f"of model '{model.name}') in layers it cannot reach: {names}{more}. "
        + ("; ".join(densities) + ". " if densities else "")
        + "Register them with kc.register_prunable (or implement kc.PrunableLayer), or name them "
        "in exclude= to leave them dense on purpose.",
        stacklevel=4,
    )


def _shell_inputs(model):
    """`keras.Input`s shaped like the inputs a subclassed model was built with."""
    config = model.get_build_config() or {}
    shapes = config.get("input_shape")
    if shapes is None:
        raise ValueError(
            f"Model '{model.name}' ({type(model).__name__}) is subclassed and was built from "
            f"{sorted(config.get('shapes_dict', {})) or 'no recorded input shape'}: keras-condensa "
            "needs the shape of its one input (a tensor, a list or a dict of tensors). Call it "
            "once on a batch, model(x), or model.build(input_shape), before apply."
        )
    return keras.tree.map_shape_structure(
        lambda shape: keras.Input(batch_shape=(None, *tuple(shape)[1:])), shapes
    )


def _wrap_subclassed(model, arguments):
    """A functional model around a wrapped copy of a subclassed model (kc.strip unwraps it)."""
    try:
        inner = model.__class__.from_config(model.get_config())
    except Exception as error:  # noqa: BLE001 - re-raised with what to do
        raise TypeError(
            f"Cannot copy subclassed model '{model.name}' ({type(model).__name__}): "
            f"from_config(get_config()) failed with: {error}. keras-condensa never changes your "
            "model in place, so it copies it: give the class a get_config() that returns its "
            "constructor arguments (and a from_config() if they are not plain values)."
        ) from error
    copying.prebuild(model, inner)
    inner.name = model.name
    inner.set_weights(model.get_weights())
    wrapper = CompressionWrapper(inner, **arguments)
    inputs = _shell_inputs(model)
    shell = keras.Model(inputs, wrapper(inputs), name=model.name)
    shell._condensa_shell = True
    return copying.compile_copy(shell, model)


def apply_scheme(scheme, model):
    """Returns a copy of `model` with the layers `scheme` covers wrapped and masks computed.

    Layers of the model's graph are wrapped where they are. A custom layer
    (or a subclassed model) whose sublayers the scheme covers is wrapped as a
    whole, with the nested weights named by their attribute paths.
    """
    check_model(model, subclassed=True)
    names = {layer.name for layer in masking.containers(model)}
    model = batchnorm_fold.fold_for_scheme(scheme, model)
    plan, skipped, unreached, covered = _plan(scheme, model, folded=names)
    activation_ranges.place(scheme, model, plan)

    def clone_layer(layer):
        if id(layer) not in plan:
            return _plain_copy(layer)
        inner = copying.copy_layer(layer)
        copying.prebuild(layer, inner)
        wrapper = CompressionWrapper(inner, **plan[id(layer)])
        return wrapper, lambda: wrapper.layer.set_weights(layer.get_weights())

    if masking.is_graph_model(model):
        clone = _clone(model, clone_layer)
    else:
        clone = _wrap_subclassed(model, plan[id(model)])
    if skipped:
        logger.info("Layers left dense: %s", "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    _warn_unreached(model, unreached, covered)
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
    masking.warn_never_pruned(model)
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
        inner = copying.copy_layer(layer.layer)
        copying.prebuild(layer.layer, inner)
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
                activation_ranges=layer.activation_ranges,
                name=layer.name,
            )

        def copy_weights():
            values = {id(layer.weight(p)): baked(p) for p in paths}
            inner.set_weights(
                [ops.convert_to_numpy(values.get(id(w), w)) for w in layer.layer.weights]
            )
            if keep and layer.quantize_activations:
                new.copy_ranges_from(layer)

        return new, copy_weights

    stripped = _clone(model, clone_layer)
    layers = [layer for layer in stripped.layers if not isinstance(layer, keras.layers.InputLayer)]
    if getattr(model, "_condensa_shell", False) and len(layers) == 1:
        if isinstance(layers[0], CompressionWrapper):
            stripped._condensa_shell = True  # int8 QAT kept: a later strip can still unwrap
        else:
            return layers[0]  # the user's subclassed model, as it came in
    return stripped
