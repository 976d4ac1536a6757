"""Whole-batch augmentation and normalization with tensor ops, on the training device.

Batches stay uint8 NHWC until normalize(), which returns a float NCHW view in channels_last
memory order (the same byte order as NHWC, so a channels_last model needs no copy).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """RandomHorizontalFlip(0.5) and RandomCrop(size, padding) with zero padding, per image.

    images: uint8 [B, H, W, C] -> uint8 [B, H, W, C]. Both are done by one gather from the padded
    batch: the crop picks the window's offset, the flip reverses the window's column order (a
    mirrored crop of the mirrored image has the same distribution as the report's flip-then-crop).
    """
    b, h, w, _ = images.shape
    dev = images.device
    padded = F.pad(images, (0, 0, padding, padding, padding, padding)) if padding else images  # [B, H+2p, W+2p, C]
    dy = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    col = torch.arange(w, device=dev)
    if flip:
        mirrored = torch.rand(b, device=dev, generator=generator) < 0.5
        col = torch.where(mirrored[:, None], (w - 1) - col, col)  # [B, W]
    rows = dy[:, None] + torch.arange(h, device=dev)  # [B, H]
    cols = dx[:, None] + col  # [B, W]
    batch = torch.arange(b, device=dev)[:, None, None]
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
