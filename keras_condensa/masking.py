"""Running operators' host-side updates over a wrapped model, and enforcing masks."""

import functools
import warnings

import numpy as np
from keras import ops

from keras_condensa import dependency
from keras_condensa.graph_walk import is_graph_model
from keras_condensa.graph_walk import leaf_layers as iter_leaf_layers
from keras_condensa.updates import Item, UpdateContext
from keras_condensa.wrappers import CompressionWrapper


def containers(model):
    """The layers of a model's graph, or the model itself when it is subclassed."""
    return list(iter_leaf_layers(model)) if is_graph_model(model) else [model]


def never_pruned(model):
    """Names of the layers whose pruning schedule never set their masks.

    A scheduled operator prunes during `fit` through `kc.callbacks(scheme)`;
    fitted without them, its layers keep every weight.
    """
    return [
        w.layer.name
        for w in iter_wrappers(model)
        if w.scheduled
        and w.masks
        and all(np.all(ops.convert_to_numpy(m) == 1) for m in w.masks.values())
        and not any(op.ran(state) for path in w.chains for op, state in w.chain(path))
    ]


def warn_never_pruned(model):
    """Warns (and returns the names) when `never_pruned(model)` finds layers."""
    names = never_pruned(model)
    if names:
        warnings.warn(
            f"Model '{model.name}' has a pruning schedule that never ran: {names} keep every "
            "weight (density 1.0). Scheduled pruning happens during fit through its callbacks: "
            "pruned.fit(..., callbacks=kc.callbacks(scheme)) (tfmot's UpdatePruningStep).",
            stacklevel=3,
        )
    return names


def iter_wrappers(model):
    """Yields the `CompressionWrapper` layers of `model`, nested models included."""
    for layer in iter_leaf_layers(model):
        if isinstance(layer, CompressionWrapper):
            yield layer


def operators_of(model):
    """The operators the wrappers of `model` run (the scheme's flat list), or `[]`."""
    for wrapper in iter_wrappers(model):
        return list(wrapper.operators)
    return []


def _items(index, wrappers, raw):
    """The weights operator `index` covers, as `Item`s grouped by layer, with their values.

    A weight's value is what the operators before `index` in its chain make of it.
    """
    items = []
    for wrapper in wrappers:
        groups = {}
        for path, chain in wrapper.chains.items():
            if index not in chain:
                continue
            unit = wrapper.unit_of(path)
            key = id(unit)
            if key not in groups:
                groups[key] = Item(wrapper, unit.spec if unit else None, (), {}, {})
                items.append(groups[key])
            item = groups[key]
            item.paths += (path,)
            item.states[path] = wrapper.states[(index, path)]
            if (id(wrapper), path) not in raw:
                raw[(id(wrapper), path)] = _numpy(wrapper.weight(path))
            value = raw[(id(wrapper), path)]
            before = chain[: chain.index(index)]
            if before:
                value = ops.convert_to_tensor(value)
                for i in before:
                    value = wrapper.operators[i].transform(wrapper.states[(i, path)], value, False)
                value = _numpy(value)
            item.values[path] = value
    return items


def _numpy(value):
    return np.asarray(ops.convert_to_numpy(value))


def updates_at_apply(model):
    """`{operator index: (None, None)}` for the operators that update when a scheme is applied.

    Those without a schedule (one-shot masks, like Condensa's); scheduled
    ones update during `fit` through `kc.callbacks`.
    """
    return {
        index: (None, None) for index, op in enumerate(operators_of(model)) if op.schedule is None
    }


