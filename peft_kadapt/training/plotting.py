"""matplotlib without a display, for the PNGs the commands write."""

from __future__ import annotations

import os
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, rect: tuple[float, float, float, float] | None = None):
    """Save as PNG under a temporary name, then rename: a reader never sees half a picture. The saved area is the
    figure's tight box, so a legend or label that reaches past the figure's edge is in the picture, not cut off;
    returns that area (inches) for the tests that check it."""
    path = Path(path)
    fig.tight_layout(rect=rect)
    area = saved_area(fig)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches=area)
    os.replace(tmp, path)
    pyplot().close(fig)
    return area


def saved_area(fig):
    """The box (inches) around everything drawn on `fig`, with a small margin."""
    fig.canvas.draw()  # place what is placed at draw time (a legend at loc="best") before measuring
    renderer = fig.canvas.get_renderer()
    return fig.get_tightbbox(renderer).padded(0.1)


def text_outside(fig, area) -> list[str]:
    """The titles, axis labels and legend entries of `fig` that reach outside `area` (inches)."""
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
        if legend is not None:
            texts += [*legend.get_texts(), legend.get_title()]
    outside = []
    for text in texts:
        if not text.get_visible() or not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer).transformed(fig.dpi_scale_trans.inverted())
        if box.x0 < area.x0 - 1e-6 or box.x1 > area.x1 + 1e-6 or box.y0 < area.y0 - 1e-6 or box.y1 > area.y1 + 1e-6:
            outside.append(text.get_text())
    return outside


def plot_training_curve(log_history: list[dict], path: Path, title: str = "") -> None:
    """Training loss and validation accuracy per epoch, from `trainer.state.log_history`."""
    plt = pyplot()
    train = [(e["epoch"], e["loss"]) for e in log_history if "loss" in e]
    val = [(e["epoch"], e["eval_accuracy"]) for e in log_history if "eval_accuracy" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="training loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), label="validation accuracy", color="tab:orange", marker="o")
        ax2.set_ylabel("validation accuracy")
        ax2.set_ylim(0, 1)
    ax.set_title(title)
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    save(fig, path, rect=(0, 0.08, 1, 1))
