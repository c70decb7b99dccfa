"""Plots and summaries: a title that names the run, one colour per series in every panel, integer rounds, every
class labelled, a note instead of an empty panel, and a humanised summary line."""

import numpy as np

from fedloop import report

ROWS = [{"round": r, "train_loss": 1.0 / r, "loss": 1.2 / r, "accuracy": 0.5 + r / 10, "fed_loss": 1.1 / r,
         "fed_accuracy": 0.4 + r / 10, "bytes_up": 1500, "bytes_down": 1500} for r in (1, 2, 3)]


def captured(monkeypatch):
    figures = []
    monkeypatch.setattr(report, "_save_png", lambda fig, path: figures.append(fig))
    return figures


def test_curves_name_the_run_keep_colours_and_count_rounds_in_integers(monkeypatch, tmp_path):
    figures = captured(monkeypatch)
    report.plot_curves(ROWS, tmp_path / "c.png", report.run_title({"dataset": "digits", "strategy": "fedadam",
                                                                   "model": "mlp"}))
    fig = figures[0]
    assert fig._suptitle.get_text() == "digits: fedadam, model mlp"
    loss, acc, moved = fig.axes
    colour = {line.get_label(): line.get_color() for ax in (loss, acc) for line in ax.lines}
    assert colour["test loss"] == colour["test accuracy"] and colour["federated test loss"] == \
        colour["federated accuracy (mean)"]
    for ax in (loss, acc, moved):
        assert all(float(t).is_integer() for t in ax.get_xticks())
    up = next(line for line in moved.lines if line.get_label().startswith("uploaded"))
    assert list(up.get_ydata()) == [0.0015, 0.003, 0.0045]  # MB moved so far: 1,500 bytes a round


def test_the_bytes_panel_says_when_nothing_was_counted(monkeypatch, tmp_path):
    figures = captured(monkeypatch)
    report.plot_curves([{"round": 1, "train_loss": 0.5}], tmp_path / "c.png")
    moved = figures[0].axes[2]
    assert not moved.lines and "no bytes recorded" in moved.texts[0].get_text()


def test_a_panel_without_data_says_so(monkeypatch, tmp_path):
    figures = captured(monkeypatch)
    report.plot_curves([{"round": 1, "train_loss": 0.5}], tmp_path / "c.png")
    acc = figures[0].axes[1]
    assert not acc.lines and "no accuracy recorded" in acc.texts[0].get_text()


def test_the_partition_heatmap_labels_every_class(monkeypatch, tmp_path):
    figures = captured(monkeypatch)
    report.plot_partition(np.arange(30 * 12).reshape(30, 12), tmp_path / "p.png", "digits")
    assert list(figures[0].axes[0].get_yticks()) == list(range(12))


def test_the_summary_line_humanises_bytes():
    line = report.summary_line(ROWS, {"rounds": 3, "stop_reason": "rounds", "accuracy": 0.8, "loss": 0.4})
    assert line == "rounds 3  stop rounds  accuracy 0.8000  loss 0.4000  moved 9.0 KB"
    assert report.summary_line(ROWS, None).startswith("rounds 3  stop unfinished  accuracy 0.8000")
