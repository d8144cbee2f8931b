"""Mixed precision: one weight bit-width per layer, as hyperparameters of a search.

`mixed_precision_scheme(model)` returns the `scheme` callable of
`kc.search.CompressionTuner`: it declares one ordered `hp.Choice` per layer
that `kc.Quantize` covers, valued in bits (4: int4, 8: int8, 32: left float),
and returns the `kc.Quantize` operators (quantization-aware training) that
give each layer its bit-width. With the tuner's `quantize="int8"` every trial
is exported to one LiteRT file whose layers hold their own types: packed
int4, int8, float32.

What a choice means in that file (measured with TensorFlow 2.21's converter):

- `"int4"`, `"int8"`: the layer's weights are stored in that type and its
  activations in int8, from the ranges learned during fine-tuning.
- `"skip"`: no quantization-aware training for the layer. The file keeps it
  float32 where its input or its output stays float: next to the model's
  input or output, or next to another layer left float. Between two
  quantized tensors the converter quantizes it to int8 anyway (from its float
  weights, no training), so such a `"skip"` is resolved to `"int8"` and
  trained for it: the accuracy the search measures in Keras is the file's.
  The file must also be converted from the model's own ranges, without
  calibration data (calibration quantizes every float layer).
- `"float16"` is not a choice: float16 weights are a whole-file mode of the
  converter (`tflite_export.export(quantize="float16")`), which a file with
  integer layers cannot use.
"""

import keras
import keras_tuner

from keras_condensa import copying, graph_walk, masking, prunable, reach
from keras_condensa.operators.compose import Compose
from keras_condensa.operators.quantize import Quantize

# The bits a layer's weights get in the LiteRT file, per choice.
BITS = {"int4": 4, "int8": 8, "skip": 32}
# What each resolved bit-width is called in `MixedPrecisionScheme.resolve`.
DTYPES = {4: "int4", 8: "int8", 32: "float32"}
PREFIX = "bits/"
DEFAULT_CHOICES = ("int4", "int8", "skip")

# Layers whose output is their input's values moved (no range of their own in the file).
_MOVERS = (
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.Flatten,
    keras.layers.Reshape,
)


def _check_choices(choices):
    if isinstance(choices, str):
        choices = (choices,)
    choices = tuple(dict.fromkeys(choices))
    for choice in choices:
        if choice == "float16":
            raise ValueError(
                "choices cannot hold 'float16': float16 weights are a whole-file mode of the "
                "TFLite converter (tflite_export.export(quantize='float16')), which a file with "
                "int8 or int4 layers cannot use. Per layer, choose among "
                f"{tuple(BITS)} ('skip' keeps a layer float32). Received: choices={choices!r}"
            )
        if choice not in BITS:
            raise ValueError(
                f"Unknown choice {choice!r}: each layer chooses among {tuple(BITS)}. "
                f"Received: choices={choices!r}"
            )
    if len(choices) < 2:
        raise ValueError(
            "A mixed-precision search needs at least two choices per layer, e.g. "
            "choices=('int4', 'int8'); for one bit-width everywhere use "
            f"kc.Quantize(dtype). Received: choices={choices!r}"
        )
    return choices


def _quantizable(model, probe):
    """`{name: unit}` of the layers `probe` (a `kc.Quantize`) would quantize, in model order."""
    found = {}
    for container in masking.containers(model):
        for unit in reach.units(container):
            if unit.spec is None or not probe.selects(unit.layer):
                continue
            if probe.reason_unsupported(unit.layer, unit.spec) is not None:
                continue
            paths = probe.paths(unit.layer, unit.spec)
            if unit.nested and not _swappable(container, paths):
                continue
            if unit.name in found:
                raise ValueError(
                    f"Two quantizable layers of model '{model.name}' are named '{unit.name}': "
                    "each layer's bit-width is a hyperparameter named after it. Give the layers "
                    "distinct names."
                )
            found[unit.name] = unit
    return found


