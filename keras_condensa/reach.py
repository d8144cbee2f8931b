"""Finding every weighted layer a scheme can reach, wherever the model holds it.

A functional or Sequential model lists its layers; `masking.iter_leaf_layers`
walks them, nested graph models included. A *custom* layer (a KerasHub
`TransformerEncoder`, a `Bidirectional`, a block of a subclassed model) keeps its
sublayers as attributes and calls them in Python. Its sublayers are reached by
their attribute paths (`"_self_attention_layer._query_dense"`), the way
`CompressionWrapper` already reaches a `MultiHeadAttention`'s projections: the
custom layer is wrapped as a whole and the wrapper swaps the nested weights it
transforms while the custom layer runs. Nothing in the layer's code changes.

A `Unit` is one layer of known kind (a prunable layer, or a normalization layer
that is never pruned) at an attribute path inside the layer that the model's
graph holds (its *container*), or a custom layer's own variables, which no
operator knows how to compress (`kind="unreachable"`).
"""

import dataclasses
import math

import keras

from keras_condensa import prunable


@dataclasses.dataclass(frozen=True)
class Unit:
    """One weighted layer and where it sits.

    Attributes:
        container: the layer of the model's graph that holds it (the layer
            itself for a top-level layer).
        prefix: attribute path of the layer inside `container` (`""` when the
            layer is the container).
        layer: the layer, or `container` for its own variables.
        spec: its `PruneSpec` with paths relative to `container`, or `None`.
        variables: the variables this unit counts (`layer.weights`, or a
            custom layer's own variables).
        reason: why it cannot be compressed (`None` when `spec` is set).
    """

    container: keras.layers.Layer
    prefix: str
    layer: keras.layers.Layer
    spec: prunable.PruneSpec | None
    variables: tuple
    reason: str | None = None

    @property
    def name(self):
        """The name users know the layer by: its Keras path inside the container."""
        if not self.prefix:
            return self.container.name
        path = getattr(self.layer, "path", None) or self.layer.name
        inside = path.startswith(f"{self.container.name}/")
        return path if inside else f"{self.container.name}/{path}"

    @property
    def nested(self):
        return bool(self.prefix)

    @property
    def params(self):
        return sum(math.prod(v.shape) for v in self.variables)


def join(prefix, path):
    """`prefix.path`, or `path` alone for a top-level layer."""
    return f"{prefix}.{path}" if prefix else path


def _children(layer):
    """Yields `(attribute path, sublayer)` for the sublayers `layer` tracks, named when possible.

    Attributes come first, in a stable order (lists and dicts of layers as
    `attr.0`, `attr.key`); a tracked sublayer held by no attribute is reached
    through Keras's own list of tracked layers (`_layers.i`).
    """
    seen = set()
    found = prunable.attributes(layer)
    for name in sorted(found):
        # Keras's and TensorFlow's own bookkeeping (`_layers`, `_self_unconditional_...`).
        if name in ("_layers", "_tracker") or name.startswith(("__", "_self_")):
            continue
        value = found[name]
        if isinstance(value, keras.layers.Layer):
            pairs = [(name, value)]
        elif isinstance(value, (list, tuple)):
            pairs = [(f"{name}.{i}", v) for i, v in enumerate(value)]
        elif isinstance(value, dict):
            # A key with a dot would break the path; such a sublayer is reached through `_layers`.
            pairs = [
                (f"{name}.{k}", v) for k, v in value.items() if isinstance(k, str) and "." not in k
            ]
        else:
            continue
        for path, child in pairs:
            if isinstance(child, keras.layers.Layer) and id(child) not in seen:
                seen.add(id(child))
                yield path, child
    for i, child in enumerate(getattr(layer, "_layers", ())):
        if id(child) not in seen:
            seen.add(id(child))
            yield f"_layers.{i}", child


def _nested_variables(layer):
    ids = set()
    for child in layer._flatten_layers(include_self=False):
        ids.update(id(v) for v in child.weights)
    return ids


def _own_variables(layer):
    """Variables of `layer` that belong to none of its sublayers."""
    nested = _nested_variables(layer)
    return tuple(v for v in layer.weights if id(v) not in nested)


def units(container):
    """The units of one layer of a model's graph.

    A layer of known kind is one unit. A custom layer (or subclassed model)
    yields the units of its sublayers, found by attribute path, recursively,
    and one unit for its own variables if it has any.

    Args:
        container: a layer of the model's graph (or a subclassed model).

    Returns:
        A list of `Unit`.
    """
    result = []
    _collect(container, "", container, result, set())
    return result


def _collect(container, prefix, layer, result, seen):
    if id(layer) in seen or not layer.weights:
        return
    seen.add(id(layer))
    spec = prunable.prune_spec(layer)
    known_reason = prunable.not_pruned_reason(layer)
    if spec is not None or known_reason is not None:
        result.append(
            Unit(
                container=container,
                prefix=prefix,
                layer=layer,
                spec=prunable.prefixed(spec, prefix) if spec is not None else None,
                variables=tuple(layer.weights),
                reason=known_reason,
            )
        )
        return
    for path, child in _children(layer):
        _collect(container, join(prefix, path), child, result, seen)
    own = _own_variables(layer)
    if own:
        result.append(
            Unit(
                container=container,
                prefix=prefix,
                layer=layer,
                spec=None,
                variables=own,
                reason=prunable.unsupported_reason(layer),
            )
        )


def copy_names(source, target):
    """Gives the sublayers of `target`, a copy of `source`, the names they have in `source`.

    A copy made with `from_config` creates its sublayers anew, and Keras
    numbers the automatic names (`dense` becomes `dense_3`): a user who names
    a nested layer in `include=` or reads `kc.summary` should find the same
    names in the copy.
    """
    target_children = dict(_children(target))
    for path, child in _children(source):
        copy = target_children.get(path)
        if copy is None or type(copy) is not type(child):
            continue
        copy.name = child.name
        if hasattr(child, "_path"):
            copy._path = child._path
        copy_names(child, copy)
