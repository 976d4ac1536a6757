"""The deployable graph: decoded uint8 images in, logits and probabilities out.

Normalization (and, for recipes that use it, test-time augmentation: flips, and for airbench translations)
lives inside the graph, so a server only decodes, converts to RGB and resizes: it never re-implements them.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from contract.schemas import Checkpoint
from training.checkpoint import build_model


class ImageClassifier(nn.Module):
    """uint8 [N, H, W, 3] RGB (HWC, as decoded) -> (logits [N, C], probabilities [N, C])."""

    def __init__(self, model: nn.Module, mean: List[float], std: List[float], image_size: int = 32,
                 tta_flip: bool = False, tta_translate: int = 0, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.tta_flip = tta_flip
        self.tta_translate = tta_translate
        # Calibration (export/calibration.py): probabilities are softmax(logits / T); the logits are not scaled.
        self.register_buffer("temperature", torch.tensor([temperature], dtype=torch.float32))
        # [1, 3, 1, 1] so they broadcast over NCHW.
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(std))).view(1, 3, 1, 1))
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1))
        # [V, 1, 1]: each view's weight in tta_batch's order (plain, up-left, down-right, then their mirrors).
        # Not persistent: it follows from the two flags, which metadata.json records.
        weights = [0.5, 0.25, 0.25] if tta_translate > 0 else [1.0]
        if tta_flip:
            weights = [w / 2 for w in weights] * 2
        self.register_buffer("view_weights", torch.tensor(weights).view(-1, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(image)
        logits = self.combine(self.model(self.tta_batch(x)))
        return logits, torch.softmax(logits / self.temperature, dim=1)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> the network's input, float [N, 3, H, W]."""
        if image.dtype != torch.uint8:
            raise ValueError("image must be uint8 [N, H, W, 3]")
        if image.dim() != 4 or image.shape[1] != self.image_size or image.shape[2] != self.image_size \
                or image.shape[3] != 3:
            raise ValueError("image must have shape [N, 32, 32, 3] (RGB, HWC)")
        return image.permute(0, 3, 1, 2).float() * self.scale - self.shift  # [N, H, W, 3] -> [N, 3, H, W]

    def tta_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized [N, 3, H, W] -> its test-time views stacked along the batch, the plain view first:
        [V * N, 3, H, W]. One batch rather than one network call per view, so the exported graph holds the network
        once: called per view, the int8 quantizer gave each call its own copy of the weights (the residual
        network's int8 graph was larger than its fp32 one, 2026-12-06)."""
        views = [x]
        if self.tta_translate > 0:
            # Shifted up-left and down-right, edges mirrored (training.augment.translate_views).
            p, h, w = self.tta_translate, x.shape[2], x.shape[3]
            padded = F.pad(x, [p, p, p, p], mode="reflect")  # [N, 3, H + 2p, W + 2p]
            views.append(padded[:, :, 0:h, 0:w])
            views.append(padded[:, :, 2 * p:2 * p + h, 2 * p:2 * p + w])
        if self.tta_flip:
            views = views + [v.flip(3) for v in views]
        return torch.cat(views) if len(views) > 1 else x

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """The [V * N, C] logits of tta_batch's views -> [N, C], weighted as training.engine.tta_logits."""
        if self.view_weights.shape[0] == 1:
            return logits
        # [V * N, C] -> [V, N, C], weighted, summed over the views -> [N, C]
        every = logits.reshape(self.view_weights.shape[0], -1, logits.shape[1])
        return (every * self.view_weights).sum(0)


def images_per_call(module: nn.Module, network_inputs: int = 500) -> int:
    """How many images to give `module` (a classifier, an ensemble, an explanation graph) per call in the export's
    checks, so that its networks see about `network_inputs` inputs a call. The test-time views multiply the batch
    (6x for airbench and the residual network), and ONNX Runtime's arena keeps each session's largest batch: the
    residual network's export, given its 2,000 parity images in one call, ran out of 24 GiB (2026-12-06)."""
    views = max((int(m.view_weights.shape[0]) for m in module.modules() if isinstance(m, ImageClassifier)),
                default=1)
    return max(1, network_inputs // views)


def classifier_from_checkpoint(ckpt: Checkpoint, path: Any = "checkpoint") -> ImageClassifier:
    """The eval-mode ImageClassifier for a training checkpoint (weights, normalization, TTA flag)."""
    norm = ckpt.normalization
    return ImageClassifier(build_model(ckpt, path).eval(), list(norm.mean), list(norm.std), norm.input_size,
                           tta_flip=bool(ckpt.config.get("tta_flip", False)),
                           tta_translate=int(ckpt.config.get("tta_translate", 0))).eval()
