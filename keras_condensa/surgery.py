"""Model surgery: copy a user's model with layers wrapped or unwrapped.

`apply_scheme` and `unwrap` (the core of `kc.strip`) both rebuild the model
with `keras.models.clone_model` (recursively, so nested models work) and copy
every weight; the input model is never modified.
"""

import logging
import math
import warnings

import keras
from keras import ops

from keras_condensa import activation_ranges, batchnorm_fold, copying, masking, prunable, reach
from keras_condensa.model_checks import check_model
from keras_condensa.wrappers import CompressionWrapper

logger = logging.getLogger("keras_condensa")


def _merge(entry, operators, index, paths, unit):
    """Adds operator `index` to the wrapper arguments of `unit`'s container.

    `entry` is `{"weights": {path: [operator index]}, "layer": {index: arguments}}`.
    """
    op = operators[index]
    chains = entry.setdefault("weights", {})
    for path in paths:
        chain = chains.setdefault(path, [])
        twin = next((operators[i] for i in chain if type(operators[i]) is type(op)), None)
        if twin is not None and op.exclusive:
            raise ValueError(
                f"Layer '{unit.name}' has its weight '{path}' {op.exclusive} twice ({twin!r} and "
                f"{op!r}); give each layer one {type(op).__name__} (use include=/exclude=)."
            )
        chain.append(index)
    # Activation hooks sit on the inputs and outputs of a layer of the graph; a
    # layer nested in a custom layer has its weights transformed only.
    arguments = None if unit.nested else op.layer_arguments(unit.layer, unit.spec)
    if arguments is not None:
        entry.setdefault("layer", {})[index] = arguments


def _plan(scheme, model, folded=()):
    """Decides how each covered layer is wrapped.

    Returns:
        `(plan, skipped, unreached, covered)`: `{id(container): {"weights":
        {path: [operator index]}, "layer": {operator index: arguments}}}`,
        `{layer name: reason}` for weighted layers left as they are,
        `{unit name: unit}` for the units that no operator can reach
        although one selects them, and `{operator: parameters it masks}`.
        `folded` names layers folded away before planning (BatchNorms folded into
        their convolutions for integer QAT): include=/exclude= may still name them.
    """
    plan, skipped, unreached, covered, seen_names = {}, {}, {}, {}, set(folded)
    operators = scheme.operators()
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
            for index, op in enumerate(operators):
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
                    paths = op.paths(unit.layer, unit.spec)
                    covered[op] = covered.get(op, 0) + sum(
                        _size(prunable.resolve(container, p)) for p in paths
                    )
                    _merge(plan.setdefault(id(container), {}), operators, index, paths, unit)
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
    for op in operators:
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
        if op.prunes and masked and getattr(op, "density", None) is not None:
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


def _wrapper(layer, operators, entry, **kwargs):
    return CompressionWrapper(layer, operators, entry.get("weights"), entry.get("layer"), **kwargs)


def _wrap_subclassed(model, operators, entry):
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
    wrapper = _wrapper(inner, operators, entry)
    inputs = _shell_inputs(model)
    shell = keras.Model(inputs, wrapper(inputs), name=model.name)
    shell._condensa_shell = True
    return copying.compile_copy(shell, model)


def apply_scheme(scheme, model):
    """Returns a copy of `model` with the layers `scheme` covers wrapped, and one-shot updates run.

    Layers of the model's graph are wrapped where they are. A custom layer
    (or a subclassed model) whose sublayers the scheme covers is wrapped as a
    whole, with the nested weights named by their attribute paths.
    """
    check_model(model, subclassed=True)
    names = {layer.name for layer in masking.containers(model)}
    model = batchnorm_fold.fold_for_scheme(scheme, model)
    plan, skipped, unreached, covered = _plan(scheme, model, folded=names)
    activation_ranges.place(scheme, model, plan)
    operators = scheme.operators()

    def clone_layer(layer):
        if id(layer) not in plan:
            return copying.plain_copy(layer)
        inner = copying.copy_layer(layer)
        copying.prebuild(layer, inner)
        wrapper = _wrapper(inner, operators, plan[id(layer)])
        return wrapper, lambda: wrapper.layer.set_weights(layer.get_weights())

    if masking.is_graph_model(model):
        clone = copying.clone_with(model, clone_layer)
    else:
        clone = _wrap_subclassed(model, operators, plan[id(model)])
    if skipped:
        logger.info("Layers left dense: %s", "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    _warn_unreached(model, unreached, covered)
    masking.update(clone, masking.updates_at_apply(clone))
    return clone


def unwrap(model, keep_quantization=True):
    """Returns a copy of `model` with its wrappers' operators baked into plain layers.

    Each wrapped weight gets `finalize` of its operators. With
    `keep_quantization`, the operators that `kept_by_strip` (integer QAT
    quantizers) stay, in a wrapper holding only them, with their state.
    """
    check_model(model)

    def clone_layer(layer):
        if not isinstance(layer, CompressionWrapper):
            return copying.plain_copy(layer)
        inner = copying.copy_layer(layer.layer)
        copying.prebuild(layer.layer, inner)
        kept = {
            i for i, op in enumerate(layer.operators) if keep_quantization and op.kept_by_strip
        }
        weights = {p: [i for i in c if i in kept] for p, c in layer.chains.items()}
        entry = {
            "weights": {p: c for p, c in weights.items() if c},
            "layer": {i: a for i, a in layer.layer_operators.items() if i in kept},
        }
        new = inner
        if entry["weights"] or entry["layer"]:
            new = _wrapper(inner, layer.operators, entry, name=layer.name)

        def copy_weights():
            values = {
                id(layer.weight(p)): layer.finalized_value(p, skip=kept) for p in layer.chains
            }
            inner.set_weights(
                [ops.convert_to_numpy(values.get(id(w), w)) for w in layer.layer.weights]
            )
            if new is not inner:
                new.copy_states_from(layer, kept)

        return new, copy_weights

    stripped = copying.clone_with(model, clone_layer)
    layers = [layer for layer in stripped.layers if not isinstance(layer, keras.layers.InputLayer)]
    if getattr(model, "_condensa_shell", False) and len(layers) == 1:
        if isinstance(layers[0], CompressionWrapper):
            stripped._condensa_shell = True  # int8 QAT kept: a later strip can still unwrap
        else:
            return layers[0]  # the user's subclassed model, as it came in
    return stripped
