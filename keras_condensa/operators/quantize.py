"""`Quantize`: float16, int8 and int4 weights (Condensa's `Quantize`), trained or post-training."""

from keras_condensa import quantizers
from keras_condensa.operators.base import Operator

MODES = ("qat", "post_training")


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
        include: layer names or classes to cover (default: all supported).
        exclude: layer names or classes to leave in float.

    Example:

    ```python
    scheme = kc.Compose([kc.Prune(0.1), kc.Quantize("int8")])
    qat = scheme.apply(model)
    qat.fit(x, y, epochs=3, callbacks=kc.callbacks(scheme))
    ```
    """

    prunes = False
    schedule = None

    def __init__(self, dtype="int8", mode="qat", activations=True, include=None, exclude=None):
        super().__init__(include=include, exclude=exclude)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}. Received: mode={mode!r}")
        if mode == "qat":
            quantizers.check_dtype(dtype)
        self.dtype = dtype
        self.mode = mode
        self.activations = bool(activations)

    def paths(self, layer, spec):
        return spec.weights

    def wrapper_arguments(self, layer, spec):
        return {
            "quantize": self.dtype,
            "quantized_weights": {p: self.channel_axes(spec, p) for p in spec.weights},
            "quantize_activations": self.activations and self.dtype in quantizers.BITS,
        }

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
        from keras_condensa import masking, surgery

        surgery.check_model(model)
        if any(True for _ in masking.iter_wrappers(model)):
            raise ValueError(
                "Post-training quantization applies to a plain model: strip the compressed model "
                f"first, e.g. kc.Quantize({self.dtype!r}, mode='post_training').apply(kc.strip(model))."
            )
        copied = surgery.strip(model)
        try:
            copied.quantize(self.dtype)
        except (ValueError, NotImplementedError) as error:
            raise ValueError(f"keras.Model.quantize({self.dtype!r}) failed: {error}") from error
        return copied

    def get_config(self):
        config = {"dtype": self.dtype, "mode": self.mode, "activations": self.activations}
        config.update(super().get_config())
        return config