def _check_names(model, quantizable, **selectors):
    """Raises when `include=`/`exclude=` name a layer the model does not have."""
    known = set(quantizable)
    for container in masking.containers(model):
        known.update((container.name, *(u.name for u in reach.units(container))))
        known.update(u.layer.name for u in reach.units(container))
    for argument, value in selectors.items():
        names = [s for s in value if isinstance(s, str)]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(
                f"{argument}= names layers that are not in model '{model.name}': {unknown}. "
                f"Its quantizable layers are: {list(quantizable)}"
            )


def _swappable(container, paths):
    """Whether the wrapper of `container` can swap these nested weights (see `surgery`)."""
    try:
        for path in paths:
            prunable.storage_of(container, path)
    except (AttributeError, ValueError):
        return False
    return True


class MixedPrecisionScheme:
    """The `scheme` of a mixed-precision search: one bit-width per quantizable layer.

    Made by `mixed_precision_scheme`. Calling it with a
    `keras_tuner.HyperParameters` declares `hp.Choice("bits/<layer>",
    [4, 8, 32], ordered=True)` per layer (the bits of the choices given) and
    returns the scheme for the trial's values (`build`).

    Attributes:
        layers: the names of the layers searched, in model order.
        choices: the choices each layer has (`"int4"`, `"int8"`, `"skip"`).
    """

    def __init__(self, model, choices, include, exclude):
        if not isinstance(model, keras.Model):
            raise TypeError(f"Expected a keras.Model. Received: {type(model).__name__}")
        self.choices = _check_choices(choices)
        self.include, self.exclude = include, exclude
        if graph_walk.is_graph_model(model):
            # The structure is read from a weightless copy: a Sequential loaded from a file
            # keeps the nodes of its partial rebuilds, where each layer looks called more
            # than once; the copy's layers are called once, as the model's truly are.
            model = copying.clone(
                model,
                lambda op: copying.copy_layer(op) if isinstance(op, keras.layers.Layer) else op,
            )
        probe = Quantize("int8", include=include, exclude=exclude)  # checks their types
        self._everything = _quantizable(model, Quantize("int8"))
        _check_names(model, self._everything, include=probe.include, exclude=probe.exclude)
        units = _quantizable(model, probe)
        self._exclude = probe.exclude
        if not units:
            raise ValueError(
                f"Model '{model.name}' has no layer that kc.Quantize covers "
                f"(include={include!r}, exclude={exclude!r}): a mixed-precision search needs "
                "Dense, EinsumDense, Conv, DepthwiseConv, Embedding or other layers with "
                "weights kc.Quantize supports."
            )
        self.layers = tuple(units)
        self._units = units
        self._graph = graph_walk.is_graph_model(model)
        self._inputs, self._outputs = set(), set()
        if self._graph:  # The model's own inputs and outputs are float in the file.
            self._inputs = {
                id(t._keras_history.operation) for t in keras.tree.flatten(model.inputs)
            }
            self._outputs = {id(t) for t in keras.tree.flatten(model.outputs)}
        bits = sorted(BITS[c] for c in self.choices)
        self._bits = bits
        self._default = 8 if 8 in bits else min(bits)

    def hyperparameter(self, layer):
        """The name of a layer's hyperparameter, `"bits/<layer>"`."""
        return f"{PREFIX}{layer}"

    def __call__(self, hp):
        """Declares one choice per layer in `hp` and returns the scheme of its values.

        Args:
            hp: a `keras_tuner.HyperParameters`.

        Returns:
            A `kc.Quantize` or a `kc.Compose` of them (see `build`).
        """
        values = {
            name: hp.Choice(
                self.hyperparameter(name), self._bits, default=self._default, ordered=True
            )
            for name in self.layers
        }
        return self.build(values)

    def _values(self, values):
        if isinstance(values, keras_tuner.HyperParameters):
            values = values.values
        if not isinstance(values, dict):
            raise TypeError(
                "values must be a dict {'bits/<layer>': bits} (a trial's hyperparameters.values) "
                f"or a keras_tuner.HyperParameters. Received: {type(values).__name__}"
            )
        bits = {}
        for name in self.layers:
            value = values.get(self.hyperparameter(name), values.get(name))
            if value is None:
                raise ValueError(
                    f"No bit-width for layer '{name}': give {self.hyperparameter(name)!r} "
                    f"(or {name!r}) one of {self._bits}. Received: {dict(values)!r}"
                )
            value = BITS.get(value, value)
            if value not in self._bits:
                raise ValueError(
                    f"The bit-width of layer '{name}' must be one of {self._bits} (choices "
                    f"{self.choices}). Received: {value!r}"
                )
            bits[name] = int(value)
        return bits

    def resolve(self, values):
        """What each layer is in the exported file for these values.

        A `"skip"` (32 bits) between two quantized tensors becomes `"int8"`:
        the LiteRT converter quantizes such a layer anyway (see the module).

        Args:
            values: `{"bits/<layer>": bits}` (a trial's `hyperparameters.values`
                or a `keras_tuner.HyperParameters`), or `{layer: bits or
                choice}`; other entries are ignored.

        Returns:
            `{layer: "int4" | "int8" | "float32"}` in model order.

        Raises:
            ValueError: a layer has no value, or a value outside the choices.
        """
        dtypes = {name: DTYPES[bits] for name, bits in self._values(values).items()}
        changed = self._graph
        while changed:  # Quantizing a layer can only close more sandwiches: a fixed point.
            changed = False
            integer = {
                id(self._units[n].layer)
                for n, d in dtypes.items()
                if d != "float32" and not self._units[n].nested
            }
            for name, dtype in dtypes.items():
                unit = self._units[name]
                if dtype != "float32" or unit.nested or not graph_walk.single_call(unit.layer):
                    continue
                if not (
                    self._float_side(unit.layer, True, integer)
                    or self._float_side(unit.layer, False, integer)
                ):
                    dtypes[name] = "int8"
                    changed = True
        return dtypes

    def _float_side(self, layer, inputs, integer):
        """Whether every path from `layer` to the inputs (or outputs) ends on a float tensor.

        Paths go through layers that only move values; they end at a model
        input or output (float), at a layer with weights left float, or at
        anything else (a quantized layer, a layer that may get a range:
        assumed quantized).
        """
        ends, stack, seen = [], [layer], set()
        while stack:
            current = stack.pop()
            if not inputs and any(
                id(t) in self._outputs for t in graph_walk.output_tensors(current)
            ):
                ends.append(True)
            following = graph_walk.producers(current) if inputs else graph_walk.consumers(current)
            for op in following:
                if id(op) in seen:
                    continue
                seen.add(id(op))
                if isinstance(op, keras.layers.InputLayer):
                    ends.append(id(op) in self._inputs)  # a nested model's input may be ranged
                elif isinstance(op, _MOVERS) and graph_walk.single_call(op):
                    stack.append(op)
                else:
                    ends.append(self._is_float_layer(op, integer))
        return bool(ends) and all(ends)

    def _is_float_layer(self, op, integer):
        """Whether `op` computes in float32 whatever its neighbours: weights left float."""
        if not isinstance(op, keras.layers.Layer) or isinstance(op, keras.Model):
            return False
        if not op.weights or isinstance(op, keras.layers.BatchNormalization):
            return False  # a layer without weights (Add, pooling, ReLU) may get a range
        return id(op) not in integer

    def build(self, values):
        """The scheme for these values: `kc.Quantize` operators, one per bit-width.

        All layers at one integer bit-width: `kc.Quantize(dtype, include=,
        exclude=)`, the uniform scheme itself. Otherwise a `kc.Compose` of
        `kc.Quantize("int4", include=[the int4 layers])` (if any) and
        `kc.Quantize("int8", exclude=[every other quantizable layer])` (alone
        when no layer is int4): the int8 operator also gives the layers
        without weights (Add, pooling, activations) their int8 activation
        ranges, as the uniform scheme does.

        Args:
            values: as in `resolve`.

        Returns:
            A `kc.Quantize` or `kc.Compose`.

        Raises:
            ValueError: every layer is left float (nothing to quantize), or
                bad values (see `resolve`).
        """
        dtypes = self.resolve(values)
        groups = {d: [n for n in dtypes if dtypes[n] == d] for d in ("int4", "int8", "float32")}
        if not groups["int4"] and not groups["int8"]:
            raise ValueError(
                f"Every layer is left float ({self.layers}): there is nothing to quantize. "
                "The dense model is this choice's file (tflite_export.export(model, path))."
            )
        unsearched = [n for n in self._everything if n not in self._units]
        for dtype in ("int4", "int8"):
            if len(groups[dtype]) == len(dtypes) and not unsearched:
                return Quantize(dtype, include=self.include, exclude=self.exclude)
        ops = [Quantize("int4", include=groups["int4"])] if groups["int4"] else []
        rest = [n for n in self._everything if n not in groups["int8"] and n not in self._exclude]
        ops.append(Quantize("int8", exclude=[*self._exclude, *rest]))
        return Compose(ops) if len(ops) > 1 else ops[0]

    def __repr__(self):
        return (
            f"mixed_precision_scheme(layers={list(self.layers)}, choices={self.choices}, "
            f"include={self.include!r}, exclude={self.exclude!r})"
        )


