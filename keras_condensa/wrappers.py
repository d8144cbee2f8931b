"""`CompressionWrapper`: the layer wrapper that owns masks and quantizers.

The wrapper keeps one non-trainable 0/1 mask per pruned weight and, for
quantization, fake-quantizes weights (and, for integer dtypes, the layer's
input and output activations within tracked ranges). In the forward pass
the wrapped layer sees `quantize(weight * mask)`: the wrapper swaps the
attribute that stores the weight for that tensor while the inner layer runs,
so any layer (and any backend) works without layer-specific call code, and
gradients reach the stored weight (pruned entries get exactly zero gradient,
quantization passes gradients straight through).
"""

import contextlib

import keras
from keras import ops

from keras_condensa import copying, prunable, quantizers

ACTIVATION_PLACES = ("input", "activation", "output")
# Activations whose int8 LiteRT kernels have a fixed output range: [min, max] of
# the fake-quant that gives the kernel's scale (1/256 or 1/128) and zero point.
FIXED_RANGES = {"sigmoid": (0.0, 255.0 / 256.0), "softmax": (0.0, 255.0 / 256.0),
                "tanh": (-1.0, 127.0 / 128.0)}


@contextlib.contextmanager
def _swapped(swaps):
    """Temporarily replaces `owner.attr` by `value` for each (owner, attr, value)."""
    saved = [(owner, attr, vars(owner)[attr]) for owner, attr, _ in swaps]
    try:
        for owner, attr, value in swaps:
            object.__setattr__(owner, attr, value)
        yield
    finally:
        for owner, attr, value in saved:
            object.__setattr__(owner, attr, value)


