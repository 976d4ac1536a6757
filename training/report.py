"""What a run leaves for people: history.json, curves, confusion matrix, results.md."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from contract import confusion as confusion_figure  # noqa: E402
from contract.atomic import atomic_write  # noqa: E402

from .io import atomic_write_json, atomic_write_text  # noqa: E402


def write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_json(out_dir / "history.json", history)


def _save_figure(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_curves(out_dir: Path, history: list[dict[str, Any]]) -> None:
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    validated = [h for h in history if h["val_acc"] is not None]  # every val_every epochs and the last
    axes[0].plot([h["epoch"] for h in validated], [h["val_loss"] for h in validated], "o-", label="validation")
    axes[0].set_title("Loss")
    axes[1].plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    axes[1].plot([h["epoch"] for h in validated], [100 * h["val_acc"] for h in validated], "o-", label="validation")
    axes[1].set_title("Accuracy (%)")
    axes[2].plot(epochs, [h["lr"] for h in history], "o-")
    axes[2].set_title("Learning rate (at epoch start)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    _save_figure(fig, out_dir / "training_curves.png")


def plot_confusion(out_dir: Path, confusion: torch.Tensor, classes: list[str], title: str) -> None:
    confusion_figure.plot_confusion(out_dir / "confusion_matrix.png", confusion.tolist(), classes, title)


def per_class_accuracy(confusion: torch.Tensor, classes: list[str]) -> dict[str, float]:
    return {name: acc or 0.0 for name, acc in confusion_figure.per_class_accuracy(confusion.tolist(), classes).items()}


def images_per_second(history: list[dict[str, Any]]) -> float:
    """Training images/s over a whole run (validation excluded), from history.json's epochs."""
    return sum(h["samples"] for h in history) / sum(h["seconds"] for h in history)


def tta_name(summary: dict[str, Any]) -> str:
    if summary.get("tta_translate"):
        return f", flip + {summary['tta_translate']}-pixel translate TTA"
    return ", flip TTA" if summary.get("tta_flip") else ""


def write_results(out_dir: Path, summary: dict[str, Any], per_class: dict[str, float]) -> None:
    """results.md: the design report's "Results and Analysis" fields, filled in."""
    s = summary
    batch = f"batch size {s['batch_size']}"
    if s.get("processes", 1) > 1:
        batch += f" per process x {s['processes']} processes (global batch {s['batch_size'] * s['processes']})"
    lines = [
        "# Training results",
        "",
        f"- **Device**: {s['device']}; precision {s['precision']}; {batch}",
        f"- **Network**: {s.get('model', 'simplecnn')}; **recipe**: {s['recipe']} ({s['epochs_run']} epochs)",
        f"- **Training Time**: {s['train_seconds'] / 60:.2f} minutes ({s['train_seconds']:.1f} s, "
        "training and per-epoch validation)",
        f"- **Peak Memory Usage**: {s['peak_rss_mib'] / 1024:.2f} GB resident"
        + (" (rank 0's process)" if s.get("processes", 1) > 1 else "")
        + (f", {s['peak_gpu_mib'] / 1024:.2f} GB GPU" if "peak_gpu_mib" in s else ""),
        "",
        "## Model performance",
        "",
        f"- **Final Training Accuracy**: {100 * s['final_train_acc']:.2f}%",
        f"- **Final Validation Accuracy**: {100 * s['final_val_acc']:.2f}%",
        (f"- **Best Validation Accuracy**: {100 * s['best_val_acc']:.2f}% (epoch {s['best_epoch']})"
         if s.get("keep", "best") == "best" else
         f"- **Shipped weights**: the final epoch's ({s['best_epoch']}), chosen without looking at validation; "
         "validation figures above are without TTA"),
        f"- **Final Training Loss**: {s['final_train_loss']:.4f}",
        f"- **Final Validation Loss**: {s['final_val_loss']:.4f}",
        f"- **Test Accuracy of best.pt**: {100 * s['test_acc']:.2f}% "
        f"(fp32{tta_name(s)}, {s['test_images']} test images)",
        f"- Validation set: {s['val_source']}",
        "",
        "## Per-class test accuracy (best.pt)",
        "",
        "| class | accuracy |",
        "|---|---|",
        *[f"| {name} | {100 * acc:.1f}% |" for name, acc in per_class.items()],
        "",
        "Curves: `training_curves.png`; confusion matrix: `confusion_matrix.png`; per epoch: `history.json`.",
        "",
    ]
    atomic_write_text(out_dir / "results.md", "\n".join(lines))


def plot_sweep(path: Path, lrs: list[float], batch_sizes: list[int], cells: list[dict[str, Any]]) -> None:
    """Best validation accuracy per (lr, batch size) as a heatmap, and every cell's validation curve."""
    by_key = {(c["lr"], c["batch_size"]): c for c in cells}
    grid = torch.full((len(lrs), len(batch_sizes)), float("nan"))
    fig, axes = plt.subplots(1, 2, figsize=(max(11.0, 4 + 1.6 * len(batch_sizes) + 6), 4.5 + 0.3 * len(lrs)))
    ax = axes[0]
    for i, lr in enumerate(lrs):
        for j, bs in enumerate(batch_sizes):
            cell = by_key.get((lr, bs))
            if cell is None:
                ax.text(j, i, "not run", ha="center", va="center", fontsize=8, color="gray")
                continue
            grid[i, j] = 100 * cell["best_val_acc"]
    im = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto")
    for (i, j), value in ((ij, grid[ij].item()) for ij in np.ndindex(*grid.shape)):
        if not math.isnan(value):
            cell = by_key[(lrs[i], batch_sizes[j])]
            dark = im.norm(value) < 0.5  # viridis is dark at the low end
            ax.text(j, i, f"val {value:.1f}%\ntest {100 * cell['test_acc']:.1f}%", ha="center", va="center",
                    fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(batch_sizes)), [str(b) for b in batch_sizes])
    ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_xlabel("batch size")
    ax.set_ylabel("learning rate")
    ax.set_title("Best validation accuracy (%)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[1]
    for cell in cells:
        points = [(e, a) for e, a in enumerate(cell["val_acc_curve"], 1) if a is not None]
        ax.plot([e for e, _ in points], [100 * a for _, a in points], "o-",
                label=f"lr={cell['lr']:g} bs={cell['batch_size']}")
    ax.set_title("Validation accuracy per epoch (%)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if cells:
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)