def mixed_precision_scheme(model, choices=DEFAULT_CHOICES, include=None, exclude=None):
    """A search scheme that picks each layer's weight bit-width: int4, int8 or left float.

    Returns the `scheme` callable of `kc.search.CompressionTuner`: one
    hyperparameter `"bits/<layer>"` per layer `kc.Quantize(include=,
    exclude=)` covers (Dense, EinsumDense, Conv, DepthwiseConv, Embedding, and
    layers nested in custom layers), an ordered `hp.Choice` of bits (4, 8, 32)
    so that the Bayesian oracle knows that more bits cost more and keep more
    accuracy. Each trial quantization-aware fine-tunes with one `kc.Quantize`
    per bit-width. Export the trials with the tuner's `quantize="int8"`: the
    LiteRT file then stores each layer at its bit-width (packed int4, int8),
    from the ranges learned in fine-tuning.

    Choices (see the module docstring for what the converter does):

    - `"int4"`: 4-bit weights, one scale per output channel for
      convolutions, per tensor for fully connected layers; int8 activations.
    - `"int8"`: 8-bit weights and activations.
    - `"skip"`: the layer stays float32 where the file can keep it float
      (next to the model's input or output, or to another float layer);
      a `"skip"` between two quantized layers is trained and stored as int8,
      which the converter would make it anyway. The file is converted from
      the model's own ranges, without calibration data (calibration would
      quantize the float layers too): `tflite_export.export(model, path,
      quantize="int8")` and the tuner's exports (`workflows.deploy`) do so.
    - `"float16"` is refused: float16 weights are a whole-file converter
      mode, not a per-layer type.

    With `"skip"` among the choices, the default `ConstrainedBayesianOracle`
    starts at the maximum corner, every layer left float: that trial fails
    at once (nothing to quantize; the dense model is that file) and counts
    as one of `max_trials`.

    Args:
        model: the dense `keras.Model` the search compresses.
        choices: the choices each layer has, two or more of `"int4"`,
            `"int8"`, `"skip"`.
        include: layer names or classes to search (default: every layer
            `kc.Quantize` covers); the others stay float.
        exclude: layer names or classes to leave float.

    Returns:
        A `MixedPrecisionScheme`: `scheme(hp)` declares the hyperparameters
        and returns the trial's scheme; `scheme.layers` lists the layers
        searched; `scheme.resolve(trial.hyperparameters)` says what each
        layer is in the file; `scheme.build(values)` rebuilds a trial's scheme.

    Raises:
        ValueError: a choice outside `"int4"`, `"int8"`, `"skip"` (`"float16"`
            with the reason), fewer than two choices, or no layer to search.
        TypeError: `model` is not a `keras.Model`, or bad `include`/`exclude`.

    Example:

    ```python
    scheme = kc.search.mixed_precision_scheme(model)
    tuner = kc.search.CompressionTuner(
        model, scheme=scheme, train_data=(x, y), validation_data=(x_val, y_val),
        max_accuracy_drop=0.01, objective="tflite_bytes", quantize="int8",
        max_trials=12, fine_tune_epochs=2, directory="runs", project_name="bits")
    tuner.search()
    best = tuner.best_model()
    scheme.resolve(tuner.best_trial().hyperparameters)  # {"conv1": "int8", "fc1": "int4", ...}
    ```
    """
    return MixedPrecisionScheme(model, choices, include, exclude)