def output_activation(layer):
    """The name of the activation that makes a layer's output (`"linear"` if none)."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    return getattr(activation, "__name__", type(activation).__name__)


def _is_float(x):
    return "float" in str(getattr(x, "dtype", ""))


@keras.saving.register_keras_serializable(package="keras_condensa")
class CompressionWrapper(keras.layers.Wrapper):
    """Masks and/or fake-quantizes some weights of a layer.

    Usually created by a scheme (`kc.Prune(...).apply(model)`), not by hand.

    Args:
        layer: the layer to wrap.
        masked_weights: attribute paths of the weights to mask, e.g.
            `["kernel"]` or `["kernel", "bias"]`.
        quantize: `None`, `"float16"`, `"int8"` or `"int4"`.
        quantized_weights: `{path: channel axes}` of the weights to
            fake-quantize; `[]` axes means one scale per tensor.
        quantize_activations: for integer dtypes, also fake-quantize the
            layer's activations (8 bits) within ranges tracked by a moving
            average during training and frozen at inference.
        activation_ranges: where those ranges go, a subset of
            `("input", "activation", "output")`: the layer's float input, its
            pre-activation value (a Dense/Conv with a non-ReLU activation such
            as softmax), its output. `None` means input and output. Schemes
            choose them so each tensor of the model has one range, where the
            TFLite converter puts it (`keras_condensa.activation_ranges`).
            The output of a sigmoid, softmax or tanh gets the fixed range
            of its int8 LiteRT kernel.
        range_decay: weight of the old range in that moving average.
        scheduled: whether a pruning schedule is to set the masks during
            `fit` (with `kc.callbacks(scheme)`); `kc.strip` and `kc.summary`
            warn when such masks were never set.
        **kwargs: base `Layer` arguments (name, ...).

    Example:

    ```python
    wrapped = kc.CompressionWrapper(keras.layers.Dense(10), masked_weights=["kernel"])
    y = wrapped(x)               # uses kernel * mask
    wrapped.masks["kernel"]      # the mask variable
    ```
    """

    def __init__(
        self,
        layer,
        masked_weights=(),
        quantize=None,
        quantized_weights=None,
        quantize_activations=False,
        range_decay=0.99,
        activation_ranges=None,
        scheduled=False,
        **kwargs,
    ):
        kwargs.setdefault("name", f"{layer.name}_compressed")
        super().__init__(layer, **kwargs)
        if isinstance(masked_weights, str):
            raise ValueError(
                "masked_weights must be a list of weight paths, e.g. ['kernel']. "
                f"Received: masked_weights={masked_weights!r}"
            )
        if quantize is not None:
            quantizers.check_dtype(quantize)
        self.masked_weights = tuple(masked_weights)
        self.quantize = quantize
        self.quantized_weights = {p: tuple(a) for p, a in (quantized_weights or {}).items()}
        self.quantize_activations = bool(quantize_activations) and quantize in quantizers.BITS
        self.range_decay = float(range_decay)
        self.scheduled = bool(scheduled)
        places = ("input", "output") if activation_ranges is None else activation_ranges
        if isinstance(places, str) or any(p not in ACTIVATION_PLACES for p in places):
            raise ValueError(
                f"activation_ranges of the wrapper around '{layer.name}' must be a list of "
                f"{ACTIVATION_PLACES}. Received: activation_ranges={activation_ranges!r}"
            )
        self.activation_ranges = tuple(p for p in ACTIVATION_PLACES if p in places)
        if not self.masked_weights and not self.quantized_weights and not self.quantize_activations:
            raise ValueError(
                f"CompressionWrapper around '{layer.name}' has nothing to do: give masked_weights "
                "or quantize with quantized_weights."
            )
        self.masks = {}
        self.supports_masking = getattr(layer, "supports_masking", False)

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._create_state()

    def build_from_config(self, config):
        # The inner layer knows its own build arguments (MultiHeadAttention
        # needs query and value shapes, not one input shape).
        if config:
            copying.build_from_config(self.layer, config)
        self._create_state()

    def get_build_config(self):
        return self.layer.get_build_config()

    def _create_state(self):
        if self.built:
            return
        for path in self.masked_weights:
            variable = self.weight(path)
            self.masks[path] = self.add_weight(
                name=path.replace(".", "_") + "_mask",
                shape=variable.shape,
                dtype=variable.dtype,
                initializer="ones",
                trainable=False,
            )
        if self.quantize_activations:
            self.input_range = self.add_weight(name="input_range", shape=(2,), initializer="zeros", trainable=False)
            self.output_range = self.add_weight(name="output_range", shape=(2,), initializer="zeros", trainable=False)
            if "activation" in self.activation_ranges:
                self.activation_range = self.add_weight(
                    name="activation_range", shape=(2,), initializer="zeros", trainable=False
                )
            self.ranges_initialized = self.add_weight(
                name="ranges_initialized", shape=(), initializer="zeros", trainable=False
            )
        self.built = True

    def weight(self, path):
        """Returns the inner layer's variable at `path`."""
        try:
            variable = prunable.resolve(self.layer, path)
        except AttributeError:
            variable = None
        if not isinstance(variable, keras.Variable):
            raise ValueError(
                f"Layer '{self.layer.name}' ({type(self.layer).__name__}) has no weight '{path}'."
            )
        return variable

    def masked_value(self, path):
        """The weight at `path` with its mask applied (a tensor).

        Pruned positions are exactly zero whatever the weight holds there
        (`NaN * 0` is `NaN`, so the mask selects rather than multiplies).
        """
        value = self.weight(path)
        if path in self.masks:
            kept = ops.not_equal(self.masks[path], 0)
            value = ops.where(kept, ops.convert_to_tensor(value), ops.zeros((), value.dtype))
        return value

    def effective_value(self, path):
        """The weight as the forward pass uses it: masked, then fake-quantized."""
        value = self.masked_value(path)
        if path in self.quantized_weights:
            value = quantizers.fake_quant_weight(value, self.quantize, self.quantized_weights[path])
        return value

    def apply_masks(self):
        """Zeroes the stored weights where the masks are 0 (an in-place assign)."""
        for path in self.masked_weights:
            self.weight(path).assign(self.masked_value(path))

    def copy_ranges_from(self, other):
        """Copies the activation ranges `other` (a wrapper of the same layer) tracked."""
        names = ["input_range", "output_range", "ranges_initialized"]
        if "activation" in self.activation_ranges:
            names.append("activation_range")
        for name in names:
            getattr(self, name).assign(ops.convert_to_numpy(getattr(other, name)))

    def _activation(self, x, value_range, training, fixed=None):
        if not _is_float(x):
            return x
        if fixed is not None:
            return quantizers.fake_quant_activation(x, ops.convert_to_tensor(fixed, x.dtype))
        if training:
            value_range.assign(quantizers.track_range(value_range, x, self.ranges_initialized, self.range_decay))
        return quantizers.fake_quant_activation(x, value_range)

    def call(self, inputs, *args, training=None, **kwargs):
        swaps = []
        for path in dict.fromkeys(self.masked_weights + tuple(self.quantized_weights)):
            owner, attr = prunable.storage_of(self.layer, path)
            value = self.effective_value(path)
            compute_dtype = self.layer.compute_dtype
            if value.dtype != compute_dtype and _is_float(value):
                value = ops.cast(value, compute_dtype)  # mixed precision autocast
            swaps.append((owner, attr, value))
        places = self.activation_ranges if self.quantize_activations else ()
        if "input" in places:
            inputs = self._activation(inputs, self.input_range, training)
        activation = None
        if "activation" in places:
            # The linear part and the activation are two ops in the file, each with a range.
            activation = self.layer.activation
            swaps.append((self.layer, "activation", keras.activations.linear))
        with _swapped(swaps):
            outputs = self.layer(inputs, *args, **kwargs)
        if activation is not None:
            outputs = activation(self._activation(outputs, self.activation_range, training))
        if "output" in places:
            fixed = FIXED_RANGES.get(output_activation(self.layer))
            outputs = self._activation(outputs, self.output_range, training, fixed)
        if places and training:
            self.ranges_initialized.assign(1.0)
        return outputs

    def compute_output_spec(self, *args, **kwargs):
        # Masks and fake quantization keep shapes and dtypes: the inner layer knows its output.
        # (Tracing `call` instead would also trip over the sparse flag Keras gives `x * 0.5`.)
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, inputs, previous_mask=None):
        return self.layer.compute_mask(inputs, previous_mask)

    def get_config(self):
        config = super().get_config()
        config.update(
            masked_weights=list(self.masked_weights),
            quantize=self.quantize,
            quantized_weights={p: list(a) for p, a in self.quantized_weights.items()},
            quantize_activations=self.quantize_activations,
            range_decay=self.range_decay,
            scheduled=self.scheduled,
            activation_ranges=list(self.activation_ranges),
        )
        return config
