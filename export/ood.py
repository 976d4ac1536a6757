"""The out-of-distribution score the exported graphs carry: "is this one of my ten classes at all?"

    ood_score = mean of K+1 standardized terms, one per convolution block and one for the confidence:
        block k:    min over classes c of the Mahalanobis distance of the block's channel statistics
                    (mean and standard deviation of each channel over the image, [2 * channels]) to class c's
                    mean, under one covariance shared by the classes (Lee et al., 2018, on pooled statistics)
        confidence: -max softmax (the served, calibrated probability of the answer)
    each term standardized (minus its mean, over its standard deviation) on held-out in-distribution images.

Higher is stranger. `in_distribution` is ood_score <= threshold, the threshold being the score's 96th percentile
on those held-out images. The test images score a little higher than held-out training images (5.4% of the test
split above the 95th percentile, 2026-12-05, SimpleCNN fast): the 96th keeps the false-rejection rate on test
images under the 5% users are promised (measured per export: metadata.json "ood").

Why this score (docs/experiments.md, "Out-of-distribution signal"; benchmarks/ood.py): on a SimpleCNN `fast`
model, 2026-12-05, 2,000 test images against 2,000 each of four generated far-OOD sets, AUROC of max softmax
0.83-0.86, energy 0.66-0.86, Mahalanobis / KNN / ViM on the penultimate features 0.74-0.94, and Mahalanobis on
the blocks' channel statistics 0.99-1.00 on every far set. The confidence term adds what the statistics miss
on near-OOD images (CIFAR-10 patches rearranged): 0.63 without it, 0.75 with it.

The class means and the covariance are fitted on a seeded sample of training images; the standardization and the
threshold on the run's --val-split hold-out when it has one, else on a seeded half of the test split (the other
half reports), as the temperature is (export/calibration.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Tuple

import torch
from torch import nn

from .wrapper import ImageClassifier, images_per_call

TPR = 0.96  # the share of held-out in-distribution images the threshold accepts (see the module doc)
FIT_IMAGES = 10000  # training images the class means and covariance are fitted on
RIDGE = 1e-4  # added to the covariance's diagonal, times its mean diagonal: dead channels make it singular


class SimpleCNNTrunk(nn.Module):
    """SimpleCNN, run by its own modules: normalized x -> (logits, [each convolution block's output])."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        blocks: List[torch.Tensor] = []
        for block in self.model.features:
            x = block(x)
            blocks.append(x)
        return self.model.classifier(x), blocks


class AirbenchTrunk(nn.Module):
    """airbench's network, run by its own modules: normalized x -> (logits, [each ConvGroup's output])."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        m = self.model
        x = m.activ(m.whiten(x))
        blocks: List[torch.Tensor] = []
        for group in m.layers:
            x = group(x)
            blocks.append(x)
        return m.head(m.pool(x).flatten(1)) * m.logit_scale, blocks


# The residual network keeps airbench's attributes (training/models/residual.py).
TRUNKS = {"simplecnn": SimpleCNNTrunk, "airbench": AirbenchTrunk, "residual": AirbenchTrunk}


def channel_stats(block: torch.Tensor) -> torch.Tensor:
    """[N, K, H, W] -> [N, 2K]: each channel's mean and standard deviation over the image."""
    mean = block.mean(dim=(2, 3), keepdim=True)  # [N, K, 1, 1]
    std = (block - mean).pow(2).mean(dim=(2, 3)).sqrt()  # [N, K]
    return torch.cat([mean.flatten(1), std], dim=1)


class Gaussian(nn.Module):
    """One block's term: the squared Mahalanobis distance to the nearest class mean, standardized."""

    def __init__(self, whiten: torch.Tensor, centers: torch.Tensor, loc: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.register_buffer("whiten", whiten.float())  # [D, D]: L with L L^T = the covariance's inverse
        self.register_buffer("centers", centers.float())  # [C, D]: class means times L
        self.register_buffer("loc", torch.tensor(loc, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def distance(self, stats: torch.Tensor) -> torch.Tensor:
        z = stats @ self.whiten  # [N, D]
        # [N, 1, D] - [1, C, D] -> [N, C, D] -> [N, C] -> [N]
        return (z.unsqueeze(1) - self.centers.unsqueeze(0)).pow(2).sum(2).min(1).values

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        return (self.distance(stats) - self.loc) / self.scale


class OODScore(nn.Module):
    """(the blocks' outputs, the served probabilities) -> ood_score [N]."""

    def __init__(self, gaussians: List[Gaussian], loc: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.gaussians = nn.ModuleList(gaussians)
        self.register_buffer("loc", torch.tensor(loc, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def confidence_term(self, probs: torch.Tensor) -> torch.Tensor:
        return (-probs.max(dim=1).values - self.loc) / self.scale

    def forward(self, blocks: List[torch.Tensor], probs: torch.Tensor) -> torch.Tensor:
        return self.from_stats([channel_stats(b) for b in blocks], probs)

    def from_stats(self, stats: List[torch.Tensor], probs: torch.Tensor) -> torch.Tensor:
        total = self.confidence_term(probs)
        for i, gaussian in enumerate(self.gaussians):
            total = total + gaussian(stats[i])
        return total / (len(self.gaussians) + 1)


class ScoredClassifier(ImageClassifier):
    """The deployable graph with the OOD score: uint8 [N, H, W, 3] -> (logits [N, C], probabilities [N, C],
    ood_score [N]). The test-time views run once, as one batch through the trunk, for both the logits and the plain
    view's statistics."""

    def __init__(self, base: ImageClassifier, trunk: nn.Module, score: OODScore):
        mean = (base.shift / base.scale / 255.0).flatten().tolist()
        std = (1.0 / (base.scale * 255.0)).flatten().tolist()
        super().__init__(base.model, mean, std, base.image_size, base.tta_flip, base.tta_translate,
                         float(base.temperature))
        self.load_state_dict(base.state_dict(), strict=False)  # the exact normalization buffers, the temperature
        self.trunk = trunk
        self.score = score

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x = self.normalize(image)
        every, blocks = self.trunk(self.tta_batch(x))
        logits = self.combine(every)
        probs = torch.softmax(logits / self.temperature, dim=1)
        n = x.shape[0]  # the statistics are the plain view's: the first N of each block's [V * N, K, H, W]
        return logits, probs, self.score([b[:n] for b in blocks], probs)


@torch.no_grad()
def _run(trunk: nn.Module, classifier: ImageClassifier, images: torch.Tensor,
         with_probs: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(per block: channel statistics [N, D] in float64, served probabilities [N, C]) of uint8 images. Without
    `with_probs` the test-time views (6x the batch for airbench) are skipped and the probabilities are empty."""
    stats: list[list[torch.Tensor]] = []
    probs = []
    batch = images_per_call(classifier) if with_probs else 500
    for i in range(0, len(images), batch):
        x = classifier.normalize(images[i:i + batch])
        n = x.shape[0]
        every, blocks = trunk(classifier.tta_batch(x) if with_probs else x)
        stats.append([channel_stats(b[:n]).double() for b in blocks])
        if with_probs:
            probs.append(torch.softmax(classifier.combine(every) / classifier.temperature, dim=1))
    return [torch.cat(parts) for parts in zip(*stats, strict=True)], torch.cat(probs) if probs else torch.empty(0)


def fit_gaussian(stats: torch.Tensor, labels: torch.Tensor, classes: int) -> Gaussian:
    """Class means and one shared covariance (float64), whitened by the Cholesky factor of its inverse."""
    counts = torch.bincount(labels, minlength=classes)
    if (counts < 2).any():
        missing = [c for c in range(classes) if counts[c] < 2]
        raise ValueError(f"the OOD score needs at least 2 training images of every class; class(es) {missing} have "
                         "fewer")
    means = torch.stack([stats[labels == c].mean(0) for c in range(classes)])  # [C, D]
    centered = stats - means[labels]
    cov = centered.T @ centered / len(stats)  # [D, D]
    cov += torch.eye(len(cov), dtype=cov.dtype) * RIDGE * cov.diagonal().mean().clamp_min(1e-12)
    whiten = torch.linalg.cholesky(torch.linalg.inv(cov))  # [D, D], lower: x^T inv(cov) x = |x L|^2
    return Gaussian(whiten, means @ whiten)


def _standardize(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std().clamp_min(1e-12))


@dataclass(frozen=True)
class Fitted:
    """The scored graph and the public record (metadata.json "ood")."""

    classifier: ScoredClassifier
    record: dict[str, Any]


def fit(arch: str, classifier: ImageClassifier, train_images: torch.Tensor, train_labels: torch.Tensor,
        held_images: torch.Tensor, report_images: torch.Tensor, held_source: str, classes: int) -> Fitted:
    """Fit the score on `train_images` (means, covariance), standardize it and set the threshold on `held_images`
    (in-distribution images the run did not train on), and measure the false rejections on `report_images`."""
    trunk = TRUNKS[arch](classifier.model).eval()
    stats, _ = _run(trunk, classifier, train_images, with_probs=False)
    gaussians = [fit_gaussian(s, train_labels, classes) for s in stats]
    held_stats, held_probs = _run(trunk, classifier, held_images)
    for gaussian, s in zip(gaussians, held_stats, strict=True):
        loc, scale = _standardize(gaussian.distance(s.float()).double())
        gaussian.loc.fill_(loc)
        gaussian.scale.fill_(scale)
    confidence = -held_probs.max(1).values.double()
    score = OODScore(gaussians, *_standardize(confidence))
    scored = ScoredClassifier(classifier, trunk, score).eval()
    with torch.no_grad():
        held = score.from_stats([s.float() for s in held_stats], held_probs)  # as the graph computes it
        threshold = float(torch.quantile(held.double(), TPR))
        reported = scores(scored, report_images)
    record = {
        "score": "mean of standardized terms: per convolution block, the Mahalanobis distance of its channel "
                 "statistics (mean, std) to the nearest class mean; and -max softmax",
        "higher_means": "less like the training images",
        "threshold": threshold, "true_positive_rate": TPR,
        "blocks": len(gaussians), "statistics_dims": [int(g.whiten.shape[0]) for g in gaussians],
        "fit_images": int(len(train_images)), "fit_source": "training images (seeded sample)",
        "threshold_images": int(len(held_images)), "threshold_source": held_source,
        "report_images": int(len(report_images)),
        "false_rejection_rate": float((reported > threshold).double().mean()),
        "method": "export/ood.py; benchmarks/ood.py measures AUROC and FPR at 95% TPR",
    }
    return Fitted(scored, record)


@torch.no_grad()
def scores(scored: ScoredClassifier, images: torch.Tensor) -> torch.Tensor:
    batch = images_per_call(scored)
    return torch.cat([scored(images[i:i + batch])[2] for i in range(0, len(images), batch)])
