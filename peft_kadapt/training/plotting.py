"""matplotlib without a display, for the PNGs the commands write."""

from __future__ import annotations

import os
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, rect: tuple[float, float, float, float] | None = None) -> None:
    """Save as PNG under a temporary name, then rename: a reader never sees half a picture."""
    path = Path(path)
    fig.tight_layout(rect=rect)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    pyplot().close(fig)


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
