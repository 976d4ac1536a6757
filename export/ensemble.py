"""Ensembles as one graph: `python -m export --checkpoint A/best.pt --checkpoint B/best.pt ...`.

    member i:   uint8 [N, H, W, 3] -> its own normalization, network and test-time views, its own temperature T_i
                (fitted as for a single export) -> probabilities p_i [N, C], ood_score s_i [N]
    ensemble:   logits        = log(mean_i p_i)          [N, C]: log of the members' mean calibrated probability
                probabilities = softmax(logits / T)      one temperature, fitted on that mean
                ood_score     = mean_i s_i               each s_i already standardized (export/ood.py); one threshold
                heatmap       = mean_i heatmap_i / its max   each member's own method (Grad-CAM, LayerCAM) for the
                                                         ensemble's answer, on the input grid

Averaging calibrated probabilities (not logits) lets members of different architectures and logit scales count
equally, as deep ensembles do (Lakshminarayanan et al., 2017); the mean of calibrated members is under-confident
(averaging spreads the mass), which the ensemble's own temperature takes back.

Why the heatmaps are averaged: the ensemble's answer is the mean of its members' probabilities, and each member's
map says where that member found its evidence for the answer; their mean weighs each member as the answer does.
A Grad-CAM of the ensemble as a whole has no single layer to read (members differ in architecture and grid).
"""
from __future__ import annotations

import hashlib
from typing import Any, List, Tuple

import torch
from torch import nn


class EnsembleClassifier(nn.Module):
    """uint8 [N, H, W, 3] -> (logits [N, C], probabilities [N, C], ood_score [N]); members: export.ood.ScoredClassifier,
    each with its temperature and OOD score fitted."""

    def __init__(self, members: List[nn.Module], temperature: float = 1.0):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.image_size = int(members[0].image_size)
        self.register_buffer("temperature", torch.tensor([temperature], dtype=torch.float32))

    def mean_probs(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the members' mean probabilities [N, C], their mean OOD score [N])."""
        probs = torch.zeros(0)
        ood = torch.zeros(0)
        first = True
        for member in self.members:
            _, p, s = member(image)
            if first:
                probs, ood, first = p, s, False
            else:
                probs, ood = probs + p, ood + s
        n = float(len(self.members))
        return probs / n, ood / n

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        probs, ood = self.mean_probs(image)
        logits = torch.log(probs.clamp_min(1e-30))
        return logits, torch.softmax(logits / self.temperature, dim=1), ood


class MemberCam(nn.Module):
    """One member's explanation of a given class: uint8 image, target [N] -> heatmap [N, H, W] in [0, 1]."""

    def __init__(self, member: nn.Module, cam: nn.Module):
        super().__init__()
        self.member = member  # the same module the ensemble holds: no second copy of its weights in the graph
        self.cam = cam

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        heat, _ = self.cam(self.member.normalize(image), target)
        return heat


class EnsembleExplainWrapper(nn.Module):
    """uint8 [N, H, W, 3], target int64 [N] (-1: the ensemble's top class) -> (heatmap [N, H, W] in [0, 1],
    the ensemble's probabilities, its ood_score): the members' heatmaps averaged, rescaled to a maximum of 1."""

    def __init__(self, ensemble: EnsembleClassifier, cams: List[nn.Module]):
        super().__init__()
        self.classifier = ensemble
        self.cams = nn.ModuleList([MemberCam(m, c) for m, c in zip(ensemble.members, cams, strict=True)])

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, probs, ood_score = self.classifier(image)
        chosen = torch.where(target < 0, probs.argmax(1), target)
        total = torch.zeros(0)
        first = True
        for cam in self.cams:
            heat = cam(image, chosen)
            if first:
                total, first = heat, False
            else:
                total = total + heat
        return mean_heat(total / float(len(self.cams))), probs, ood_score


def mean_heat(heat: torch.Tensor) -> torch.Tensor:
    """[N, H, W] non-negative -> the same, divided by each map's maximum (zeros stay zeros)."""
    return heat / heat.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)


def reference_heat(maps: List[torch.Tensor]) -> torch.Tensor:
    """The autograd reference of the ensemble's heatmap: the members' reference maps, averaged and rescaled."""
    return mean_heat(torch.stack(maps).mean(0))


def members_digest(sha256s: List[str]) -> str:
    """One checksum naming the member set, in order: sha256 of the members' sha256 values, one per line."""
    return hashlib.sha256("\n".join(sha256s).encode()).hexdigest()


def check_members(members: List[Any]) -> None:
    """Refuse members that cannot be averaged: one sentence (ValueError). members: contract.schemas.Checkpoint."""
    first = members[0]
    for m in members[1:]:
        if list(m.classes) != list(first.classes):
            raise ValueError(f"ensemble members predict different classes: {list(first.classes)} and {list(m.classes)}")
        if m.normalization.input_size != first.normalization.input_size:
            raise ValueError(f"ensemble members take different input sizes: {first.normalization.input_size} and "
                             f"{m.normalization.input_size}")

