"""`sensitivity`: how much accuracy each layer loses when it alone is compressed.

Each layer (or each group of coupled channels) is compressed on its own, at
each density, in a copy of the model, and the copy is evaluated with no
fine-tuning: the accuracy drop says which layers tolerate compression and
which do not. Each row also gives the layer's share of the parameters, of
the FLOPs and of the measured latency, so the layers worth compressing (large,
slow, tolerant) stand out. `Sensitivity.bounds` turns the table into per-layer
lower bounds on density for a search.
"""

import math
import time

import keras
import numpy as np

from keras_condensa import copying, dependency, masking, prunable, reach
from keras_condensa.flops import layer_flops
from keras_condensa.model_checks import check_model
from keras_condensa.operators import FilterPrune, NeuronPrune, Operator, Prune, StructurePrune
from keras_condensa.operators.base import is_real
from keras_condensa.outputs import predicted_classes
from keras_condensa.sensitivity_result import Sensitivity

DEFAULT_DENSITIES = (0.1, 0.25, 0.5)


def prune_layer(layer_name, density):
    """The default `scheme_fn` per layer: unstructured magnitude pruning of that layer alone.

    Args:
        layer_name: the layer's name.
        density: the fraction of its weights to keep.

    Returns:
        `kc.Prune(density, scope="layer", include=[layer_name])`.
    """
    return Prune(density, scope="layer", include=[layer_name])


def _prune_group(kinds):
    """The default `scheme_fn` with `groups=True`: the group's filters or neurons."""

    def scheme_fn(layer_names, density):
        kind = kinds[tuple(layer_names)]
        op = {"filter": FilterPrune, "neuron": NeuronPrune}.get(kind, StructurePrune)
        return op(density, scope="layer", include=list(layer_names))

    return scheme_fn


class _Target:
    """One row to measure: its label, the names `scheme_fn` gets, its units."""

    def __init__(self, label, names, units):
        self.label = label
        self.names = names  # a layer name (str), or a tuple of names for a coupled group
        self.units = units

    @property
    def layer_names(self):
        return (self.names,) if isinstance(self.names, str) else self.names


def _layer_targets(model):
    return [
        _Target(unit.name, unit.name, [unit])
        for container in masking.containers(model)
        for unit in reach.units(container)
        if unit.spec is not None and prunable.not_pruned_reason(unit.layer) is None
    ]


def _is_layer(operation):
    return isinstance(operation, keras.layers.Layer)


def _group_targets(model):
    """Targets, one per group of coupled output channels structured pruning may remove.

    Returns:
        `(targets, {names: "filter", "neuron" or "structure"}, {layer name: why it has no row})`.
    """
    units = [
        unit
        for container in masking.containers(model)
        for unit in reach.units(container)
        if not unit.nested and unit.spec is not None and unit.spec.kind
    ]
    # On a copy: a Sequential loaded from a .keras file keeps stale nodes from its rebuilds, and
    # its layers would look shared (called more than once). Copies keep the layers' names.
    copy = copying.clone(model, lambda op: copying.copy_layer(op) if _is_layer(op) else op)
    graph = dependency.DependencyGraph(copy, on_unknown="skip")
    copies = {layer.name: layer for layer in masking.containers(copy)}
    groups, skipped = {}, {}
    for unit in units:  # In model order: producers, and the depthwise layers their channels feed.
        layout = graph.channels_of(copies[unit.name])
        if unit.name in graph.skipped:
            skipped[unit.name] = graph.skipped[unit.name]
        elif layout is None or len(layout.segments) != 1:
            skipped[unit.name] = "its output channels are not one group the graph follows"
        elif graph.feeds_output(layout.segments[0]):
            skipped[unit.name] = "its channels reach the model output"
        else:
            groups.setdefault(id(layout.segments[0].root()), []).append(unit)
    targets, kinds = [], {}
    for members in groups.values():
        names = tuple(u.name for u in members)
        found = {u.spec.kind for u in members}
        kinds[names] = found.pop() if len(found) == 1 else "structure"
        label = "+".join(names)
        label = label if len(label) <= 40 else f"{names[0]}+{len(names) - 1} more"
        targets.append(_Target(label, names, members))
    return targets, kinds, skipped


