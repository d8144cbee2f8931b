"""TensorFlow side of the export: trace a Keras 3 model and run the TFLite converter.

The only module of the project that imports TensorFlow; `convert.py` imports it
lazily, under the TensorFlow backend only.

The path that works with Keras 3.15 / TF 2.21: trace `model(x, training=False)`
in a `tf.function` with a fixed input signature (batch 1), then
`tf.lite.TFLiteConverter.from_concrete_functions([fn], model)` with
`experimental_lower_to_saved_model = False`, which freezes the variables into
constants. (The default SavedModel lowering keeps Keras 3 variables as
`READ_VARIABLE` ops that fail at run time; `from_keras_model` works but writes a
SavedModel first and leaves the batch dimension dynamic.)
"""

import re

import keras

from tflite_export import data
from tflite_export.errors import ConversionError, UnsupportedOpsError, missing_dependency

try:
    import tensorflow as tf
except ImportError as error:
    raise missing_dependency("tensorflow", "the TFLite converter", error) from error

_FAKE_QUANT_PREFIX = "FakeQuantWithMinMax"
_WHILE_OPS = ("While", "StatelessWhile")
CALIBRATOR_BUG = "https://github.com/tensorflow/tensorflow/issues/75140"


def trace(model, specs):
    """Traces the model's inference call with batch-1 inputs named `input_<i>`.

    The function takes one tensor per input in `specs` order and calls the
    model with them in the structure it takes (a dict, a list, one tensor).

    Args:
        model: a `keras.Model` (TensorFlow backend).
        specs: its `data.InputSpec` list.

    Returns:
        A `tf.types.experimental.ConcreteFunction` returning one tensor per model output.
    """
    signature = [
        tf.TensorSpec((1, *s.shape), tf.as_dtype(s.dtype), name=f"input_{i}")
        for i, s in enumerate(specs)
    ]

    def serve(*xs):
        outputs = model(data.pack(model, xs), training=False)
        flat = keras.tree.flatten(outputs)
        return flat[0] if len(flat) == 1 else tuple(flat)

    return tf.function(serve, input_signature=signature).get_concrete_function()


def _graph_nodes(concrete):
    """Every node of a traced function, including those of its nested functions."""
    graph_def = concrete.graph.as_graph_def()
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def graph_op_types(concrete):
    """All op types in a traced function, including its nested functions."""
    return {node.op for node in _graph_nodes(concrete)}


def has_fake_quant(op_types):
    """Whether the graph carries fake-quant ranges (QAT) the converter can use."""
    return any(t.startswith(_FAKE_QUANT_PREFIX) for t in op_types)


def fake_quant_bits(concrete):
    """The `num_bits` of the traced function's fake-quant ops (an empty set without QAT)."""
    return {
        n.attr["num_bits"].i for n in _graph_nodes(concrete) if n.op.startswith(_FAKE_QUANT_PREFIX)
    }


def has_while(op_types):
    return any(t in _WHILE_OPS for t in op_types)


def _unroll_config(config, changed, name):
    if "unroll" in config and not config["unroll"]:
        config["unroll"] = True
        changed.append(name)
    for key in ("layer", "backward_layer"):
        inner = config.get(key)
        if isinstance(inner, dict) and isinstance(inner.get("config"), dict):
            _unroll_config(inner["config"], changed, f"{name}/{key}")
    return config


def unrolled(model):
    """A copy of the model with every recurrent layer set to `unroll=True`.

    Unrolled layers compute the same function without a `WHILE` loop; other
    layers are shared with the original model.

    Args:
        model: a Functional or Sequential `keras.Model`.

    Returns:
        `(clone, names)`: the copy and the names of the layers unrolled.

    Raises:
        ValueError: the model cannot be cloned (a subclassed model).
    """
    changed = []
    pairs = []

    def clone_layer(layer):
        if not isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
            return layer
        before = len(changed)
        config = _unroll_config(layer.get_config(), changed, layer.name)
        if len(changed) == before:
            return layer
        copy = layer.__class__.from_config(config)
        pairs.append((layer, copy))
        return copy

    try:
        clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    except Exception as error:  # noqa: BLE001 - clone_model fails in many ways
        raise ValueError(
            f"Cannot rebuild {model.name!r} with unrolled recurrent layers ({error}). "
            "Build the model with `unroll=True` in its RNN layers, or use quantize='dynamic'."
        ) from None
    for original, copy in pairs:
        copy.set_weights(original.get_weights())
    return clone, changed


def recurrent_layers(model):
    """Names of the model's layers that hold a Keras recurrent layer (wrappers included)."""
    names = []
    for layer in model.layers:
        nested = layer._flatten_layers(include_self=True)
        if any(isinstance(n, (keras.layers.RNN, keras.layers.Bidirectional)) for n in nested):
            names.append(layer.name)
    return names or ["(a loop outside Keras RNN layers)"]


def _representative(arrays):
    def generate():
        for i in range(arrays[0].shape[0]):
            yield [a[i : i + 1] for a in arrays]

    return generate


def _configure(converter, quantize, representative, sparse, int8_io, flex, strict):
    optimizations = []
    if quantize is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        if representative is not None:
            converter.representative_dataset = _representative(representative)
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if not strict:
                ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    if flex:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops


def _op_list(message, label):
    found = re.findall(rf"{label}:\s*([^\n]+)", message)
    ops = []
    for line in found:
        for name in line.split(","):
            name = name.strip()
            if name and name not in ops:
                ops.append(name)
    return ops


