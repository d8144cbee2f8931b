"""`kc.summary`: per-layer density, parameters, nonzeros and bytes."""

import dataclasses

import numpy as np
from keras import ops

from keras_condensa import masking, prunable
from keras_condensa.wrappers import CompressionWrapper


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One weighted layer of a summary."""

    name: str
    class_name: str
    pruned: bool
    params: int
    nonzeros: int
    bytes: int
    masked_params: int = 0
    masked_nonzeros: int = 0

    @property
    def density(self):
        return self.nonzeros / self.params if self.params else 1.0


@dataclasses.dataclass(frozen=True)
class Summary:
    """What `kc.summary` returns: rows per weighted layer and totals.

    Attributes:
        rows: a `LayerRow` per weighted layer.
        skipped: `{layer name: reason}` for weighted layers left dense.
    """

    rows: tuple
    skipped: dict

    @property
    def params(self):
        return sum(r.params for r in self.rows)

    @property
    def nonzeros(self):
        return sum(r.nonzeros for r in self.rows)

    @property
    def bytes(self):
        return sum(r.bytes for r in self.rows)

    @property
    def density(self):
        return self.nonzeros / self.params if self.params else 1.0

    @property
    def masked_nonzeros(self):
        return sum(r.masked_nonzeros for r in self.rows)

    @property
    def masked_density(self):
        """Density over the masked weights only (what a scheme's density asks for)."""
        params = sum(r.masked_params for r in self.rows)
        return sum(r.masked_nonzeros for r in self.rows) / params if params else 1.0

    def __str__(self):
        header = f"{'layer':<28}{'class':<22}{'params':>10}{'nonzeros':>10}{'density':>9}{'bytes':>11}"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            mark = "*" if r.pruned else " "
            lines.append(
                f"{mark}{r.name[:27]:<27}{r.class_name[:21]:<22}{r.params:>10,}{r.nonzeros:>10,}"
                f"{r.density:>9.3f}{r.bytes:>11,}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<50}{self.params:>10,}{self.nonzeros:>10,}{self.density:>9.3f}{self.bytes:>11,}"
        )
        if any(r.pruned for r in self.rows):
            lines.append(f"* pruned layer; density of the masked weights: {self.masked_density:.4f}")
        for name, reason in self.skipped.items():
            lines.append(f"left dense: {name}: {reason}")
        return "\n".join(lines)


def _row(layer, weights, masked=()):
    arrays = [np.asarray(ops.convert_to_numpy(w)) for w in weights]
    masked_arrays = [a for a, w in zip(arrays, weights) if id(w) in masked]
    return LayerRow(
        name=layer.name,
        class_name=type(layer).__name__,
        pruned=bool(masked),
        params=int(sum(a.size for a in arrays)),
        nonzeros=int(sum(np.count_nonzero(a) for a in arrays)),
        bytes=int(sum(a.nbytes for a in arrays)),
        masked_params=int(sum(a.size for a in masked_arrays)),
        masked_nonzeros=int(sum(np.count_nonzero(a) for a in masked_arrays)),
    )


def summary(model, print_fn=print):
    """Per-layer density, parameter count, nonzero count and bytes of a model.

    Works on wrapped models (the masked weights count) and on stripped or
    plain models. Weighted layers that are not pruned are listed with the reason.

    Args:
        model: a Keras model.
        print_fn: where the table goes; `None` prints nothing.

    Returns:
        A `Summary`.

    Example:

    ```python
    s = kc.summary(pruned)
    s.density, s.nonzeros
    ```
    """
    rows, skipped = [], {}
    wrapped = any(True for _ in masking.iter_wrappers(model))
    for layer in masking.iter_leaf_layers(model):
        if isinstance(layer, CompressionWrapper):
            masked = {id(layer.weight(p)): layer.masked_value(p) for p in layer.masked_weights}
            weights = [masked.get(id(w), w) for w in layer.layer.weights]
            rows.append(_row(layer.layer, weights, masked={id(v) for v in masked.values()}))
        elif layer.weights:
            rows.append(_row(layer, layer.weights))
            if not wrapped:
                continue
            spec = prunable.prune_spec(layer)
            skipped[layer.name] = (
                "not covered by the scheme" if spec else prunable.unsupported_reason(layer)
            )
    result = Summary(rows=tuple(rows), skipped=skipped)
    if print_fn is not None:
        print_fn(str(result))
    return result
