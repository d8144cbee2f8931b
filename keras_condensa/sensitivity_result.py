"""`Sensitivity`: what `kc.sensitivity` returns, as a table, a CSV, a plot and density bounds."""

import csv
import io

from keras_condensa.files import write_atomically
from keras_condensa.operators.base import is_real


def _density(d):
    return f"{d:g}"


class Sensitivity:
    """Per-layer accuracy drops of `kc.sensitivity`, with each layer's share of the costs.

    Attributes:
        rows: one dict per layer (or coupled group), in model order:
            `layer` (the row's name; a group's names joined by `+`),
            `layers` (the tuple of layer names), `params`, `params_share`,
            `flops`, `flops_share`, `latency_ms`, `latency_share` (shares of
            the sum over the rows) and `drops` (`{density: dense accuracy
            minus the accuracy with only this row compressed}`).
        dense_accuracy: the model's accuracy on the data.
        densities: the densities measured, ascending.
        samples: how many samples each accuracy is measured on.
        groups: whether rows are coupled channel groups.
        skipped: with `groups`, `{layer name: why it has no row}` for the
            layers structured pruning could otherwise remove (their channels
            reach the model output, or the channel graph cannot follow them).
    """

    def __init__(self, rows, dense_accuracy, densities, samples, groups=False, skipped=None):
        self.rows = rows
        self.dense_accuracy = float(dense_accuracy)
        self.densities = tuple(densities)
        self.samples = int(samples)
        self.groups = bool(groups)
        self.skipped = dict(skipped or {})

    def __repr__(self):
        return (
            f"<Sensitivity: {len(self.rows)} {'groups' if self.groups else 'layers'}, "
            f"densities {list(self.densities)}, dense accuracy {self.dense_accuracy:.4f}>"
        )

    def _columns(self):
        return [
            ("layer", lambda r: r["layer"]),
            ("params", lambda r: f"{r['params']:,}"),
            ("params%", lambda r: f"{100 * r['params_share']:.1f}%"),
            ("flops%", lambda r: f"{100 * r['flops_share']:.1f}%"),
            ("latency%", lambda r: f"{100 * r['latency_share']:.1f}%"),
        ] + [
            (f"drop@{_density(d)}", lambda r, d=d: f"{r['drops'][d]:+.4f}") for d in self.densities
        ]

    def to_text(self):
        """The rows as an aligned text table, with a line on what the drops mean.

        Returns:
            A str (no trailing newline).
        """
        columns = self._columns()
        cells = [[name for name, _ in columns]]
        cells += [[cell(row) for _, cell in columns] for row in self.rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        lines = [
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
            for line in cells
        ]
        what = "coupled group" if self.groups else "layer"
        lines.append(
            f"dense accuracy {self.dense_accuracy:.4f} on {self.samples} samples; drop@D: dense "
            f"accuracy minus the accuracy with only that {what} compressed at density D, "
            "no fine-tuning"
        )
        if self.skipped:
            lines.append(
                "no row: " + "; ".join(f"{name} ({why})" for name, why in self.skipped.items())
            )
        return "\n".join(lines)

    def to_csv(self):
        """The rows as CSV text: one line per row, a `drop@D` column per density.

        Returns:
            A str.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        keys = ("params", "params_share", "flops", "flops_share", "latency_ms", "latency_share")
        writer.writerow(["layer", *keys, *(f"drop@{_density(d)}" for d in self.densities)])
        for row in self.rows:
            writer.writerow(
                [row["layer"], *(row[k] for k in keys), *(row["drops"][d] for d in self.densities)]
            )
        return buffer.getvalue()

    def bounds(self, max_drop):
        """Per layer, the lowest density measured that loses at most `max_drop` accuracy.

        A density counts only if it and every higher density measured stay
        within `max_drop` (a drop that is not monotonic is not trusted); a
        layer that loses more even at the highest density gets 1.0 (keep it
        dense). Members of a coupled group get the group's bound.

        Args:
            max_drop: the accuracy a layer may lose alone, e.g. 0.01.

        Returns:
            `{layer name: density}`.

        Raises:
            ValueError: `max_drop` is not a number >= 0.

        Example:

        ```python
        lower = result.bounds(0.01)
        scheme = kc.Compose([kc.Prune(max(d, 0.05), include=[n]) for n, d in lower.items()])
        ```
        """
        if not is_real(max_drop) or not max_drop >= 0:
            raise ValueError(
                "max_drop is the accuracy a layer may lose, a number >= 0 (e.g. 0.01). "
                f"Received: max_drop={max_drop!r}"
            )
        result = {}
        for row in self.rows:
            bound = 1.0
            for d in sorted(self.densities, reverse=True):
                if row["drops"][d] > max_drop:
                    break
                bound = d
            result.update(dict.fromkeys(row["layers"], bound))
        return result

    def search_scheme(self, max_drop, name="density"):
        """A `CompressionTuner` scheme over one density, floored per layer by `bounds(max_drop)`.

        Each trial prunes every layer at `max(density, its bound)` (unstructured,
        one threshold per layer): a single hyperparameter, so the search stays
        one-dimensional, while fragile layers keep the density they were
        measured to need and layers that lose more than `max_drop` even at
        the highest density measured stay dense. `density` ranges from the
        lowest bound to 1.0 (log sampling).

        Args:
            max_drop: the accuracy a layer may lose alone (see `bounds`).
            name: the hyperparameter's name.

        Returns:
            A callable taking a `keras_tuner.HyperParameters` and returning a
            `kc.Compose` of per-layer `kc.Prune` operators.

        Raises:
            ValueError: the rows are coupled groups (`groups=True`: prune
                them with a structured scheme built from `bounds`), a bad
                `max_drop`, or every layer must stay dense.

        Example:

        ```python
        result = kc.sensitivity(model, data=(x_val, y_val), densities=(0.05, 0.1, 0.25, 0.5))
        tuner = kc.search.CompressionTuner(model, scheme=result.search_scheme(0.01), ...)
        ```
        """
        from keras_condensa.operators import Compose, Prune

        if self.groups:
            raise ValueError(
                "search_scheme prunes single layers (unstructured); these rows are coupled "
                "channel groups (groups=True). Build a structured scheme from bounds(max_drop), "
                "or measure with groups=False."
            )
        bounds = {layer: d for layer, d in self.bounds(max_drop).items() if d < 1.0}
        if not bounds:
            raise ValueError(
                f"Every layer loses more than max_drop={max_drop} alone at the densities "
                f"measured ({list(self.densities)}): nothing to prune. Measure higher densities "
                "or allow a larger max_drop."
            )
        lowest = min(bounds.values())

        def scheme(hp):
            density = hp.Float(name, lowest, 1.0, sampling="log")
            return Compose(
                [
                    Prune(max(density, bound), include=[layer], scope="layer")
                    for layer, bound in bounds.items()
                ]
            )

        return scheme

    def plot(self, path, title=None):
        """Writes a PNG: accuracy drop per row per density, and each row's cost shares.

        Needs matplotlib (`pip install 'keras-condensa[report]'`); the file is
        written atomically.

        Args:
            path: the `.png` to write.
            title: optional title.

        Raises:
            ImportError: matplotlib is not installed.
        """
        from keras_condensa.sensitivity_plot import render

        write_atomically(path, render(self, title))
