"""`Quantize`: float16, int8 and int4 weights (Condensa's `Quantize`), trained or post-training."""

import keras
from keras import ops

from keras_condensa import prunable, quantizers
from keras_condensa.model_checks import check_model
from keras_condensa.operators.base import Operator

MODES = ("qat", "post_training")
PLACES = ("input", "activation", "output")


@keras.saving.register_keras_serializable(package="keras_condensa")
class Quantize(Operator):
    """Quantizes weights (and for integer dtypes, activations) during fine-tuning.

    - `"float16"`: weights rounded to float16 in the forward pass, so the
      accuracy effect is visible before export (Condensa's default `Quantize`).
    - `"int8"`: quantization-aware training. Weights are fake-quantized
      symmetrically, one scale per output channel for convolutions and one per
      tensor for Dense and EinsumDense (per-channel fully connected weights do
      not get through the TFLite converter of TensorFlow 2.21); activations
      are fake-quantized per tensor within ranges tracked by a moving average
      during training and frozen at inference. On the TensorFlow backend these
      are the `FakeQuantWithMinMaxVars` ops the TFLite converter turns into
      int8 kernels, and `apply` places them so that the int8 file computes
      what the Keras model computes, with the ops post-training int8 gives:
      a BatchNormalization after a Conv, DepthwiseConv or Dense is folded
      into its kernel and bias from the moving statistics (freeze and fold,
      `keras_condensa.batchnorm_fold`); each tensor gets one range, put after
      a ReLU/ReLU6 the converter fuses into the layer before it, and layers
      without weights that compute (Add, Multiply, pooling, activations) get
      theirs (`keras_condensa.activation_ranges`). A layer whose inputs are
      integers (an Embedding of token ids) has its weights and its output
      quantized; a layer nested in a custom layer (the LSTMs of a
      Bidirectional, the Dense layers of a transformer block) has its
      weights quantized, and the custom layer keeps float activations.
    - `"int4"`: 4-bit weights, one scale per output channel; activations int8.

    Symmetric weights keep zero exactly representable, so pruned zeros stay
    zero. In `kc.Compose`, quantization runs after pruning and sees the masked
    weights; a Compose that lists it first is reordered, with a warning.

    With `mode="post_training"` it is a thin front to Keras's own
    `model.quantize(dtype)` ("int8", "int4", "float8", ...) on a copy of a
    plain (stripped) model, for users who cannot fine-tune.

    Args:
        dtype: `"float16"`, `"int8"` or `"int4"` (post-training: any mode
            `keras.Model.quantize` accepts).
        mode: `"qat"` (default) or `"post_training"`.
        activations: for integer dtypes in QAT, also quantize activations.
        range_decay: weight of the old range in the moving average that
            tracks an activation range during training.
        include: layer names or classes to cover (default: all supported).
        exclude: layer names or classes to leave in float.

    Example:

    ```python
    scheme = kc.Compose([kc.Prune(0.1), kc.Quantize("int8")])
    qat = scheme.apply(model)
    qat.fit(x, y, epochs=3, callbacks=kc.callbacks(scheme))
    ```
    """

    # Several words, no arguments: the word is the dtype, the first argument.
    scheme_word = ("float16", "int8", "int4")
    scheme_args = ()
    scheme_help = "quantization-aware fine-tuning of the weights to this dtype"

    # Two quantizers on one weight are an error.
    exclusive = "quantized"

    def __init__(
        self,
        dtype="int8",
        mode="qat",
        activations=True,
        range_decay=0.99,
        include=None,
        exclude=None,
    ):
        super().__init__(include=include, exclude=exclude)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}. Received: mode={mode!r}")
        if mode == "qat":
            quantizers.check_dtype(dtype)
        self.dtype = dtype
        self.mode = mode
        self.activations = bool(activations)
        self.range_decay = float(range_decay)

    @property
    def kept_by_strip(self):
        """Integer quantizers stay in the stripped graph: the TFLite converter reads them."""
        return self.dtype in quantizers.BITS

    @property
    def quantizes_activations(self):
        return self.activations and self.dtype in quantizers.BITS

    def paths(self, layer, spec):
        return spec.weights

    def build(self, wrapper, path, variable):
        unit = wrapper.unit_of(path)
        return {"axes": self.channel_axes(unit.spec, path) if unit and unit.spec else ()}

    def transform(self, state, value, training):
        return quantizers.fake_quant_weight(value, self.dtype, state["axes"])

    # -- activations: one range per tensor, placed by `keras_condensa.activation_ranges`
    def layer_arguments(self, layer, spec):
        return {"places": ["input", "output"]} if self.quantizes_activations else None

    def build_layer(self, wrapper, arguments):
        if any(p not in PLACES for p in arguments.get("places", ())):
            raise ValueError(
                f"The activation places of '{wrapper.layer.name}' must be among {PLACES}. "
                f"Received: {arguments!r}"
            )
        places = tuple(p for p in PLACES if p in arguments.get("places", ()))

        def variable(name, shape=(2,)):
            return wrapper.add_weight(name=name, shape=shape, initializer="zeros", trainable=False)

        state = {"places": places, "input_range": variable("input_range")}
        state["output_range"] = variable("output_range")
        if "activation" in places:
            state["activation_range"] = variable("activation_range")
        state["initialized"] = variable("ranges_initialized", ())
        return state

    def _fake_quant(self, state, x, name, training, fixed=None):
        if "float" not in str(getattr(x, "dtype", "")):
            return x
        if fixed is not None:
            return quantizers.fake_quant_activation(x, ops.convert_to_tensor(fixed, x.dtype))
        value_range = state[name]
        if training:
            value_range.assign(
                quantizers.track_range(value_range, x, state["initialized"], self.range_decay)
            )
        return quantizers.fake_quant_activation(x, value_range)

    def call_layer(self, state, wrapper, call, inputs, training):
        """Fake-quantizes the layer's input, pre-activation and output within tracked ranges.

        The places are where the TFLite converter puts one range per tensor
        (`"input"`, `"activation"`: a Dense/Conv with a non-ReLU activation
        such as softmax, whose logits get their own range, `"output"`). The
        output of a sigmoid, softmax or tanh gets the fixed range of its int8
        LiteRT kernel.
        """
        places = state["places"]
        layer = wrapper.layer
        if "input" in places:
            inputs = self._fake_quant(state, inputs, "input_range", training)
        if "activation" in places:
            # The linear part and the activation are two ops in the file, each with a range.
            activation = layer.activation
            with prunable.swapped([(layer, "activation", keras.activations.linear)]):
                outputs = call(inputs)
            outputs = activation(self._fake_quant(state, outputs, "activation_range", training))
        else:
            outputs = call(inputs)
        if "output" in places:
            fixed = quantizers.FIXED_RANGES.get(quantizers.output_activation(layer))
            outputs = self._fake_quant(state, outputs, "output_range", training, fixed)
        if places and training:
            state["initialized"].assign(1.0)
        return outputs

    def channel_axes(self, spec, path):
        """Per-channel axes of a weight: convolution filters per output channel.

        Fully connected kernels get one scale per tensor for int4 as for int8:
        the TFLite converter of TensorFlow 2.21 rejects per-channel
        FULLY_CONNECTED weights ("mismatched quantized axes"), and a QAT
        model must convert.
        """
        if self.dtype == "float16":
            return ()
        if path == spec.channel_weight and spec.kind == "filter":
            return spec.channel_axes
        if path.rpartition(".")[2] == "depthwise_kernel":
            return (-2, -1)
        return ()

    def apply(self, model):
        if self.mode == "qat":
            return super().apply(model)
        from keras_condensa import masking, surgery  # noqa: PLC0415 - surgery is above operators

        check_model(model)
        if any(True for _ in masking.iter_wrappers(model)):
            raise ValueError(
                "Post-training quantization applies to a plain model: strip the compressed model "
                f"first, e.g. kc.Quantize({self.dtype!r}, mode='post_training')"
                ".apply(kc.strip(model))."
            )
        copied = surgery.unwrap(model)
        try:
            copied.quantize(self.dtype)
        except (ValueError, NotImplementedError) as error:
            raise ValueError(f"keras.Model.quantize({self.dtype!r}) failed: {error}") from error
        return copied

    def get_config(self):
        config = {
            "dtype": self.dtype,
            "mode": self.mode,
            "activations": self.activations,
            "range_decay": self.range_decay,
        }
        config.update(super().get_config())
        return config
