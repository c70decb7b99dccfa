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


COLOURS = {"train_loss": "tab:gray", "loss": "tab:blue", "fed_loss": "tab:orange", "accuracy": "tab:blue",
           "fed_accuracy": "tab:orange", "fed_accuracy_p10": "tab:red", "bytes_up": "tab:green",
           "bytes_down": "tab:purple"}
"""One colour per series, the same in every panel (test metrics blue, federated orange)."""


def run_title(meta: dict[str, Any]) -> str:
    """"<dataset>: <strategy>, model <model>" from a run's metadata (custom models say so)."""
    return f"{meta.get('dataset', 'custom data')}: {meta.get('strategy', '?')}, model {meta.get('model', 'custom')}"


def plot_curves(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """curves.png: training loss, evaluation loss and accuracy (centralized and federated), and the bytes moved
    so far (up and down, cumulative), per round."""
    from matplotlib.ticker import MaxNLocator

    plt = _figure()
    fig, (ax_loss, ax_acc, ax_bytes) = plt.subplots(1, 3, figsize=(16, 4))

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None and not r.get("failed")]
        return [p[0] for p in pts], [p[1] for p in pts]

    panels = ((ax_loss, "loss", (("train_loss", "train loss (clients)"), ("loss", "test loss"),
                                 ("fed_loss", "federated test loss"))),
              (ax_acc, "accuracy", (("accuracy", "test accuracy"), ("fed_accuracy", "federated accuracy (mean)"),
                                    ("fed_accuracy_p10", "federated accuracy (10th pct.)"))))
    for ax, what, keys in panels:
        for key, label in keys:
            x, y = series(key)
            if x:
                ax.plot(x, y, marker="." if len(x) < 50 else None, label=label, color=COLOURS[key])
        ax.set(xlabel="round", ylabel=what, title=what.capitalize())
    for key, label in (("bytes_up", "uploaded (clients to server)"), ("bytes_down", "downloaded (server to clients)")):
        x, y = series(key)
        if x:
            ax_bytes.plot(x, np.cumsum(y) / 1e6, marker="." if len(x) < 50 else None, label=label,
                          color=COLOURS[key])
    ax_bytes.set(xlabel="round", ylabel="MB so far", title="Bytes moved")
    for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy"), (ax_bytes, "bytes")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {what} recorded" + (" (the model's outputs are not class scores)"
                                                       if what == "accuracy" and rows else ""),
                    ha="center", va="center", transform=ax.transAxes, color="gray")
    if title:
        fig.suptitle(title)
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
    """Heatmap of label counts per client, every class labelled."""
    from matplotlib.ticker import MaxNLocator

    plt = _figure()
    fig, ax = plt.subplots(figsize=(min(16, 3 + 0.12 * counts.shape[0]), max(3, 1 + 0.3 * counts.shape[1])))
    im = ax.imshow(counts.T, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set(xlabel="client", ylabel="label", title=title or "label counts per client")
    ax.set_yticks(range(counts.shape[1]))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=ax, label="rows")
    _save_png(fig, path)
    plt.close(fig)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def summary_line(rows: Sequence[dict[str, Any]], summary: dict[str, Any] | None) -> str:
    """rounds, stop reason, final accuracy and loss, and the bytes the run moved."""
    done = [r for r in rows if not r.get("failed")]
    evaluated = [r for r in done if r.get("accuracy") is not None or r.get("loss") is not None]
    last: dict[str, Any] = evaluated[-1] if evaluated else {}
    summary = summary or {}
    acc = summary.get("accuracy", last.get("accuracy"))
    loss = summary.get("loss", last.get("loss"))
    moved = sum((r.get("bytes_up") or 0) + (r.get("bytes_down") or 0) for r in rows)
    return (f"rounds {summary.get('rounds', done[-1]['round'] if done else 0)}  stop "
            f"{summary.get('stop_reason', 'unfinished')}  accuracy {_fmt(acc) or 'n/a'}  loss {_fmt(loss) or 'n/a'}  "
            f"moved {human_bytes(moved)}")
