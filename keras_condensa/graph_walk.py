"""Producers and consumers of layers in a Sequential or functional model's graph.

Small read-only helpers over Keras's node graph (`layer._inbound_nodes`,
`layer._outbound_nodes`), shared by BatchNormalization folding and the
placement of activation ranges. A layer called more than once (shared) has
several producers; the helpers answer for layers called once.
"""

import keras


def is_graph_model(layer):
    """Whether `layer` is a Sequential or functional model (its layer graph is known)."""
    from keras.src.models.functional import Functional  # noqa: PLC0415 - no public alias

    return isinstance(layer, (keras.Sequential, Functional))


def leaf_layers(model):
    """The layers of `model` in graph order, nested Sequential/functional models expanded."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and is_graph_model(layer):
            yield from leaf_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer


def single_call(layer):
    """Whether the layer is called exactly once in the graph."""
    return len(layer._inbound_nodes) == 1


def producers(layer):
    """The operations producing the inputs of `layer`'s (first) call, in input order."""
    if not layer._inbound_nodes:
        return []
    node = layer._inbound_nodes[0]
    return [t._keras_history.operation for t in node.input_tensors]


def sole_producer(layer):
    """The one layer producing `layer`'s only input, or `None`."""
    found = producers(layer)
    if len(found) != 1 or not isinstance(found[0], keras.layers.Layer):
        return None
    if isinstance(found[0], (keras.layers.InputLayer, keras.Model)):
        return None
    return found[0]


def consumers(layer):
    """The operations consuming the outputs of `layer` (one entry per call of theirs)."""
    return [node.operation for node in layer._outbound_nodes]


def input_tensors(layer):
    """The symbolic input tensors of `layer`'s first call."""
    return list(layer._inbound_nodes[0].input_tensors) if layer._inbound_nodes else []


def output_tensors(layer):
    """The symbolic output tensors of `layer`'s first call."""
    return list(layer._inbound_nodes[0].output_tensors) if layer._inbound_nodes else []
