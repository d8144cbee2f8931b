"""`CompressionWrapper`: the layer wrapper that runs a scheme's operators.

The wrapper holds no method-specific code. For each weight it covers it
keeps the chain of operators that transform it, in scheme order, and their
per-weight state (`Operator.build`). In the forward pass the wrapped layer
sees `opN.transform(... op1.transform(w))`: the wrapper swaps the attribute
that stores the weight for that tensor while the inner layer runs, so any
layer (and any backend) works without layer-specific call code, and
gradients reach the stored weight. Operators' `losses` are added with
`add_loss`, and operators acting on the layer's activations wrap its call
(`Operator.call_layer`).
"""

import functools

import keras
from keras import ops

from keras_condensa import copying, prunable, reach


def _is_float(x):
    return "float" in str(getattr(x, "dtype", ""))


def _operator(item):
    if isinstance(item, dict):
        return keras.saving.deserialize_keras_object(item)
    return item


@keras.saving.register_keras_serializable(package="keras_condensa")
class CompressionWrapper(keras.layers.Wrapper):
    """Runs compression operators on the weights (and activations) of a layer.

    Usually created by a scheme (`kc.Prune(...).apply(model)`), not by hand.

    Args:
        layer: the layer to wrap.
        operators: the scheme's operators (its flat list, `scheme.operators()`);
            a wrapper saved as `.keras` stores them, so the model loads with
            its scheme (`kc.scheme_of(model)`).
        weights: `{path: [operator index, ...]}`: for each weight (attribute
            path in `layer`, e.g. `"kernel"` or `"cell.kernel"`), the indices
            into `operators` of the operators that transform it, in order.
        layer_operators: `{operator index: arguments}` of the operators that
            act on the layer's activations (`Operator.build_layer`).
        **kwargs: base `Layer` arguments (name, ...).

    Example:

    ```python
    op = kc.Prune(0.5)
    wrapped = kc.CompressionWrapper(keras.layers.Dense(10), [op], {"kernel": [0]})
    y = wrapped(x)               # the kernel as op transforms it (masked)
    wrapped.masks["kernel"]      # the mask variable
    ```
    """

    def __init__(self, layer, operators, weights=None, layer_operators=None, **kwargs):
        kwargs.setdefault("name", f"{layer.name}_compressed")
        super().__init__(layer, **kwargs)
        self.operators = [_operator(op) for op in operators]
        self.chains = {p: tuple(int(i) for i in chain) for p, chain in (weights or {}).items()}
        if isinstance(layer_operators, list):  # from a config: JSON keys are strings
            layer_operators = dict(layer_operators)
        self.layer_operators = {int(i): dict(a or {}) for i, a in (layer_operators or {}).items()}
        used = {i for chain in self.chains.values() for i in chain} | set(self.layer_operators)
        if not used:
            raise ValueError(
                f"CompressionWrapper around '{layer.name}' has nothing to do: give weights "
                "({path: [operator index]}) or layer_operators."
            )
        if any(not 0 <= i < len(self.operators) for i in used):
            raise ValueError(
                f"CompressionWrapper around '{layer.name}' refers to operator indices "
                f"{sorted(used)} "
                f"but has {len(self.operators)} operators."
            )
        self.states = {}
        self.layer_states = {}
        self._units = {}
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
        units = reach.units(self.layer)
        for path, chain in self.chains.items():
            variable = self.weight(path)
            self._units[path] = max(
                (u for u in units if not u.prefix or path.startswith(u.prefix + ".")),
                key=lambda u: len(u.prefix),
                default=None,
            )
            for index in chain:
                self.states[(index, path)] = self.operators[index].build(self, path, variable)
        for index, arguments in self.layer_operators.items():
            self.layer_states[index] = self.operators[index].build_layer(self, arguments)
        self.built = True

    # -- what the operators and tools read ------------------------------------
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

    def unit_of(self, path):
        """The `reach.Unit` (layer and `PruneSpec`) that holds the weight at `path`."""
        return self._units.get(path)

    def chain(self, path):
        """`[(operator, state)]` of the weight at `path`, in order."""
        return [(self.operators[i], self.states[(i, path)]) for i in self.chains.get(path, ())]

    @property
    def scheduled(self):
        """Whether an operator of this wrapper updates on a schedule during `fit`."""
        used = {i for chain in self.chains.values() for i in chain}
        return any(self.operators[i].schedule is not None for i in used)

    @property
    def masks(self):
        """`{path: mask}` of the weights some operator masks (the product when several do)."""
        masks = {}
        for path in self.chains:
            found = [state["mask"] for _, state in self.chain(path) if _has_mask(state)]
            if found:
                masks[path] = found[0] if len(found) == 1 else functools.reduce(ops.multiply, found)
        return masks

    @property
    def masked_weights(self):
        """The paths of the weights some operator masks."""
        return tuple(path for path in self.chains if any(_has_mask(s) for _, s in self.chain(path)))

    def masked_value(self, path):
        """The weight at `path` with its masks applied (a tensor).

        Pruned positions are exactly zero whatever the weight holds there
        (`NaN * 0` is `NaN`, so the mask selects rather than multiplies).
        """
        value = ops.convert_to_tensor(self.weight(path))
        for _, state in self.chain(path):
            if _has_mask(state):
                value = ops.where(
                    ops.not_equal(state["mask"], 0), value, ops.zeros((), value.dtype)
                )
        return value

    def pruned_value(self, path):
        """The weight through the operators of its chain that prune (a tensor).

        What `kc.summary` counts: masks, and thresholds such as
        `kc.SoftThresholdPrune`'s, without quantization.
        """
        value = ops.convert_to_tensor(self.weight(path))
        for op, state in self.chain(path):
            if op.prunes:
                value = op.transform(state, value, False)
        return value

    def effective_value(self, path, training=False):
        """The weight as the forward pass uses it: through every operator of its chain."""
        value = ops.convert_to_tensor(self.weight(path))
        for op, state in self.chain(path):
            value = op.transform(state, value, training)
        return value

    def finalized_value(self, path, skip=()):
        """The weight `kc.strip` bakes in: `finalize` of each operator not in `skip` (indices)."""
        value = ops.convert_to_tensor(self.weight(path))
        for index in self.chains.get(path, ()):
            if index not in skip:
                value = self.operators[index].finalize(self.states[(index, path)], value)
        return value

    def apply_masks(self):
        """Zeroes the stored weights where the masks are 0 (an in-place assign)."""
        for path in self.masked_weights:
            self.weight(path).assign(self.masked_value(path))

    def copy_states_from(self, other, indices):
        """Copies the state variables of operators `indices` from `other`.

        `other` is a wrapper of the same layer.
        """
        for key, state in self.states.items():
            if key[0] in indices:
                _copy_state(state, other.states[key])
        for index, state in self.layer_states.items():
            if index in indices:
                _copy_state(state, other.layer_states[index])

    # -- forward pass ----------------------------------------------------------
    def call(self, inputs, *args, training=None, **kwargs):
        swaps, losses = [], []
        for path in self.chains:
            owner, attr = prunable.storage_of(self.layer, path)
            value = ops.convert_to_tensor(self.weight(path))
            for op, state in self.chain(path):
                losses.extend(op.losses(state, value))
                value = op.transform(state, value, training)
            compute_dtype = self.layer.compute_dtype
            if value.dtype != compute_dtype and _is_float(value):
                value = ops.cast(value, compute_dtype)  # mixed precision autocast
            swaps.append((owner, attr, value))
        for loss in losses:
            self.add_loss(loss)

        def run(x):
            with prunable.swapped(swaps):
                return self.layer(x, *args, **kwargs)

        for index in sorted(self.layer_operators, reverse=True):
            run = functools.partial(
                self.operators[index].call_layer,
                self.layer_states[index],
                self,
                run,
                training=training,
            )
        return run(inputs)

    def compute_output_spec(self, *args, **kwargs):
        # Operators keep shapes and dtypes: the inner layer knows its output.
        # (Tracing `call` instead would also trip over the sparse flag Keras gives `x * 0.5`.)
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, inputs, previous_mask=None):
        return self.layer.compute_mask(inputs, previous_mask)

    def get_config(self):
        config = super().get_config()
        config.update(
            operators=[keras.saving.serialize_keras_object(op) for op in self.operators],
            weights={p: list(chain) for p, chain in self.chains.items()},
            layer_operators=[[i, a] for i, a in self.layer_operators.items()],
        )
        return config


def _has_mask(state):
    return isinstance(state, dict) and "mask" in state


def _copy_state(state, source):
    for key, value in (state or {}).items():
        if hasattr(value, "assign"):
            value.assign(ops.convert_to_numpy(source[key]))
