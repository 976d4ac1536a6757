"""Temperature scaling (Guo et al., 2017): one scalar T, fitted on held-out logits by minimizing the negative
log-likelihood, so that softmax(logits / T) means what it says. T divides the logits before the softmax only:
the logits the graph returns, and so every top-1 answer, stay as they were.

Which images fit T: the training images the run held out (`--val-split N`), when the checkpoint has them; the
calibration figures (expected calibration error over 15 equal-width confidence bins, NLL, accuracy, before and
after) are then those of the whole test split. A checkpoint without a hold-out (the report's recipes validate on
the test split) gets a seeded half of the test split to fit T and the other half to report on: half as many
images, so its ECE is a noisier estimate (1.25-1.88% over four halves for the same model, docs/export.md).
The temperature changes no accuracy, so the test accuracy reported elsewhere (all 10,000 images) is untouched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

BINS = 15


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimizes the mean NLL of softmax(logits / T) (a 1-D convex problem in log T)."""
    logits, labels = logits.double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the mean over equal-width confidence bins of |accuracy - confidence|,
    weighted by each bin's share of the images."""
    confidence, predicted = probs.max(1), probs.argmax(1)
    correct = (predicted == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def figures(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, float]:
    probs = torch.softmax(logits.double() / temperature, dim=1)
    lab = labels.long()
    return {"ece": ece(probs.numpy(), lab.numpy()), "nll": float(F.nll_loss(probs.log(), lab)),
            "accuracy": float((probs.argmax(1) == lab).double().mean()),
            "mean_confidence": float(probs.max(1).values.mean())}


def halves(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, report indices): a seeded split of n test images in two."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: n // 2].sort().values, order[n // 2:].sort().values


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature's public record (metadata.json "calibration", the export report) and the indices of
    the test images its figures were computed on (the reliability plot draws those; they are not published)."""

    record: dict[str, Any]
    held: torch.Tensor

    @property
    def temperature(self) -> float:
        return self.record["temperature"]


def calibrate(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> Calibration:
    """Fit T on a seeded half of the test logits, report before/after on the other half."""
    fit, held = halves(len(labels), seed)
    return calibrate_on(logits[fit], labels[fit], logits, labels, held, "test images (seeded half)",
                        f"a seeded half (seed {seed}) of the test split fits T; the other half reports")


def calibrate_on(fit_logits: torch.Tensor, fit_labels: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                 held: torch.Tensor, fit_source: str, images: str) -> Calibration:
    """Fit T on (fit_logits, fit_labels), report before/after on the test logits at indices `held`. `fit_source`
    names the images T was fit on in a few words; `images` says in a sentence which images fit and which report."""
    t = fit_temperature(fit_logits, fit_labels)
    if not math.isfinite(t) or t <= 0:
        t = 1.0
    record = {"temperature": t, "method": "temperature scaling, NLL", "bins": BINS,
              "fit_images": int(len(fit_labels)), "fit_source": fit_source, "report_images": int(len(held)),
              "images": images,
              "before": figures(logits[held], labels[held], 1.0), "after": figures(logits[held], labels[held], t)}
    return Calibration(record, held)


def reliability_plot(path: Path, logits: torch.Tensor, labels: torch.Tensor, temperature: float, title: str) -> None:
    """Accuracy against confidence per bin, before and after scaling (the diagonal is perfect calibration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    for ax, t, name in ((axes[0], 1.0, "before (T = 1)"), (axes[1], temperature, f"after (T = {temperature:.3f})")):
        probs = torch.softmax(logits.double() / t, dim=1).numpy()
        conf, correct = probs.max(1), probs.argmax(1) == labels.numpy()
        edges = np.linspace(0, 1, BINS + 1)
        mids, accs, counts = [], [], []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            inside = (conf > lo) & (conf <= hi)
            if inside.any():
                mids.append((lo + hi) / 2)
                accs.append(correct[inside].mean())
                counts.append(inside.sum())
        ax.bar(mids, accs, width=1 / BINS, edgecolor="black", alpha=0.75, label="accuracy in bin")
        ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
        e = ece(probs, labels.numpy())
        ax.set(title=f"{name}: ECE {100 * e:.2f}%", xlabel="confidence", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
