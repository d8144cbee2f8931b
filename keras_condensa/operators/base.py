"""`Operator`: the operator protocol (v2), its coverage rules and `PruningOperator`.

An operator selects layers (`include=` / `exclude=`, by name or class), says
which weights of a selected layer it covers, and computes the weight the
forward pass uses. A scheme is an operator or a `Compose` of operators;
`scheme.apply(model)` returns a new model whose covered layers are wrapped
(see `keras_condensa.surgery` and `keras_condensa.wrappers`).
"""

import importlib
import numbers

import keras
import numpy as np

from keras_condensa import prunable


def _as_selector(name, value):
    if value is None:
        return ()
    if isinstance(value, (str, type)):
        value = [value]
    items = tuple(value)
    for item in items:
        if not isinstance(item, (str, type)):
            raise TypeError(
                f"{name} takes layer names (str) or layer classes. Received: {name}={value!r}"
            )
    return items


def _matches(layer, selectors):
    """Whether a selector names `layer` or its class.

    A layer is named by its name, or its Keras path for a nested layer.
    """
    names = (layer.name, getattr(layer, "path", None))
    return any(s in names if isinstance(s, str) else isinstance(layer, s) for s in selectors)


def is_real(value):
    """Whether `value` is a real number: Python's or NumPy's (`np.float32(0.5)`), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_density(density, name="density"):
    """Raises unless `density` is a real number (Python or NumPy) in (0, 1]."""
    if not is_real(density) or not 0 < density <= 1:
        raise ValueError(
            f"{name} is the fraction of weights to keep and must be in (0, 1]. "
            f"Received: {name}={density!r}"
        )


class Operator:
    """Base class of compression operators (operator protocol v2).

    An operator is a small serializable object. It selects layers
    (`include=` / `exclude=`), names the weights it covers in a selected
    layer (`paths`), and may:

    - create per-weight state in the layer's wrapper (`build`, variables made
      with `wrapper.add_weight`);
    - compute the weight the forward pass uses (`transform`, `keras.ops` only,
      so it runs on every backend; the wrapper folds a weight's operators in
      scheme order: `w -> op1.transform -> op2.transform`);
    - add terms to the training loss (`losses`);
    - update its state on the host between steps (`update`): at `apply` time
      when it has no `schedule`, and during `fit` (with
      `kc.callbacks(scheme)`) on the steps its `schedule` is due;
    - say what `kc.strip` bakes in (`finalize`);
    - act on the wrapped layer's inputs and outputs (`build_layer` and
      `call_layer`, optional: activation quantization).

    State is a dict. A `"mask"` entry (a 0/1 variable shaped like the weight)
    is a mask: `update` zeroes the stored weight and its optimizer momentum
    where it is 0, and `kc.summary`, `kc.strip` and `kc.shrink` read it.

    Subclasses register themselves for saving with
    `@keras.saving.register_keras_serializable()`, so that a wrapped model
    saved as `.keras` loads with its scheme (see `docs/operators.md`).

    Args:
        include: layer names or classes to cover; `None` covers every layer
            the operator supports. Naming a layer the operator cannot handle
            is an error.
        exclude: layer names or classes to leave untouched.
    """

    # Whether the operator zeroes weights (`kc.Compose` runs these before the others).
    prunes = False
    # A `kc.PruningSchedule` (or any object with `resolve`, `should_prune`, `sparsity`):
    # the steps of `fit` on which `update` runs; `None`: once, at `apply` time.
    schedule = None
    # Whether `kc.strip(model)` keeps the operator in the graph (integer QAT
    # quantizers, which the TFLite converter reads) instead of baking it in.
    kept_by_strip = False
    # A word (`"quantized"`) when the operator may transform a weight only once.
    exclusive = None

    def __init__(self, include=None, exclude=None):
        self.include = _as_selector("include", include)
        self.exclude = _as_selector("exclude", exclude)

    # -- coverage ---------------------------------------------------------
    def selects(self, layer):
        """Whether include/exclude select this layer (support aside)."""
        if _matches(layer, self.exclude):
            return False
        return not self.include or _matches(layer, self.include)

    def names_explicitly(self, layer):
        """Whether `include=` names this layer (by name or class)."""
        return _matches(layer, self.include)

    def reason_unsupported(self, layer, spec):
        """Why this operator cannot handle `layer`, or `None` if it can."""
        if spec is None:
            return prunable.unsupported_reason(layer)
        return None

    def paths(self, layer, spec):
        """The attribute paths of the weights this operator transforms in `layer`.

        Args:
            layer: a layer the operator selects and supports.
            spec: its `kc.PruneSpec` (paths relative to the wrapped layer).

        Returns:
            A tuple of paths, e.g. `("kernel",)`.
        """
        raise NotImplementedError

    def layer_arguments(self, layer, spec):
        """Arguments of `build_layer` when the operator acts on `layer`'s activations.

        Returns `None` when it does not.
        """
        return None

    # -- per-weight protocol ----------------------------------------------
    def build(self, wrapper, path, variable):
        """Creates the operator's state for one weight (optional).

        Args:
            wrapper: the `kc.CompressionWrapper`; make variables with
                `wrapper.add_weight(...)`, and find the weight's layer and
                spec with `wrapper.unit_of(path)`.
            path: the weight's attribute path in the wrapped layer.
            variable: the weight.

        Returns:
            A dict (variables and plain values), or `None`.
        """
        return None

    def transform(self, state, value, training):
        """The weight the forward pass uses, from the value before this operator.

        Args:
            state: what `build` returned for this weight.
            value: the weight after the operators before this one (a tensor).
            training: whether the call is a training call.

        Returns:
            A tensor of the same shape (`keras.ops` only).
        """
        return value

    def losses(self, state, value):
        """Terms added to the training loss for one weight (optional).

        Args:
            state: what `build` returned for this weight.
            value: the weight after the operators before this one.

        Returns:
            A list of scalar tensors.
        """
        return []

    # Optional: `def update(self, items, context)`, host-side work between training
    # steps (masks). `items` are the weights the operator covers in the model, a
    # list of `kc.operators.Item` (wrapper, spec, paths, values, states):
    # `values[path]` is the weight as the operators before this one leave it (a
    # NumPy array), `states[path]` the state `build` made. `context` is a
    # `kc.operators.UpdateContext`: `step` (the schedule's step, `None` at `apply`
    # time), `schedule` (the operator's schedule resolved for this fit, or `None`),
    # `graph` (the model's channel dependency graph, built when first read) and
    # `model`. `None`: the operator keeps no host-side state.
    update = None

    # Optional: `def training_optimizer(self, model, base_optimizer, total_steps)`, the
    # optimizer the wrapped model must train with (a new `keras.optimizers.Optimizer`,
    # settings copied from `base_optimizer`); `kc.HSPGPrune` has one. The fine-tune
    # workflow (command line, search, demo) compiles with it. `None`: any optimizer.
    training_optimizer = None

    def ran(self, state):
        """Whether a scheduled `update` has run on this weight though its mask keeps all.

        `kc.summary` and `kc.strip` warn about a scheduled operator whose masks
        are all ones (its schedule never ran) unless this says it did.
        """
        return False

    def finalize(self, state, value):
        """What `kc.strip` bakes into the weight (default: `transform` at inference)."""
        return self.transform(state, value, training=False)

    # -- per-layer protocol (optional) ------------------------------------
    def build_layer(self, wrapper, arguments):
        """Creates per-layer state from `layer_arguments`'s result (optional)."""
        return None

    def call_layer(self, state, wrapper, call, inputs, training):
        """Runs `call(inputs)`, around which it may act.

        `call` is the wrapped layer with transformed weights.
        """
        return call(inputs)

    # -- scheme protocol --------------------------------------------------
    def operators(self):
        """The flat list of operators of this scheme."""
        return [self]

    def apply(self, model):
        """Returns a new model with the covered layers wrapped.

        Operators without a schedule update now (masks computed one-shot,
        like Condensa); scheduled ones update during `fit` through
        `kc.callbacks(scheme)`. The input model is not modified.

        Args:
            model: a built Keras 3 model (Sequential, functional or subclassed).

        Returns:
            A new `keras.Model`.
        """
        from keras_condensa import surgery  # noqa: PLC0415 - surgery is above operators

        return surgery.apply_scheme(self, model)

    def __repr__(self):
        args = ", ".join(f"{k}={_decode(v)!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def get_config(self):
        """The constructor arguments (plain values; layer classes as `{"layer_class": ...}`)."""
        return {
            "include": [_encode_selector(s) for s in self.include] or None,
            "exclude": [_encode_selector(s) for s in self.exclude] or None,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuilds the operator from `get_config()` (nested Keras objects deserialized)."""
        return cls(**{k: _decode(v) for k, v in config.items()})


def _encode_selector(selector):
    if isinstance(selector, str):
        return selector
    return {"layer_class": f"{selector.__module__}:{selector.__qualname__}"}


def _decode(value):
    """Undoes `keras.saving.serialize_keras_object` and `_encode_selector` in a config value."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"layer_class"}:
            module, _, name = value["layer_class"].partition(":")
            obj = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
            return obj
        if "class_name" in value and "config" in value:
            return keras.saving.deserialize_keras_object(value)
    return value
