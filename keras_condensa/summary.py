"""`kc.summary`: per-layer density, parameters, nonzeros and bytes."""

import dataclasses

import numpy as np
from keras import ops

from keras_condensa import masking, reach
from keras_condensa.wrappers import CompressionWrapper


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One weighted layer of a summary (a layer nested in a custom layer has its own row)."""

    name: str
    class_name: str
    pruned: bool
    params: int
    nonzeros: int
    bytes: int
    masked_params: int = 0
    masked_nonzeros: int = 0
    covered_params: int = 0

    @property
    def density(self):
        return self.nonzeros / self.params if self.params else 1.0


@dataclasses.dataclass(frozen=True)
class Summary:
    """What `kc.summary` returns: rows per weighted layer and totals.

    Attributes:
        rows: a `LayerRow` per weighted layer.
        skipped: `{layer name: reason}` for weighted layers left dense.
        coded_bytes: the size of the model's `kc.codec` file (`.kcz`), when
            `kc.summary(model, coded=True)` measured it, else `None`.
    """

    rows: tuple
    skipped: dict
    coded_bytes: int | None = None

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
    def covered_params(self):
        """Parameters a scheme reaches (masked or quantized)."""
        return sum(r.covered_params for r in self.rows)

    @property
    def coverage(self):
        """The fraction of the parameters that a scheme reaches."""
        return self.covered_params / self.params if self.params else 0.0

    @property
    def masked_density(self):
        """Density over the masked weights only (what a scheme's density asks for)."""
        params = sum(r.masked_params for r in self.rows)
        return sum(r.masked_nonzeros for r in self.rows) / params if params else 1.0

    def __str__(self):
        # Nested layers are named by their path ("transformer_layer_0/query"): the column fits them.
        width = max([28] + [len(r.name) + 2 for r in self.rows])
        header = (
            f"{'layer':<{width}}{'class':<22}{'params':>10}{'nonzeros':>10}"
            f"{'density':>9}{'bytes':>11}"
        )
        lines = [header, "-" * len(header)]
        for r in self.rows:
            mark = "*" if r.pruned else " "
            lines.append(
                f"{mark}{r.name:<{width - 1}}{r.class_name[:21]:<22}{r.params:>10,}"
                f"{r.nonzeros:>10,}"
                f"{r.density:>9.3f}{r.bytes:>11,}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<{width + 22}}{self.params:>10,}{self.nonzeros:>10,}{self.density:>9.3f}"
            f"{self.bytes:>11,}"
        )
        if self.coded_bytes is not None:
            lines.append(
                f"coded (.kcz): {self.coded_bytes:,} bytes, "
                f"{self.bytes / max(self.coded_bytes, 1):.1f}x smaller than the weights' bytes"
            )
        if any(r.pruned for r in self.rows):
            lines.append(
                f"* pruned layer; density of the masked weights: {self.masked_density:.4f}"
            )
        if self.covered_params:
            lines.append(
                f"covered by the scheme: {self.covered_params:,} of {self.params:,} parameters "
                f"({self.coverage:.1%})"
            )
        for name, reason in self.skipped.items():
            lines.append(f"left dense: {name}: {reason}")
        return "\n".join(lines)


def _row(unit, weights, masked=(), covered=()):
    arrays = [np.asarray(ops.convert_to_numpy(w)) for w in weights]
    masked_arrays = [a for a, w in zip(arrays, weights, strict=True) if id(w) in masked]
    return LayerRow(
        name=unit.name,
        class_name=type(unit.layer).__name__,
        pruned=bool(masked_arrays),
        params=int(sum(a.size for a in arrays)),
        nonzeros=int(sum(np.count_nonzero(a) for a in arrays)),
        bytes=int(sum(a.nbytes for a in arrays)),
        masked_params=int(sum(a.size for a in masked_arrays)),
        masked_nonzeros=int(sum(np.count_nonzero(a) for a in masked_arrays)),
        covered_params=int(
            sum(a.size for a, w in zip(arrays, weights, strict=True) if id(w) in covered)
        ),
    )


def summary(model, print_fn=print, coded=False):
    """Per-layer density, parameter count, nonzero count and bytes of a model.

    Works on wrapped models (the masked weights count) and on stripped or
    plain models. Weighted layers that are not pruned are listed with the reason.

    Args:
        model: a Keras model.
        print_fn: where the table goes; `None` prints nothing.
        coded: also measure `coded_bytes`, the size of the file
            `kc.codec.save` writes for the (stripped) model: positions and
            values entropy-coded. It codes the whole model, which takes a
            few seconds for millions of weights, so it is asked for.

    Returns:
        A `Summary`.

    Example:

    ```python
    s = kc.summary(pruned, coded=True)
    s.density, s.nonzeros, s.coded_bytes
    ```
    """
    rows, skipped = [], {}
    wrapped = any(True for _ in masking.iter_wrappers(model))
    for container in masking.containers(model):
        masked, quantized = {}, set()
        if isinstance(container, CompressionWrapper):
            masked = {
                id(container.weight(p)): container.pruned_value(p)
                for p in container.masked_weights
            }
            quantized = {id(container.weight(p)) for p in container.chains}
            container = container.layer
        for unit in reach.units(container):
            weights = [masked.get(id(v), v) for v in unit.variables]
            masked_ids = {id(masked[id(v)]) for v in unit.variables if id(v) in masked}
            covered_ids = masked_ids | {id(v) for v in unit.variables if id(v) in quantized}
            rows.append(_row(unit, weights, masked=masked_ids, covered=covered_ids))
            if wrapped and not covered_ids:
                skipped[unit.name] = (
                    "not covered by the scheme" if unit.spec is not None else unit.reason
                )
    never = masking.never_pruned(model)
    for name in never:
        skipped[name] = "its pruning schedule has not run: fit with callbacks=kc.callbacks(scheme)"
    coded_bytes = None
    if coded:
        from keras_condensa import codec  # noqa: PLC0415 - the codec strips: above summary

        coded_bytes = codec.coded_bytes(model)
    result = Summary(rows=tuple(rows), skipped=skipped, coded_bytes=coded_bytes)
    if print_fn is not None:
        print_fn(str(result))
    return result
