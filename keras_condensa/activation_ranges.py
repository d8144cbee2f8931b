"""Where integer QAT puts activation ranges: one range per tensor, where the converter fuses.

A LiteRT int8 file holds one scale per tensor and fuses ReLU/ReLU6 into the
convolution or fully connected op before it. A QAT model computes what its
file computes only if its fake-quant ops sit on the same tensors:

- each tensor gets at most one range: a layer fed by a ranged tensor does
  not quantize its input again (two ranges on one tensor are two roundings
  in Keras and one in the file);
- a Dense/Conv/Add whose only consumer is a ReLU/ReLU6 layer leaves its
  output unquantized and the ReLU layer holds the range (the converter fuses
  them);
- layers without weights that compute (Add, Multiply, Concatenate, average
  pooling, Activation, ...) get an output range, as post-training
  calibration gives them, so no float island sits between int8 kernels;
  layers that only move values (Reshape, Flatten, max pooling, padding,
  Dropout, Identity) keep their input's range, as the converter does;
- sigmoid, softmax and tanh outputs inside the model get no fake-quant:
  their int8 kernels have a fixed output range that the converter sets.
"""

import keras

from keras_condensa import graph_walk
from keras_condensa.quantizers import FIXED_RANGES, output_activation

# Layers whose output has the scale of their input in a LiteRT file.
_PASSTHROUGH = (
    keras.layers.InputLayer,
    keras.layers.Identity,
    keras.layers.Reshape,
    keras.layers.Flatten,
    keras.layers.Permute,
    keras.layers.RepeatVector,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)
# Between a producer and its fused activation: layers that vanish in the file.
_TRANSPARENT = (keras.layers.Identity, keras.layers.Dropout)
_FUSING = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
)
_FUSABLE_ACTIVATIONS = ("relu", "relu6")


def _fusable_activation_layer(layer):
    if isinstance(layer, keras.layers.ReLU):
        return (
            float(layer.negative_slope) == 0.0
            and float(layer.threshold) == 0.0
            and layer.max_value in (None, 6.0)
        )
    if isinstance(layer, keras.layers.Activation):
        return output_activation(layer) in _FUSABLE_ACTIVATIONS
    return False


def _is_float(tensor):
    return "float" in str(tensor.dtype)


def integer_quantizers(scheme):
    """`{index: operator}` of `scheme`'s operators that quantize activations (int8/int4 QAT)."""
    return {
        index: op
        for index, op in enumerate(scheme.operators())
        if getattr(op, "quantizes_activations", False)
    }


def _fused_activation(layer):
    """The ReLU/ReLU6 layer the converter fuses into `layer`, or `None`."""
    if not isinstance(layer, _FUSING) or output_activation(layer) != "linear":
        return None
    current = layer
    while True:
        following = graph_walk.consumers(current)
        if len(following) != 1 or not isinstance(following[0], keras.layers.Layer):
            return None
        current = following[0]
        if not graph_walk.single_call(current):
            return None
        if _fusable_activation_layer(current):
            return current
        if not isinstance(current, _TRANSPARENT):
            return None


def _activation_only(layer, ops):
    """The index of the quantizer covering a layer without weights, or `None`."""
    if isinstance(layer, keras.Model) or not graph_walk.single_call(layer):
        return None
    if layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
        return None
    tensors = graph_walk.input_tensors(layer) + graph_walk.output_tensors(layer)
    if len(graph_walk.output_tensors(layer)) != 1 or not all(_is_float(t) for t in tensors):
        return None
    return next((index for index, op in ops.items() if op.selects(layer)), None)


def place(scheme, model, plan):
    """Decides where each integer-QAT layer quantizes its activations.

    Args:
        scheme: the scheme being applied.
        model: the model it is applied to.
        plan: `{id(layer): {"weights": ..., "layer": {operator index:
            arguments}}}` for the layers the scheme wraps (as made by
            `surgery`); updated in place with the `places` of the
            activation quantizers of int8/int4 QAT layers, and with
            activation-only entries for the layers without weights that
            need a range (Add, ReLU after a convolution, pooling, ...).

    Returns:
        The updated `plan`.
    """
    ops = integer_quantizers(scheme)
    if not ops or not graph_walk.is_graph_model(model):
        return plan
    ranged = set()  # ids of symbolic tensors that carry a range
    fused = set()  # ids of activation layers that take their producer's output range
    for layer in graph_walk.leaf_layers(model):
        if not graph_walk.single_call(layer):
            continue
        inputs = [t for t in graph_walk.input_tensors(layer) if _is_float(t)]
        outputs = graph_walk.output_tensors(layer)
        inputs_ranged = all(id(t) in ranged for t in inputs)
        entry = plan.get(id(layer))
        hooks = {i: a for i, a in (entry or {}).get("layer", {}).items() if i in ops}
        if entry is None and not isinstance(layer, _PASSTHROUGH):
            index = _activation_only(layer, ops)
            if index is not None:
                hooks = {index: {}}
                entry = plan[id(layer)] = {"weights": {}, "layer": hooks}
        if not hooks:
            if isinstance(layer, _PASSTHROUGH) and inputs_ranged and inputs:
                ranged.update(id(t) for t in outputs)
            continue
        places = []
        if not inputs_ranged and len(inputs) == 1 and id(layer) not in fused:
            places.append("input")
        activation = output_activation(layer)
        if isinstance(layer, _FUSING) and activation not in ("linear", *_FUSABLE_ACTIVATIONS):
            places.append("activation")  # e.g. Dense(softmax): the logits have their own range
        follower = _fused_activation(layer)
        if follower is not None and _activation_only(follower, ops) is not None:
            fused.add(id(follower))
        else:
            # A sigmoid/softmax/tanh kernel has a fixed output range that the converter
            # sets; a fake-quant there, even with that range, leaves a requantizing
            # QUANTIZE in the file. Only a model output keeps it, so that Keras rounds
            # (and breaks top-1 ties) as the file does.
            if activation not in FIXED_RANGES or not graph_walk.consumers(layer):
                places.append("output")
            ranged.update(id(t) for t in outputs)
        for index in hooks:
            if places:
                entry["layer"][index] = {"places": places}
            else:
                del entry["layer"][index]  # e.g. a softmax layer: the converter fixes its range
        if not entry["weights"] and not entry["layer"]:
            del plan[id(layer)]
    return plan
