"""Whole-batch augmentation and normalization with tensor ops, on the training device.

Batches stay uint8 NHWC until normalize(), which returns a float NCHW view in channels_last
memory order (the same byte order as NHWC, so a channels_last model needs no copy).
"""
from __future__ import annotations

import math
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


# --- regularizing augmentations (design report §12.1): each off unless its flag is given -------------------------


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017): one size x size square per image set to 0, the dataset mean once normalized,
    its centre drawn anywhere in the image (so a square at an edge is partly outside). x: float [B, C, H, W]."""
    b, _, h, w = x.shape
    dev = x.device
    top = torch.randint(0, h, (b,), device=dev, generator=generator) - size // 2  # [B]
    left = torch.randint(0, w, (b,), device=dev, generator=generator) - size // 2
    rows = torch.arange(h, device=dev)[None] - top[:, None]  # [B, H]: row offset inside the square
    cols = torch.arange(w, device=dev)[None] - left[:, None]  # [B, W]
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]  # [B, H, W]
    return x * (~inside)[:, None].to(x.dtype)  # a product keeps x's channels_last order (masked_fill would not)


def _uniform(generator: torch.Generator, device: torch.device) -> float:
    return torch.rand((), device=device, generator=generator).item()


def _gamma(shape: float, generator: torch.Generator, device: torch.device) -> float:
    """One Gamma(shape, 1) draw from `generator` (Marsaglia & Tsang, 2000; shape < 1 by Gamma(shape + 1) * U^(1/shape)).
    torch's own Beta and Gamma samplers take no generator, so their draws could not be seeded per run and resumed."""
    boost = 1.0
    if shape < 1.0:
        boost = _uniform(generator, device) ** (1.0 / shape)
        shape += 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        z = torch.randn((), device=device, generator=generator).item()
        v = (1.0 + c * z) ** 3
        if v <= 0:
            continue
        u = _uniform(generator, device)
        if u > 0 and math.log(u) < 0.5 * z * z + d - d * v + d * math.log(v):
            return d * v * boost


def beta(alpha: float, generator: torch.Generator, device: torch.device) -> float:
    """One Beta(alpha, alpha) draw from `generator`."""
    a, b = _gamma(alpha, generator, device), _gamma(alpha, generator, device)
    return a / (a + b)


def mix(x: torch.Tensor, labels: torch.Tensor, mixup_alpha: Optional[float], cutmix_alpha: Optional[float],
        prob: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp (Zhang et al., 2018) or CutMix (Yun et al., 2019) of a normalized batch with itself in reverse order,
    with probability `prob` per batch; with both on, each mixed batch is one or the other at even odds (timm's
    switch). Returns (x, partner labels, lam): the target is lam * one_hot(labels) + (1 - lam) * one_hot(partner).
    CutMix's lam is the share of the image left unpasted, after the box is clipped to the image."""
    dev = x.device
    if _uniform(generator, dev) >= prob:
        return x, labels, 1.0
    use_cutmix = cutmix_alpha is not None and (mixup_alpha is None or _uniform(generator, dev) < 0.5)
    lam = beta(cutmix_alpha if use_cutmix else mixup_alpha, generator, dev)
    partner, partner_labels = x.flip(0), labels.flip(0)
    if not use_cutmix:
        return lam * x + (1.0 - lam) * partner, partner_labels, lam
    h, w = x.shape[2], x.shape[3]
    cut_h, cut_w = int(h * math.sqrt(1.0 - lam)), int(w * math.sqrt(1.0 - lam))
    cy, cx = int(_uniform(generator, dev) * h), int(_uniform(generator, dev) * w)
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
    return x, partner_labels, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


# Strengths of the corruption-style augmentation, on the 0-255 scale for the noise: mild to medium, in the range of
# CIFAR-10-C's Gaussian noise severities 1-3 (sigma 0.04-0.08 of the range) and blur severities 1-3.
NOISE_SIGMA = (0.02, 0.10)
BLUR_SIGMA = (0.4, 1.2)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of float [B, H, W, C] with a sigma per image ([B]), 5 taps, separable, mirrored edges."""
    b, h, w, c = x.shape
    taps = torch.arange(-2, 3, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))  # [B, 5]
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, 5]
    planes = x.permute(0, 3, 1, 2).reshape(1, b * c, h, w)  # [1, B*C, H, W]: one group per image channel
    planes = F.conv2d(F.pad(planes, (2, 2, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    planes = F.conv2d(F.pad(planes, (0, 0, 2, 2), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    return planes.reshape(b, c, h, w).permute(0, 2, 3, 1)  # [B, H, W, C]


def corrupt(images: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """A corruption-style augmentation: each image, with probability `prob`, gets Gaussian noise or a Gaussian blur
    (even odds) of a strength drawn from NOISE_SIGMA / BLUR_SIGMA. uint8 [B, H, W, C] -> uint8 [B, H, W, C].

    Only noise and blur: they cost a clean-trained model the most of six mild corruptions (issue 29's measurement),
    and keeping CIFAR-10-C's other corruptions out of training keeps them an honest held-out test."""
    b, dev = images.shape[0], images.device
    chosen = torch.rand(b, device=dev, generator=generator) < prob
    noisy = torch.rand(b, device=dev, generator=generator) < 0.5
    noise_sigma = torch.empty(b, device=dev).uniform_(*NOISE_SIGMA, generator=generator) * 255.0
    blur_sigma = torch.empty(b, device=dev).uniform_(*BLUR_SIGMA, generator=generator)
    x = images.float()
    noise = torch.randn(x.shape, device=dev, generator=generator) * noise_sigma[:, None, None, None]
    chosen, noisy = chosen[:, None, None, None], noisy[:, None, None, None]
    out = torch.where(chosen & noisy, x + noise, torch.where(chosen, _blur(x, blur_sigma), x))
    return out.round_().clamp_(0, 255).to(torch.uint8)
