"""AirbenchNet: the fast-training CIFAR-10 network of the airbench line of work (Keller Jordan's airbench94,
after the DAWNBench ResNet-9 / hlb-cifar10 lineage), re-implemented here. Imports only torch.

    uint8 image, normalized -> [N, 3, 32, 32]
    whiten: 2x2 conv, 3 -> 24 channels, no padding, weights fixed to a patch-whitening transform of the
            training images (set by init_whitening; only its bias trains, for the first epochs) -> GELU
                                                                                    -> [N, 24, 31, 31]
    group(24 -> 64):   conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU    -> [N, 64, 15, 15]
    group(64 -> 256):                 (same)                                         -> [N, 256, 7, 7]
    group(256 -> 256):                (same)                                         -> [N, 256, 3, 3]
    maxpool 3 -> flatten -> linear 256 -> C (no bias) -> x 1/9                       -> logits [N, C]

About 1.97M parameters and 118M multiply-adds per image (width 64/256/256). BatchNorm layers have a fixed
scale of 1 (only the shift trains) and momentum 0.4; every 3x3 conv starts as an identity (Dirac) on its
first input channels, an implicit residual path that lets this plain network train in a few epochs.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

WHITEN_KERNEL = 2
# 2 x the 12 dimensions of a 2x2x3 patch: each whitened direction and its negation, so that GELU keeps both signs.
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL**2


class BatchNormShiftOnly(nn.BatchNorm2d):
    """BatchNorm whose scale is fixed at 1 (kept in the state dict, never trained)."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class DiracConv(nn.Conv2d):
    """3x3 conv, no bias, 'same' padding, initialized as the identity on its first in_channels outputs."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, kernel_size=3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, bn_momentum: float):
        super().__init__()
        self.conv1 = DiracConv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNormShiftOnly(c_out, bn_momentum)
        self.conv2 = DiracConv(c_out, c_out)
        self.norm2 = BatchNormShiftOnly(c_out, bn_momentum)
        self.activ = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """Input: float [N, 3, 32, 32], already normalized. Output: logits [N, num_classes]."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (64, 256, 256), bn_momentum: float = 0.4,
                 logit_scale: float = 1 / 9):
        super().__init__()
        self.whiten = nn.Conv2d(3, WHITEN_WIDTH, kernel_size=WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.activ = nn.GELU()
        w1, w2, w3 = widths
        self.layers = nn.Sequential(ConvGroup(WHITEN_WIDTH, w1, bn_momentum), ConvGroup(w1, w2, bn_momentum),
                                    ConvGroup(w2, w3, bn_momentum))
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(w3, num_classes, bias=False)
        self.logit_scale = logit_scale

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features [N, 256] the head reads: what the exported out-of-distribution score measures."""
        x = self.layers(self.activ(self.whiten(x)))  # [N, 256, 3, 3]
        return self.pool(x).flatten(1)  # [N, 256, 1, 1] -> [N, 256]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x)) * self.logit_scale

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to whiten 2x2 patches of `images` (normalized float [N, 3, 32, 32], a few thousand).

        The covariance of all patches is eigendecomposed; each filter projects a patch onto one eigenvector,
        divided by the square root of its eigenvalue, and the negated filters follow.
        """
        k = WHITEN_KERNEL
        x = images.float()
        patches = x.unfold(2, k, 1).unfold(3, k, 1)  # [N, 3, 31, 31, k, k]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)  # [N*31*31, 12]
        cov = patches.T @ patches / patches.shape[0]  # [12, 12]
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # largest first, rows
        filters = (eigenvectors / torch.sqrt(eigenvalues + eps)[:, None]).reshape(-1, 3, k, k)  # [12, 3, k, k]
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def whitening_bias(self) -> nn.Parameter:
        """The stem's bias: it trains for the first epochs of a run only (its weights never do)."""
        return self.whiten.bias

    def bias_parameters(self) -> list[nn.Parameter]:
        """The BatchNorm shifts, which the recipe trains with a larger learning rate."""
        # Any BatchNorm, not only BatchNormShiftOnly: under torchrun --sync-bn they are SyncBatchNorm by then
        # (which keeps the same parameter objects).
        return [m.bias for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
