"""The confusion-matrix figure, drawn the same way for training's test run and for `cifar10-classify --eval`.

matplotlib is imported on first use: the service imports this package and never draws.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .atomic import atomic_write


def per_class_accuracy(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> dict[str, float | None]:
    """Recall per class from a [true, predicted] count matrix; None for a class with no images."""
    rows = zip(classes, confusion, strict=True)
    return {name: (row[i] / sum(row) if sum(row) else None) for i, (name, row) in enumerate(rows)}


def plot_confusion(path: str | Path, confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str,
                   xlabel: str = "predicted", ylabel: str = "true") -> Path:
    """Row-normalized confusion matrix (rows: true class) with the counts written in, saved as a PNG.

    confusion is any [C, C] count matrix (nested lists, numpy or torch); the file appears atomically.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display where training and evaluation run
    import matplotlib.pyplot as plt

    counts = [[int(v) for v in row] for row in confusion]
    rates = [[v / max(1, sum(row)) for v in row] for row in counts]
    size = max(6.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if len(classes) <= 20:
        for i, row in enumerate(counts):
            for j, v in enumerate(row):
                ax.text(j, i, v, ha="center", va="center", fontsize=7, color="white" if rates[i][j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path
