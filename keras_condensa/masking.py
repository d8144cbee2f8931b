"""Computing and enforcing masks over a wrapped model."""

import keras
import numpy as np
from keras import ops

from keras_condensa import dependency, prunable
from keras_condensa.wrappers import CompressionWrapper


def is_graph_model(model):
    """Whether `model` is Sequential or functional (its layer graph is known)."""
    from keras.src.models.functional import Functional  # noqa: PLC0415 - no public alias

    return isinstance(model, (keras.Sequential, Functional))


def iter_leaf_layers(model):
    """Yields the layers of `model`, descending into nested Sequential/functional models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and is_graph_model(layer):
            yield from iter_leaf_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer


def iter_wrappers(model):
    """Yields the `CompressionWrapper` layers of `model`, nested models included."""
    for layer in iter_leaf_layers(model):
        if isinstance(layer, CompressionWrapper):
            yield layer


def covered_items(op, wrappers):
    """The wrappers `op` covers, as `(wrapper, spec, paths)`."""
    items = []
    for wrapper in wrappers:
        layer = wrapper.layer
        if not op.selects(layer):
            continue
        spec = prunable.prune_spec(layer)
        if op.reason_unsupported(layer, spec) is not None:
            continue
        paths = tuple(p for p in op.paths(layer, spec) if p in wrapper.masked_weights)
        if paths:
            items.append((wrapper, spec, paths))
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
    a weight's mask is the product of the operators' masks. Operators that
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
    slots = _optimizer_slots(optimizer) if optimizer is not None and optimizer.built else {}
    for w in wrappers:
        for p in w.masked_weights:
            mask = new_masks.get((id(w), p))
            if mask is None:
                mask = np.ones(tuple(w.masks[p].shape), "float32")
            w.masks[p].assign(mask)
            for slot in slots.get(_slot_prefix(w.weight(p)), ()):
                if tuple(slot.shape) == mask.shape:
                    slot.assign(ops.multiply(slot, ops.convert_to_tensor(mask, slot.dtype)))
        w.apply_masks()


def _slot_prefix(variable):
    # Keras names an optimizer slot `{variable.path with / as _}_{slot}`.
    return variable.path.replace("/", "_")


def _optimizer_slots(optimizer):
    """Optimizer state that can move a weight whose gradient is zero, by weight.

    A pruned weight gets exactly zero gradient (the forward pass multiplies it
    by its mask), so it stays at zero unless state from before pruning moves
    it: momentum, Adam's moments, FTRL's linear term, the EMA of weights.
    Those slots are zeroed where a mask prunes. Accumulators that only
    divide the gradient (Adagrad's, FTRL's) are kept: zeroing FTRL's would
    divide by zero.
    """
    by_prefix = {}
    for slot in optimizer.variables:
        name = slot.name
        if not slot.shape or name.endswith("accumulator") or "_" not in name:
            continue
        by_prefix.setdefault(name.rsplit("_", 1)[0], []).append(slot)
    return by_prefix

