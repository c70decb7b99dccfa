"""Human-readable outputs: metric curves, the round table, and partition summaries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from .store import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """curves.png: training loss, evaluation loss and accuracy (centralized and federated) per round."""
    plt = _figure()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    for key, label in (("train_loss", "train loss (clients)"), ("loss", "test loss"),
                       ("fed_loss", "federated test loss")):
        x, y = series(key)
        if x:
            ax_loss.plot(x, y, marker="." if len(x) < 50 else None, label=label)
    for key, label in (("accuracy", "test accuracy"), ("fed_accuracy", "federated accuracy (mean)"),
                       ("fed_accuracy_p10", "federated accuracy (10th pct.)")):
        x, y = series(key)
        if x:
            ax_acc.plot(x, y, marker="." if len(x) < 50 else None, label=label)
    ax_loss.set(xlabel="round", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="round", ylabel="accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    _save_png(fig, path)
    plt.close(fig)


def round_table(rows: Sequence[dict[str, Any]]) -> Table:
    """One row per round; columns for whichever metrics the run recorded."""
    keys = ["round", "clients", "failures", "train_loss", "loss", "accuracy", "fed_accuracy",
            "fed_accuracy_p10", "bytes_up", "bytes_down", "seconds"]
    present = [k for k in keys if any(k in r and r[k] is not None for r in rows)]
    table = Table(title="fedloop rounds")
    for k in present:
        table.add_column(k, justify="right")
    for r in rows:
        table.add_row(*[_fmt(r.get(k)) for k in present])
    return table


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def partition_table(counts: np.ndarray, max_rows: int = 50) -> Table:
    """Per-client sample counts and label distribution (clients x classes)."""
    table = Table(title=f"{counts.shape[0]} clients, {int(counts.sum())} training rows")
    table.add_column("client", justify="right")
    table.add_column("rows", justify="right")
    for c in range(counts.shape[1]):
        table.add_column(str(c), justify="right")
    for i, row in enumerate(counts[:max_rows]):
        table.add_row(str(i), str(int(row.sum())), *[str(int(v)) if v else "." for v in row])
    if counts.shape[0] > max_rows:
        table.add_row("…", *[""] * (counts.shape[1] + 1))
    return table


def plot_partition(counts: np.ndarray, path: Path, title: str = "") -> None:
    """Heatmap of label counts per client."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(min(16, 3 + 0.12 * counts.shape[0]), 4))
    im = ax.imshow(counts.T, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set(xlabel="client", ylabel="label", title=title or "label counts per client")
    fig.colorbar(im, ax=ax, label="rows")
    _save_png(fig, path)
    plt.close(fig)