def update(model, due):
    """Runs the `update` of some of `model`'s operators, in scheme order, and enforces masks.

    Each operator sees the weights as the operators before it leave them.
    Where a mask is 0 the stored weight is zeroed, and so is the optimizer
    state that could move it again (momentum, Adam's first moment): a pruned
    weight gets zero gradient, so it then stays exactly zero.

    Args:
        model: the wrapped model.
        due: `{operator index: (step, schedule)}`: the schedule resolved for
            this fit and its step, or `(None, None)` at `apply` time.
    """
    wrappers = list(iter_wrappers(model))
    if not wrappers:
        return
    operators = wrappers[0].operators

    @functools.cache
    def graph_fn():  # built once, and only when an operator reads `context.graph`
        if not is_graph_model(model):
            return None
        return dependency.DependencyGraph(model, on_unknown="skip")

    raw, touched, assigned = {}, {}, {}
    for index in sorted(due):
        op = operators[index]
        if getattr(op, "update", None) is None:
            continue  # no host-side state
        items = _items(index, wrappers, raw)
        if not items:
            continue
        step, schedule = due[index]
        context = UpdateContext(model, step=step, schedule=schedule, graph_fn=graph_fn)
        op.update(items, context)
        assigned.update(context.assigned)
        for item in items:
            for path in item.paths:
                touched[(id(item.wrapper), path)] = (item.wrapper, path)
                raw.pop((id(item.wrapper), path), None)  # an update may assign the weight too
    _enforce(model, touched, assigned)


def _enforce(model, touched, assigned):
    """Zeroes the stored weights (and their optimizer momentum) where their masks are 0.

    In NumPy: a handful of assigns per weight, whatever the backend; `assigned`
    holds the host values of the masks an update just set (`{id(variable): array}`).
    """
    optimizer = getattr(model, "optimizer", None)
    slots = _optimizer_slots(optimizer) if optimizer is not None and optimizer.built else {}
    for wrapper, path in touched.values():
        masks = [
            _host(state["mask"], assigned)
            for _, state in wrapper.chain(path)
            if "mask" in (state or {})
        ]
        if not masks:
            continue
        kept = masks[0] != 0
        for mask in masks[1:]:
            kept &= mask != 0
        if kept.all():
            continue
        variable = wrapper.weight(path)
        variable.assign(_zeroed(_numpy(variable), kept))
        for slot in slots.get(_slot_prefix(variable), ()):
            if tuple(slot.shape) == kept.shape:
                slot.assign(_zeroed(_numpy(slot), kept))


def _zeroed(value, kept):
    """`value` with zeros where `kept` is False, in its own dtype."""
    return np.where(kept, value, np.zeros((), value.dtype))


def _host(variable, assigned):
    """A variable's value on the host: the one just assigned, or read back."""
    value = assigned.get(id(variable))
    return _numpy(variable) if value is None else value


def _slot_prefix(variable):
    # Keras names an optimizer slot `{variable.path with / as _}_{slot}`.
    return variable.path.replace("/", "_")


# Slots that only scale a gradient (second moments, accumulators): with a zero
# gradient they cannot move a weight, and zeroing them breaks their invariants
# (centered RMSprop's `velocity - average_gradient**2` turns negative, a zero
# FTRL accumulator divides by zero).
_SCALING_SLOTS = (
    "velocity",
    "velocity_hat",
    "norm",
    "average_gradient",
    "accumulator",
    "accumulated_grad",
    "accumulated_delta_var",
)


def _optimizer_slots(optimizer):
    """Optimizer state that can move a weight whose gradient is zero: `{weight prefix: [slot]}`.

    A pruned weight gets exactly zero gradient (the forward pass masks it), so
    it stays at zero unless state from before pruning moves it: momentum
    (SGD, Adam, Adamax, Nadam, Lion, RMSprop's), FTRL's linear term, the EMA of
    weights. Those slots are zeroed where a mask prunes. Slots that only scale
    the gradient (`_SCALING_SLOTS`) are kept, and so are factored ones
    (Adafactor's row and column statistics, whose shapes differ from the
    weight's). A `LossScaleOptimizer` lists its inner optimizer's slots.
    Keras names a slot `{weight path with / as _}_{slot name}`.
    """
    slots = {}
    for slot in optimizer.variables:
        if not slot.shape:
            continue
        parts = slot.name.split("_")
        # every split `{prefix}_{name}`: the weight is unknown here
        for cut in range(1, len(parts)):
            name = "_".join(parts[cut:])
            if name not in _SCALING_SLOTS:
                slots.setdefault("_".join(parts[:cut]), []).append(slot)
    return slots

