"""ResidualNet: the residual network of the airbench line (airbench96's design: residual conv groups on airbench94's
whitened stem), at a width that trains in minutes on a 2-core CPU. Imports only torch.

    uint8 image, normalized -> [N, 3, 32, 32]
    whiten: 2x2 conv, 3 -> 24 channels, fixed patch whitening (as AirbenchNet) -> GELU     -> [N, 24, 31, 31]
    group(24 -> w1):   conv3x3 -> maxpool 2 -> BN -> GELU = x0                            -> [N, w1, 15, 15]
                       x0 + [conv3x3 -> BN -> GELU -> conv3x3 -> BN] -> GELU   (residual branch)
    group(w1 -> w2):                 (same)                                               -> [N, w2, 7, 7]
    group(w2 -> w3):                 (same)                                               -> [N, w3, 3, 3]
    maxpool 3 -> flatten -> linear w3 -> C (no bias) -> x 1/9                             -> logits [N, C]

It keeps AirbenchNet's attributes (whiten, activ, layers, pool, head, logit_scale), so that the whitening
initialization, the recipe's parameter groups, the explanation graph (Grad-CAM of the last group) and the exported
out-of-distribution score treat it as they treat airbench.

Two optional regularizers of the design report (§12.1), both identity in eval mode (the exported graph is the same):
  stochastic depth (Huang et al., 2016): in training, each image skips a group's residual branch with probability
      drop_path * (group index) / (groups), the linear decay rule; kept branches are scaled by 1 / (1 - p).
  DropBlock (Ghiasi et al., 2018): in training, square blocks of dropblock_size pixels of the first two groups'
      outputs (15x15, 7x7; the last group's 3x3 map is a single block) are zeroed so that about `dropblock` of the
      positions fall, and the rest rescaled.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .airbench import AirbenchNet, BatchNormShiftOnly, ConvGroup, DiracConv


def drop_path(branch: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the whole branch of each image with probability p, scale the rest by 1 / (1 - p)."""
    if not training or p == 0.0:
        return branch
    keep = torch.rand(branch.shape[0], 1, 1, 1, device=branch.device) >= p  # [N, 1, 1, 1]
    return branch * keep.to(branch.dtype) / (1.0 - p)


def drop_block(x: torch.Tensor, p: float, size: int, training: bool) -> torch.Tensor:
    """DropBlock on [N, K, H, W]: block centres drawn so that about p of the positions are dropped, each centre
    dropping the size x size square around it (per image and channel), survivors rescaled to keep the mean."""
    if not training or p == 0.0:
        return x
    n, k, h, w = x.shape
    size = min(size, h, w)
    # The paper's gamma: a block's top-left corner only where the whole block fits, size^2 positions per block.
    gamma = p / size**2 * (h * w) / ((h - size + 1) * (w - size + 1))
    corners = (torch.rand(n, k, h - size + 1, w - size + 1, device=x.device) < gamma).to(x.dtype)
    # Position (i, j) falls when a corner lies in the size x size square above and left of it: [N, K, H, W].
    dropped = F.max_pool2d(F.pad(corners, (size - 1, size - 1, size - 1, size - 1)), size, stride=1)
    keep = 1.0 - dropped
    return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class ResidualGroup(ConvGroup):
    """airbench's group (conv1, pool, norm1, conv2, norm2) with a third conv and BatchNorm closing a residual branch."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float, drop_path: float = 0.0):
        super().__init__(c_in, c_out, bn_momentum)
        self.conv3 = DiracConv(c_out, c_out)
        self.norm3 = BatchNormShiftOnly(c_out, bn_momentum)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.activ(self.norm1(self.pool(self.conv1(x))))
        branch = self.norm3(self.conv3(self.activ(self.norm2(self.conv2(x0)))))
        return self.activ(x0 + drop_path(branch, self.drop_path, self.training))


DEFAULT_WIDTHS = (64, 256, 256)  # airbench94's


class ResidualNet(AirbenchNet):
    """Input: float [N, 3, 32, 32], already normalized. Output: logits [N, num_classes]."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = DEFAULT_WIDTHS, bn_momentum: float = 0.4,
                 logit_scale: float = 1 / 9, drop_path: float = 0.0, dropblock: float = 0.0, dropblock_size: int = 3):
        super().__init__(num_classes, widths, bn_momentum, logit_scale)
        w1, w2, w3 = widths
        n = 3
        self.layers = nn.Sequential(*(
            ResidualGroup(c_in, c_out, bn_momentum, drop_path * (i + 1) / n)
            for i, (c_in, c_out) in enumerate(zip((self.whiten.out_channels, w1, w2), (w1, w2, w3), strict=True))))
        self.dropblock, self.dropblock_size = dropblock, dropblock_size

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.whiten(x))
        for i, group in enumerate(self.layers):
            x = group(x)
            if i < 2:  # the last group's 3x3 map is one block: dropping it would drop the image
                x = drop_block(x, self.dropblock, self.dropblock_size, self.training)
        return x  # [N, w3, 3, 3]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.trunk(x)).flatten(1)  # [N, w3, 1, 1] -> [N, w3]
