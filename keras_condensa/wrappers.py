"""`PruneWrapper`: the layer wrapper that owns the masks.

The wrapper keeps one non-trainable 0/1 mask per pruned weight. In the
forward pass the wrapped layer sees `weight * mask`: the wrapper swaps the
attribute that stores the weight for the masked tensor while the inner layer
runs, so any layer (and any backend) works without layer-specific call code,
and gradients reach the stored weight through the product (pruned entries
get exactly zero gradient).
"""

import contextlib

import keras
from keras import ops

from keras_condensa import prunable


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


@keras.saving.register_keras_serializable(package="keras_condensa")
class PruneWrapper(keras.layers.Wrapper):
    """Masks some weights of a layer.

    Usually created by a scheme (`kc.Prune(...).apply(model)`), not by hand.

    Args:
        layer: the layer to wrap.
        masked_weights: attribute paths of the weights to mask, e.g.
            `["kernel"]` or `["kernel", "bias"]`.
        **kwargs: base `Layer` arguments (name, ...).

    Example:

    ```python
    wrapped = kc.PruneWrapper(keras.layers.Dense(10), masked_weights=["kernel"])
    y = wrapped(x)               # uses kernel * mask
    wrapped.masks["kernel"]      # the mask variable
    ```
    """

    def __init__(self, layer, masked_weights=("kernel",), **kwargs):
        kwargs.setdefault("name", f"{layer.name}_pruned")
        super().__init__(layer, **kwargs)
        if isinstance(masked_weights, str) or not masked_weights:
            raise ValueError(
                "masked_weights must be a non-empty list of weight paths, e.g. ['kernel']. "
                f"Received: masked_weights={masked_weights!r}"
            )
        self.masked_weights = tuple(masked_weights)
        self.masks = {}
        self.supports_masking = getattr(layer, "supports_masking", False)

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._create_masks()

    def build_from_config(self, config):
        # The inner layer knows its own build arguments (MultiHeadAttention
        # needs query and value shapes, not one input shape).
        if config and not self.layer.built:
            self.layer.build_from_config(config)
        self._create_masks()

    def get_build_config(self):
        return self.layer.get_build_config()

    def _create_masks(self):
        if self.masks:
            self.built = True
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
        self.built = True

    def weight(self, path):
        """Returns the inner layer's variable at `path`."""
        try:
            variable = prunable.resolve(self.layer, path)
        except AttributeError:
            variable = None
        if not isinstance(variable, keras.Variable):
            raise ValueError(
                f"Layer '{self.layer.name}' ({type(self.layer).__name__}) has no weight "
                f"'{path}' to mask."
            )
        return variable

    def masked_value(self, path):
        """The weight at `path` with its mask applied (a tensor)."""
        return ops.multiply(self.weight(path), self.masks[path])

    def apply_masks(self):
        """Zeroes the stored weights where the masks are 0 (an in-place assign)."""
        for path in self.masked_weights:
            self.weight(path).assign(self.masked_value(path))

    def call(self, inputs, *args, **kwargs):
        swaps = []
        for path in self.masked_weights:
            owner, attr = prunable.storage_of(self.layer, path)
            value = self.masked_value(path)
            compute_dtype = self.layer.compute_dtype
            if value.dtype != compute_dtype and "float" in str(value.dtype):
                value = ops.cast(value, compute_dtype)  # mixed precision autocast
            swaps.append((owner, attr, value))
        with _swapped(swaps):
            return self.layer(inputs, *args, **kwargs)

    def compute_mask(self, inputs, previous_mask=None):
        return self.layer.compute_mask(inputs, previous_mask)

    def get_config(self):
        config = super().get_config()
        config["masked_weights"] = list(self.masked_weights)
        return config
