"""The plot of a `kc.sensitivity` result (matplotlib, Agg backend, imported when first used)."""

import io

import numpy as np


def render(result, title=None):
    """PNG bytes: accuracy drop per row per density (top), each row's cost shares (bottom).

    Args:
        result: a `Sensitivity`.
        title: optional title.

    Returns:
        bytes.

    Raises:
        ImportError: matplotlib is not installed (naming the pip extra).
    """
    try:
        import matplotlib
    except ModuleNotFoundError as error:
        raise ImportError(
            "Sensitivity.plot needs matplotlib, which is not installed. Install the report "
            "extra: pip install 'keras-condensa[report]'"
        ) from error
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = result.rows
    labels = [r["layer"] if len(r["layer"]) <= 28 else r["layer"][:25] + "..." for r in rows]
    where = np.arange(len(rows))
    fig = Figure(figsize=(max(6.4, 1.5 + 0.45 * len(rows)), 7.0), dpi=110)
    top, bottom = fig.subplots(2, 1, sharex=True)
    width = 0.8 / len(result.densities)
    for i, d in enumerate(result.densities):
        top.bar(
            where + (i - (len(result.densities) - 1) / 2) * width,
            [r["drops"][d] for r in rows],
            width,
            label=f"density {d:g}",
        )
    top.axhline(0, color="gray", linewidth=0.8)
    top.set_ylabel("accuracy drop")
    top.set_title(
        title
        or f"Sensitivity: each {'group' if result.groups else 'layer'} compressed alone "
        f"(dense accuracy {result.dense_accuracy:.4f})"
    )
    top.legend(fontsize=8)
    top.grid(True, axis="y", alpha=0.3)
    shares = (("params_share", "params"), ("flops_share", "FLOPs"), ("latency_share", "latency"))
    width = 0.8 / len(shares)
    for i, (key, name) in enumerate(shares):
        bottom.bar(where + (i - 1) * width, [100 * r[key] for r in rows], width, label=name)
    bottom.set_ylabel("share of the rows (%)")
    bottom.legend(fontsize=8)
    bottom.grid(True, axis="y", alpha=0.3)
    bottom.set_xticks(where)
    bottom.set_xticklabels(labels, rotation=45 if len(rows) > 4 else 0, ha="right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
