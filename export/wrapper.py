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

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(image)
        logits = self.views(x, self.model(x))
        return logits, torch.softmax(logits / self.temperature, dim=1)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> the network's input, float [N, 3, H, W]."""
        if image.dtype != torch.uint8:
            raise ValueError("image must be uint8 [N, H, W, 3]")
        if image.dim() != 4 or image.shape[1] != self.image_size or image.shape[2] != self.image_size \
                or image.shape[3] != 3:
            raise ValueError("image must have shape [N, 32, 32, 3] (RGB, HWC)")
        return image.permute(0, 3, 1, 2).float() * self.scale - self.shift  # [N, H, W, 3] -> [N, 3, H, W]

    def views(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The test-time-augmented logits, given the plain view's (`logits`, the network on x)."""
        if self.tta_flip:
            logits = (logits + self.model(x.flip(3))) * 0.5
        if self.tta_translate > 0:
            # Views shifted up-left and down-right, edges mirrored: training.engine.tta_logits's weights.
            p, h, w = self.tta_translate, x.shape[2], x.shape[3]
            padded = F.pad(x, [p, p, p, p], mode="reflect")  # [N, 3, H + 2p, W + 2p]
            up_left = padded[:, :, 0:h, 0:w]
            down_right = padded[:, :, 2 * p:2 * p + h, 2 * p:2 * p + w]
            logits = 0.5 * logits + 0.25 * (self._mirrored(up_left) + self._mirrored(down_right))
        return logits

    def _mirrored(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.tta_flip:
            logits = (logits + self.model(x.flip(3))) * 0.5
        return logits


def classifier_from_checkpoint(ckpt: Checkpoint, path: Any = "checkpoint") -> ImageClassifier:
    """The eval-mode ImageClassifier for a training checkpoint (weights, normalization, TTA flag)."""
    norm = ckpt.normalization
    return ImageClassifier(build_model(ckpt, path).eval(), list(norm.mean), list(norm.std), norm.input_size,
                           tta_flip=bool(ckpt.config.get("tta_flip", False)),
                           tta_translate=int(ckpt.config.get("tta_translate", 0))).eval()
