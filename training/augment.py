"""Whole-batch augmentation and normalization with tensor ops, on the training device.

Batches stay uint8 NHWC until normalize(), which returns a float NCHW view in channels_last
memory order (the same byte order as NHWC, so a channels_last model needs no copy).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices past either edge mirrored back inside [0, size): -1 -> 1, size -> size - 2 (no edge repeat)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator, pad_mode: str = "zeros",
            mirrored: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RandomHorizontalFlip(0.5) and RandomCrop(size, padding) per image.

    images: uint8 [B, H, W, C] -> uint8 [B, H, W, C]. Both are one gather: the crop picks the window's
    offset, the flip reverses the window's column order (a mirrored crop of the mirrored image has the same
    distribution as the report's flip-then-crop). pad_mode "zeros" pads with black, as torchvision's
    RandomCrop; "reflect" with the mirrored image (no edge pixel repeated), as airbench. `mirrored` (bool [B])
    gives the flips instead of drawing them (alternating flip).
    """
    b, h, w, _ = images.shape
    dev = images.device
    dy = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    col = torch.arange(w, device=dev)
    if mirrored is None and flip:
        mirrored = torch.rand(b, device=dev, generator=generator) < 0.5
    if mirrored is not None:
        col = torch.where(mirrored[:, None], (w - 1) - col, col)  # [B, W]
    rows = dy[:, None] + torch.arange(h, device=dev)  # [B, H], in padded coordinates
    cols = dx[:, None] + col  # [B, W]
    batch = torch.arange(b, device=dev)[:, None, None]
    if pad_mode == "reflect":
        rows, cols = _reflect(rows - padding, h), _reflect(cols - padding, w)
        return images[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    padded = F.pad(images, (0, 0, padding, padding, padding, padding)) if padding else images  # [B, H+2p, W+2p, C]
    return padded[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, H, W, C] -> dtype [B, C, H, W] (channels_last strides), (x/255 - mean) / std.

    mean and std are float tensors of shape [C] on the same device.
    """
    x = images.permute(0, 3, 1, 2)  # NHWC bytes viewed as NCHW: channels_last memory order
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    return torch.addcmul(-shift, x.float(), scale).to(dtype)


def translate_views(x: torch.Tensor, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time views of normalized [N, C, H, W]: shifted by `pixels` toward the top-left and toward the
    bottom-right, edges mirrored (airbench's translate TTA)."""
    h, w = x.shape[2], x.shape[3]
    padded = F.pad(x, (pixels,) * 4, mode="reflect")  # [N, C, H + 2p, W + 2p]
    return padded[:, :, 0:h, 0:w], padded[:, :, 2 * pixels:2 * pixels + h, 2 * pixels:2 * pixels + w]