def _select(targets, layers):
    if layers is None:
        return targets
    if isinstance(layers, str):
        layers = [layers]
    known = {name for t in targets for name in t.layer_names}
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise ValueError(
            f"layers= names layers this analysis has no row for: {unknown}. Give names from "
            f"{sorted(known)}, or leave layers=None to analyze them all."
        )
    return [t for t in targets if set(t.layer_names) & set(layers)]


def _check_densities(densities):
    if isinstance(densities, (str, bytes)) or not hasattr(densities, "__iter__"):
        raise TypeError(
            "densities takes a sequence of fractions of weights to keep, e.g. (0.1, 0.25, 0.5). "
            f"Received: densities={densities!r}"
        )
    values = list(densities)
    if not values or any(not is_real(d) or not 0 < d <= 1 for d in values):
        raise ValueError(
            "densities must be fractions of weights to keep, each in (0, 1], e.g. "
            f"(0.1, 0.25, 0.5). Received: densities={densities!r}"
        )
    return tuple(sorted({float(d) for d in values}))


def _is_array(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _collect(data):
    """`(x, y)` NumPy arrays from `(x, y)` arrays or a finite iterable of `(x, y)` batches."""
    if data is None:
        raise ValueError(
            "data is required: pass data=(x, y) arrays, or a finite dataset of (x, y) batches."
        )
    pair = isinstance(data, (tuple, list)) and len(data) == 2 and _is_array(data[1])
    if pair and isinstance(data[0], (dict, list, tuple)):
        raise TypeError(
            "data's x must be one array: kc.sensitivity measures models with one input. "
            f"Received x of type {type(data[0]).__name__}"
        )
    if pair and _is_array(data[0]):
        x, y = (np.asarray(a) for a in data)
    else:
        cardinality = getattr(data, "cardinality", None)
        if callable(cardinality) and int(cardinality()) == -1:  # tf.data.INFINITE_CARDINALITY
            raise ValueError(
                "data is an infinite dataset (it repeats); pass a finite one, e.g. "
                "dataset.take(n), or data=(x, y) arrays."
            )
        if isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
            raise TypeError(
                "data takes (x, y) arrays or an iterable of (x, y) batches (a tf.data.Dataset, "
                f"a generator). Received: {type(data).__name__}"
            )
        xs, ys = [], []
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(
                    "each batch of data must be an (x, y) pair (labels are needed to measure "
                    f"accuracy). Received a batch of type {type(batch).__name__}"
                )
            xs.append(np.asarray(batch[0]))
            ys.append(np.asarray(batch[1]))
        if not xs:
            raise ValueError("data is empty: it yielded no batches. Pass at least one sample.")
        x, y = np.concatenate(xs), np.concatenate(ys)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError("data is empty: x has no samples. Pass at least one sample.")
    if y.ndim == 0 or len(y) != len(x):
        raise ValueError(
            f"data's x has {len(x)} samples but y has {len(y) if y.ndim else 'no'} labels; "
            "pass one label per sample."
        )
    return x.astype("float32") if x.dtype == np.float64 else x, y


def _accuracy(model, x, y, batch_size):
    outputs, batch = [], min(batch_size, len(x))
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        # Every call gets one input shape: JAX compiles each op once per shape, not twice.
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        out = model(chunk, training=False)
        if isinstance(out, (list, tuple, dict)):
            raise ValueError(
                f"kc.sensitivity measures top-1 accuracy of a model with one output; model "
                f"'{model.name}' returns {type(out).__name__} of outputs."
            )
        outputs.append(keras.ops.convert_to_numpy(out)[:n])
    outputs = np.concatenate(outputs)
    labels = y
    if labels.ndim == outputs.ndim >= 2 and labels.shape[-1] == outputs.shape[-1] > 1:
        labels = labels.argmax(axis=-1)  # one-hot rows
    predicted = predicted_classes(outputs)
    return float(np.mean(predicted == labels.reshape(predicted.shape)))


def _compressed(model, scheme_fn, target, density):
    """`scheme_fn`'s scheme for `target` applied to a copy of `model`, checked to cover it only."""
    call = f"scheme_fn({target.names!r}, {density})"
    scheme = scheme_fn(target.names, density)
    if not isinstance(scheme, Operator):
        raise TypeError(
            f"{call} returned {type(scheme).__name__}; it must return a kc operator (a scheme), "
            f"e.g. kc.Prune(density, include=[layer_name])."
        )
    try:
        copy = scheme.apply(model)
    except ValueError as e:
        raise ValueError(
            f"{call} returned {scheme!r}, which cannot be applied: {e} Make scheme_fn cover the "
            f"layer it is given, e.g. kc.Prune(density, include=[layer_name])."
        ) from None
    wanted = {u.container.name for u in target.units}
    covered = {w.layer.name: w.layer for w in masking.iter_wrappers(copy)}
    missing = sorted(wanted - set(covered))
    others = sorted(
        name
        for name, layer in covered.items()
        if name not in wanted and layer.weights and prunable.not_pruned_reason(layer) is None
    )
    if missing or others:
        what = f"does not cover {missing}" if missing else f"also covers {others}"
        raise ValueError(
            f"{call} returned {scheme!r}, which {what}: each row compresses its own layers "
            "alone. Pass include=[layer_name] (include=list(layer_names) with groups=True)."
        )
    return copy


def _positions(container):
    try:
        shape = container.output.shape
    except (AttributeError, ValueError):  # Never called, or called more than once.
        return 1
    spatial = shape[1:-1]
    return math.prod(spatial) if spatial and None not in spatial else 1


def _unit_flops(unit):
    """FLOPs of a unit's kernels, its sublayers' (an LSTM's cell) included, as `kc.flops` counts."""
    positions = _positions(unit.container)
    return sum(layer_flops(layer, positions) for layer in unit.layer._flatten_layers())


def _concrete(tensor, rng):
    if not isinstance(tensor, keras.KerasTensor):
        return tensor
    shape = tuple(1 if d is None else d for d in tensor.shape)
    if "int" in tensor.dtype or tensor.dtype == "bool":
        return keras.ops.zeros(shape, tensor.dtype)
    return keras.ops.convert_to_tensor(rng.standard_normal(shape).astype(tensor.dtype))


def _median_ms(call, runs):
    for _ in range(2):  # Warm up: tracing, caches.
        keras.tree.map_structure(keras.ops.convert_to_numpy, call())
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        keras.tree.map_structure(keras.ops.convert_to_numpy, call())
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def _container_ms(model, container, x, runs, rng):
    """Median ms of one batch-1 call of `container` on inputs of its real shape (0: unknown)."""
    nodes = getattr(container, "_inbound_nodes", [])
    if container is model and not nodes:  # A subclassed model: its own call on a sample.
        sample = keras.ops.convert_to_tensor(x[:1])
        return _median_ms(lambda: model(sample, training=False), runs)
    if not nodes:
        return 0.0
    args, kwargs = nodes[0].arguments.convert(lambda t: _concrete(t, rng))
    return _median_ms(lambda: container(*args, **kwargs), runs)


def _latencies(model, targets, x, runs):
    """Per target, its layers' milliseconds: a container's time split over its units by FLOPs."""
    rng = np.random.default_rng(0)
    by_container = {}
    for target in targets:
        for unit in target.units:
            by_container.setdefault(id(unit.container), (unit.container, []))[1].append(unit)
    per_unit = {}
    for container, units in by_container.values():
        total = _container_ms(model, container, x, runs, rng)
        # Each unit's share of the container: by FLOPs, else parameters, else equal.
        weights = [_unit_flops(u) for u in units]
        weights = weights if any(weights) else [u.params for u in units]
        weights = weights if any(weights) else [1] * len(units)
        for unit, weight in zip(units, weights, strict=True):
            per_unit[id(unit)] = total * weight / sum(weights)
    return [sum(per_unit[id(u)] for u in t.units) for t in targets]


def _shares(values):
    total = float(sum(values))
    return [float(v) / total if total else 0.0 for v in values]


def sensitivity(
    model,
    scheme_fn=None,
    data=None,
    densities=DEFAULT_DENSITIES,
    *,
    groups=False,
    layers=None,
    batch_size=256,
    latency_runs=10,
):
    """Accuracy drop per layer per density, each layer compressed alone, without fine-tuning.

    For each layer (or coupled group, with `groups=True`) and each density,
    the scheme `scheme_fn` returns is applied to a copy of `model` (the model
    itself is never modified) and the copy is evaluated on `data`. Rows also
    give each layer's parameters, FLOPs (`kc.flops`, per layer) and latency
    (the median of `latency_runs` batch-1 calls of the layer alone, on
    random inputs of its real input shape; unknown dimensions count as 1),
    each as a share of the sum over the rows.

    Args:
        model: a built, trained Keras model with one input and one output
            (a classifier: accuracy is top-1, from logits or probabilities).
        scheme_fn: `scheme_fn(layer_name, density)` returns the scheme that
            compresses that one layer, e.g. `kc.Quantize("int4",
            include=[layer_name])`. With `groups=True` it gets the tuple of
            the group's layer names. Default: `kc.Prune(density,
            include=[layer_name])` (unstructured magnitude pruning), or with
            `groups=True` `kc.FilterPrune` (`kc.NeuronPrune` for Dense
            groups) of the group.
        data: `(x, y)` arrays (integer labels or one-hot rows), or a finite
            iterable of `(x, y)` batches (a `tf.data.Dataset`, a generator),
            collected into arrays.
        densities: fractions of weights to keep, each in (0, 1].
        groups: one row per group of coupled output channels instead of
            per layer: the convolutions (or Dense layers) whose outputs meet
            at a residual `Add` are pruned together, as `kc.FilterPrune`
            and `kc.shrink` do, so a row is what structured pruning can
            really remove. Channels that reach the model output have no row.
            Sequential and functional models only.
        layers: optional layer names: only the rows holding them.
        batch_size: samples per evaluation call.
        latency_runs: timed calls per layer (their median is kept).

    Returns:
        A `kc.sensitivity` result (`Sensitivity`): `.rows`,
        `.dense_accuracy`, `.to_text()`, `.to_csv()`, `.plot(path)`,
        `.bounds(max_drop)`.

    Raises:
        TypeError: `scheme_fn` is not callable or returns no scheme, `data`
            or `densities` have the wrong type.
        ValueError: empty or mismatched data, a density outside (0, 1],
            a scheme that names unknown layers or covers other layers than
            the row's, `layers=` naming unknown layers.

    Example:

    ```python
    result = kc.sensitivity(model, data=(x_val, y_val), densities=(0.1, 0.25, 0.5))
    print(result.to_text())
    result.plot("sensitivity.png")
    bounds = result.bounds(max_drop=0.01)  # {layer: lowest safe density}
    int4 = kc.sensitivity(
        model, lambda name, d: kc.Quantize("int4", include=[name]), (x_val, y_val), (1.0,)
    )
    ```
    """
    check_model(model, subclassed=not groups)
    if scheme_fn is not None and not callable(scheme_fn):
        looks_like_data = isinstance(scheme_fn, (tuple, list)) or _is_array(scheme_fn)
        hint = " (to pass data positionally, give scheme_fn=None first)" if looks_like_data else ""
        raise TypeError(
            "scheme_fn must be a callable scheme_fn(layer_name, density) returning a scheme, "
            "e.g. lambda name, d: kc.Prune(d, include=[name]). "
            f"Received: {type(scheme_fn).__name__}{hint}"
        )
    densities = _check_densities(densities)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    if isinstance(latency_runs, bool) or not isinstance(latency_runs, int) or latency_runs < 1:
        raise ValueError(
            f"latency_runs must be a positive int. Received: latency_runs={latency_runs!r}"
        )
    x, y = _collect(data)
    if groups:
        targets, kinds, skipped = _group_targets(model)
        scheme_fn = scheme_fn or _prune_group(kinds)
    else:
        targets, skipped = _layer_targets(model), {}
        scheme_fn = scheme_fn or prune_layer
    targets = _select(targets, layers)
    if not targets:
        what = "coupled channel groups that structured pruning may remove" if groups else "layers"
        raise ValueError(f"model '{model.name}' has no prunable {what}: nothing to analyze.")
    dense = _accuracy(model, x, y, batch_size)
    params = [sum(u.params for u in t.units) for t in targets]
    flops = [sum(_unit_flops(u) for u in t.units) for t in targets]
    latency = _latencies(model, targets, x, latency_runs)
    shares = [_shares(params), _shares(flops), _shares(latency)]
    rows = []
    for i, target in enumerate(targets):
        drops = {}
        for density in densities:
            copy = _compressed(model, scheme_fn, target, density)
            drops[density] = dense - _accuracy(copy, x, y, batch_size)
        rows.append(
            {
                "layer": target.label,
                "layers": target.layer_names,
                "params": int(params[i]),
                "params_share": shares[0][i],
                "flops": int(flops[i]),
                "flops_share": shares[1][i],
                "latency_ms": latency[i],
                "latency_share": shares[2][i],
                "drops": drops,
            }
        )
    return Sensitivity(rows, dense, densities, len(x), groups=bool(groups), skipped=skipped)