def translate_error(error, allow_select_tf_ops):
    """Turns a converter exception into an `UnsupportedOpsError` or `ConversionError`."""
    message = str(error)
    flex = _op_list(message, "TF Select ops")
    custom = _op_list(message, "Custom ops")
    if flex or custom:
        parts = ["The TFLite converter cannot lower some TensorFlow ops to LiteRT builtins."]
        if flex:
            parts.append(
                f"Ops with a Flex kernel: {flex}; pass allow_select_tf_ops=True to keep them "
                "as Flex ops (the runtime then needs the Flex delegate, e.g. "
                "tensorflow-lite-select-tf-ops; the ai-edge-litert pip interpreter has none)."
            )
        if custom:
            parts.append(
                f"Ops with no builtin or Flex kernel: {custom}; replace them in the model "
                "(allow_select_tf_ops does not help) or register custom ops."
            )
        return UnsupportedOpsError(" ".join(parts), select_tf_ops=flex, custom_ops=custom)
    tail = "\n".join(line for line in message.splitlines() if "error" in line.lower())[-2000:]
    return ConversionError(f"The TFLite converter failed: {tail or message[-2000:]}")


def _run_converter(model, concrete, quantize, representative, sparse, int8_io, flex, strict):
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    converter.experimental_lower_to_saved_model = False
    _configure(converter, quantize, representative, sparse, int8_io, flex, strict)
    try:
        return converter.convert()
    except Exception as error:  # noqa: BLE001 - ConverterError, RuntimeError, ValueError
        raise translate_error(error, flex) from None


def convert(
    model,
    specs,
    quantize=None,
    representative=None,
    sparse=True,
    int8_io=False,
    allow_select_tf_ops=False,
):
    """Converts a Keras model to flatbuffer bytes.

    Args:
        model: a `keras.Model` (TensorFlow backend).
        specs: its `data.InputSpec` list.
        quantize: `None`, `"float16"`, `"dynamic"` or `"int8"`.
        representative: calibration arrays (one per input) for int8, or `None`.
        sparse: store sparse-enough weights in the sparse encoding.
        int8_io: int8 input and output tensors (int8 only).
        allow_select_tf_ops: allow Flex (Select TF) ops.

    Returns:
        `(content, notes)`: the flatbuffer bytes and a list of what was changed
        on the way and why.

    Raises:
        ValueError: int8 without representative data on a graph with no
            fake-quant ranges; `int8_io` with a loop that cannot be unrolled.
        UnsupportedOpsError: ops the converter cannot lower.
        ConversionError: any other converter failure.
    """
    notes = []
    concrete = trace(model, specs)
    op_types = graph_op_types(concrete)
    if quantize == "int8" and representative is None and not has_fake_quant(op_types):
        raise ValueError(
            "quantize='int8' needs activation ranges: pass representative_data (a few hundred "
            "training inputs, shaped like the model's input) for post-training calibration, "
            "or export a model fine-tuned with kc.Quantize('int8'), whose fake-quant ops "
            "carry the ranges."
        )
    if quantize == "int8" and representative is not None and has_while(op_types):
        # The calibrator segfaults on WHILE loops (TF 2.17-2.21).
        if not int8_io:
            representative = None
            notes.append(
                f"recurrent layers {recurrent_layers(model)} keep float activations: the TFLite "
                f"int8 calibrator crashes on their WHILE loop ({CALIBRATOR_BUG}), so the file "
                "was converted without calibration: int8 weights with dynamic-range kernels in "
                "float-activation parts, full int8 where kc.Quantize fake-quant ranges cover "
                "layers (pass int8_io=True to unroll the loops for full int8: a far larger file)"
            )
        else:
            model, names = unrolled(model)
            concrete = trace(model, specs)
            if has_while(graph_op_types(concrete)):
                raise ValueError(
                    "int8_io=True needs full int8, but int8 calibration of a model with a loop "
                    f"(WHILE op) crashes the TFLite calibrator ({CALIBRATOR_BUG}), and the loop "
                    f"of {recurrent_layers(model)} is not from an unrollable Keras RNN layer. "
                    "Pass int8_io=False (int8 weights, dynamic-range kernels in the loop)."
                )
            notes.append(
                f"unrolled recurrent layers {names} for int8 calibration (int8_io=True needs "
                f"full int8): the TFLite calibrator crashes on WHILE loops ({CALIBRATOR_BUG}); "
                "same function, larger file"
            )
    if sparse and quantize is not None and min(fake_quant_bits(concrete), default=8) < 8:
        # TF 2.21's sparsity pass aborts the whole process on the int4 tensors that
        # 4-bit weights become; the converter packs those two to a byte anyway.
        sparse = False
        notes.append(
            "sparse encoding skipped: the weights are 4-bit (kc.Quantize('int4')), which the "
            "converter stores as packed int4 tensors and its sparsity pass cannot encode (it "
            "aborts the process in TensorFlow 2.21); pruned zeros still shrink the gzip size"
        )
    args = (model, concrete, quantize, representative, sparse, int8_io, allow_select_tf_ops)
    if quantize == "int8" and representative is not None:
        try:
            return _run_converter(*args, strict=True), notes
        except UnsupportedOpsError:
            raise
        except ConversionError as strict_error:
            try:
                content = _run_converter(*args, strict=False)
            except ConversionError:
                raise strict_error from None
            notes.append(
                "some ops have no int8 kernel, so they stay in float "
                f"(TFLITE_BUILTINS added to TFLITE_BUILTINS_INT8): {strict_error}"
            )
            return content, notes
    content = _run_converter(*args, strict=True)
    if quantize == "int8":
        from tflite_export.inspection import float_compute_ops

        left = float_compute_ops(content)
        if left:
            notes.append(
                f"ops {left} still compute in float: the graph's fake-quant ops do not cover "
                "their inputs and outputs, so the converter kept them in float"
            )
    return content, notes
