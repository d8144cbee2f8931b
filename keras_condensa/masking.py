"""Computing and enforcing masks over a wrapped model."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_condensa import dependency, reach
from keras_condensa.graph_walk import is_graph_model
from keras_condensa.graph_walk import leaf_layers as iter_leaf_layers
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


def covered_items(op, wrappers):
    """The weights `op` covers, as `(wrapper, spec, paths)`.

    A wrapper around a custom layer gives one item per covered sublayer,
    its spec's paths under the sublayer's attribute path.
    """
    items = []
    for wrapper in wrappers:
        for unit in reach.units(wrapper.layer):
            if (unit.spec is None and unit.nested) or not op.selects(unit.layer):
                continue
            if op.reason_unsupported(unit.layer, unit.spec) is not None:
                continue
            paths = tuple(p for p in op.paths(unit.layer, unit.spec) if p in wrapper.masked_weights)
            if paths:
                items.append((wrapper, unit.spec, paths))
    return items


def initial_densities(scheme):
    """Densities at `apply` time: final for one-shot operators, none yet for scheduled ones."""
    return {
        op: (None if op.schedule is not None else op.density)
        for op in scheme.operators()
        if op.prunes
    }


def update_masks(scheme, model, densities):
    """Recomputes every mask of `model` for `scheme` and zeroes the pruned weights.

    Operators run in order; each sees the weights the previous ones left, and
    a weight's mask is the product of the operators' masks; a weight no
    operator computes a mask for now keeps its mask. Operators that
    prune coupled channels together (`coupled_channels`) get the model's
    channel dependency graph.

    Args:
        scheme: the operator or `Compose` that was applied.
        model: the wrapped model.
        densities: `{operator: density}`; `None` leaves an operator out.
    """
    wrappers = list(iter_wrappers(model))
    values = {
        (id(w), p): np.asarray(ops.convert_to_numpy(w.weight(p).value))
        for w in wrappers
        for p in w.masked_weights
    }
    new_masks = {}
    graph = None
    for op in scheme.operators():
        density = densities.get(op)
        if density is None or not op.prunes:
            continue
        items = [
            (w, spec, paths, {p: values[(id(w), p)] for p in paths})
            for w, spec, paths in covered_items(op, wrappers)
        ]
        if not items:
            continue
        extra = {}
        if getattr(op, "coupled_channels", False) and is_graph_model(model):
            graph = graph or dependency.DependencyGraph(model, on_unknown="skip")
            extra["graph"] = graph
        for key, mask in op.compute_masks(items, density, **extra).items():
            values[key] = values[key] * mask
            new_masks[key] = mask if key not in new_masks else new_masks[key] * mask
    optimizer = getattr(model, "optimizer", None)
    slots = _optimizer_slots(optimizer) if optimizer is not None and optimizer.built else []
    for w in wrappers:
        for p in w.masked_weights:
            mask = new_masks.get((id(w), p))
            if mask is None:
                continue  # no operator computed it now (not due yet, or none selects it): kept
            w.masks[p].assign(mask)
            for slot in _slots_of(slots, w.weight(p)):
                if tuple(slot.shape) == mask.shape:
                    slot.assign(ops.multiply(slot, ops.convert_to_tensor(mask, slot.dtype)))
        w.apply_masks()


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
    """Optimizer state that can move a weight whose gradient is zero: `[(name, slot)]`.

    A pruned weight gets exactly zero gradient (the forward pass masks it), so
    it stays at zero unless state from before pruning moves it: momentum
    (SGD, Adam, Adamax, Nadam, Lion, RMSprop's), FTRL's linear term, the EMA of
    weights. Those slots are zeroed where a mask prunes. Slots that only scale
    the gradient (`_SCALING_SLOTS`) are kept, and so are factored ones
    (Adafactor's row and column statistics, whose shapes differ from the
    weight's). A `LossScaleOptimizer` lists its inner optimizer's slots.
    """
    return [(slot.name, slot) for slot in optimizer.variables if slot.shape]


def _slots_of(slots, variable):
    """The slots of `slots` that belong to `variable` and can move it."""
    prefix = _slot_prefix(variable) + "_"
    return [
        slot
        for name, slot in slots
        if name.startswith(prefix) and name[len(prefix) :] not in _SCALING_SLOTS
    ]

