"""CIFAR-10-C's corruptions (Hendrycks & Dietterich, ICLR 2019) at its CIFAR severities 1-5, on batches of 32x32
images, seeded; numpy, PIL and torch's convolutions only. Used by benchmarks/corruptions.py.

Why not the `imagecorruptions` package: it carries ImageNet-C's strengths, which are meant for 224-pixel images
(Gaussian noise sigma 0.08-0.38 against CIFAR-10-C's 0.04-0.10, motion blur radius 10-20 pixels on a 32-pixel
image, defocus radius 3-10 against 0.3-1.5) and it needs OpenCV, scikit-image and scipy, none of which this
project installs. The parameters below are CIFAR-10-C's (its make_cifar_c.py); the code is this project's.

Fourteen of the fifteen types: `frost` overlays crops of six frost photographs that ship with CIFAR-10-C's code,
and without them there is no honest frost. ImageMagick's motion blur (motion_blur, snow) is a one-sided line of
Gaussian weights here; glass blur moves pixels in the same sequential scan as the reference, with its quirk.

Every function maps uint8 [N, 32, 32, 3] and a numpy Generator to uint8 [N, 32, 32, 3].
"""
from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0


def _uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _conv(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Each image's channels convolved with its own kernel: x float [N, H, W, C], kernels [N, k, k] (or [k, k] for
    all); mirrored edges (OpenCV's default border, reflect-101)."""
    n, h, w, c = x.shape
    kernels = np.broadcast_to(kernels, (n, *kernels.shape[-2:]))
    k = kernels.shape[-1]
    planes = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).reshape(1, n * c, h, w)
    weight = torch.from_numpy(np.repeat(kernels, c, axis=0).astype(np.float32))[:, None]  # [N*C, 1, k, k]
    out = F.conv2d(F.pad(planes, (k // 2,) * 4, mode="reflect"), weight.flip(-1, -2), groups=n * c)
    return out.reshape(n, c, h, w).permute(0, 2, 3, 1).numpy()


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scikit-image's gaussian() kernel: radius truncate * sigma, normalized."""
    radius = max(1, int(truncate * sigma + 0.5))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def _gaussian(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    return x if sigma <= 0 else _conv(x, _gaussian_kernel(sigma, truncate))


def _motion_kernels(radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick's motion blur as kernels: Gaussian weights (sigma) along a line of `radius` pixels that starts at
    the pixel and points at `angle` degrees, one kernel per angle, bilinearly splatted. [N, k, k]."""
    half = int(math.ceil(radius)) + 1
    size = 2 * half + 1
    kernels = np.zeros((len(angles), size, size), np.float32)
    steps = np.arange(0, int(math.ceil(radius)) + 1, dtype=np.float32)
    weights = np.exp(-steps ** 2 / (2 * sigma ** 2))
    for i, angle in enumerate(np.deg2rad(angles)):
        for s, wgt in zip(steps, weights, strict=True):
            fx, fy = half + s * math.cos(angle), half - s * math.sin(angle)
            x0, y0 = int(math.floor(fx)), int(math.floor(fy))
            ax, ay = fx - x0, fy - y0
            for dx, dy, share in ((0, 0, (1 - ax) * (1 - ay)), (1, 0, ax * (1 - ay)), (0, 1, (1 - ax) * ay),
                                  (1, 1, ax * ay)):
                if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                    kernels[i, y0 + dy, x0 + dx] += wgt * share
        kernels[i] /= kernels[i].sum()
    return kernels


def _zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """The centre 1/factor of each image scaled back to the full size (bilinear), as clipped_zoom: [N, H, W, C]."""
    n, h, w, c = x.shape
    crop = int(math.ceil(h / factor))
    top = (h - crop) // 2
    planes = torch.from_numpy(np.ascontiguousarray(x[:, top:top + crop, top:top + crop].transpose(0, 3, 1, 2)))
    size = int(round(crop * factor))
    out = F.interpolate(planes, size=(size, size), mode="bilinear", align_corners=False)
    trim = (size - h) // 2
    return out[:, :, trim:trim + h, trim:trim + w].permute(0, 2, 3, 1).numpy()


# --- noise ------------------------------------------------------------------------------------------------------


def gaussian_noise(x, severity, rng):
    c = [0.04, 0.06, 0.08, 0.09, 0.10][severity - 1]
    x = _float(x)
    return _uint8(x + rng.normal(size=x.shape, scale=c))


def shot_noise(x, severity, rng):
    c = [500, 250, 100, 75, 50][severity - 1]
    return _uint8(rng.poisson(_float(x) * c) / c)


def impulse_noise(x, severity, rng):
    """Salt and pepper on a share c of the values (each channel of each pixel drawn alone), half of each."""
    c = [0.01, 0.02, 0.03, 0.05, 0.07][severity - 1]
    x = _float(x)
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    return _uint8(np.where(hit, salt.astype(np.float32), x))


# --- blur -------------------------------------------------------------------------------------------------------


def defocus_blur(x, severity, rng):
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    t = np.arange(-8, 9)
    xx, yy = np.meshgrid(t, t)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    # The reference anti-aliases the disk with a 3x3 Gaussian of sigma `alias`.
    g = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias ** 2))
    g3 = np.outer(g, g) / np.outer(g, g).sum()
    disk = _conv(disk[None, :, :, None], g3.astype(np.float32))[0, :, :, 0]
    return _uint8(_conv(_float(x), disk / disk.sum()))


def glass_blur(x, severity, rng):
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    x = _uint8(_gaussian(_float(x), sigma))
    n, h, w, _ = x.shape
    rows = np.arange(n)
    for _ in range(iterations):
        # The reference's scan, from the bottom-right inwards. Its "swap" (`x[h, w], x[h', w'] = x[h', w'], x[h, w]`
        # on numpy views) copies the neighbour into the pixel and leaves the neighbour as it was; CIFAR-10-C was made
        # that way, so this does the same. (A true swap lets pixels travel along the scan: measured 2026-12-05, it
        # took a SimpleCNN from 85.0% to 39.1% at severity 1.)
        for i in range(h - delta, delta, -1):
            for j in range(w - delta, delta, -1):
                dy, dx = rng.integers(-delta, delta, size=(2, n))
                x[rows, i, j] = x[rows, i + dy, j + dx]
    return _uint8(_gaussian(_float(x), sigma))


def motion_blur(x, severity, rng):
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]
    kernels = _motion_kernels(radius, sigma, rng.uniform(-45, 45, size=len(x)))
    return _uint8(_conv(_float(x), kernels))


def zoom_blur(x, severity, rng):
    top = [1.06, 1.11, 1.16, 1.21, 1.26][severity - 1]
    factors = np.arange(1, top, 0.01)
    x = _float(x)
    out = np.zeros_like(x)
    for factor in factors:
        out += _zoom(x, float(factor))
    return _uint8((x + out) / (len(factors) + 1))


# --- weather ----------------------------------------------------------------------------------------------------


def snow(x, severity, rng):
    loc, scale, zoom, threshold, radius, sigma, keep = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][severity - 1]
    x = _float(x)
    n = len(x)
    layer = rng.normal(size=(n, 32, 32, 1), loc=loc, scale=scale).astype(np.float32)
    layer = _zoom(layer, zoom) if zoom != 1 else layer
    layer[layer < threshold] = 0
    layer = np.clip(layer, 0, 1)
    layer = _conv(layer, _motion_kernels(radius, sigma, rng.uniform(-135, -45, size=n)))
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = keep * x + (1 - keep) * np.maximum(x, gray[..., None] * 1.5 + 0.5)
    return _uint8(x + layer + np.rot90(layer, k=2, axes=(1, 2)))


def _plasma(n: int, decay: float, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Diamond-square fractal heightmaps, [N, size, size] in [0, 1] (the reference's plasma_fractal)."""
    maps = np.zeros((n, size, size), np.float64)
    step, wibble = size, 100.0

    def wibbled(a):
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        maps[:, half:size:step, half:size:step] = wibbled(square)
        centres = maps[:, half:size:step, half:size:step]
        corners = maps[:, 0:size:step, 0:size:step]
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, 0:size:step, half:size:step] = wibbled(left)
        top = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half:size:step, 0:size:step] = wibbled(top)
        step //= 2
        wibble /= decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return (maps / maps.max(axis=(1, 2), keepdims=True)).astype(np.float32)


def fog(x, severity, rng):
    strength, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    x = _float(x)
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * _plasma(len(x), decay, rng)[..., None]
    return _uint8(x * peak / (peak + strength))


def brightness(x, severity, rng):
    """V of HSV raised by c: with hue and saturation kept, RGB scales with V (black becomes grey c)."""
    c = [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1]
    x = _float(x)
    v = x.max(axis=3, keepdims=True)
    scaled = x * (np.minimum(v + c, 1.0) / np.maximum(v, 1e-12))
    return _uint8(np.where(v > 0, scaled, c))


# --- digital ----------------------------------------------------------------------------------------------------


def contrast(x, severity, rng):
    c = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1]
    x = _float(x)
    means = x.mean(axis=(1, 2), keepdims=True)
    return _uint8((x - means) * c + means)


def elastic_transform(x, severity, rng):
    alpha, sigma, affine = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                            (0.1, 0.03, 0.03)][severity - 1]
    alpha, sigma, affine = 32 * alpha, 32 * sigma, 32 * affine
    x = _float(x)
    n = len(x)
    # A random affine map, fixed by moving three points around the centre (the reference's), then a smooth random
    # displacement field; sampled bilinearly with mirrored edges.
    centre, span = 16.0, 32 // 3
    src = np.array([[centre + span, centre + span], [centre + span, centre - span], [centre - span, centre - span]],
                   np.float64)
    ys, xs = np.meshgrid(np.arange(32, dtype=np.float64), np.arange(32, dtype=np.float64), indexing="ij")
    sample_x, sample_y = np.empty((n, 32, 32)), np.empty((n, 32, 32))
    for i in range(n):
        dst = src + rng.uniform(-affine, affine, size=src.shape)
        # Output pixel p reads the input at M^-1 p (as OpenCV's warpAffine), M mapping src to dst.
        m = np.linalg.solve(np.c_[src, np.ones(3)], dst).T  # [2, 3]
        inverse = np.linalg.inv(np.r_[m, [[0, 0, 1]]])[:2]
        sample_x[i] = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
        sample_y[i] = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    if alpha > 0:
        fields = rng.uniform(-1, 1, size=(2, n, 32, 32, 1)).astype(np.float32)
        dx = _gaussian(fields[0], sigma, truncate=3)[..., 0] * alpha
        dy = _gaussian(fields[1], sigma, truncate=3)[..., 0] * alpha
        sample_x, sample_y = sample_x + dx, sample_y + dy
    grid = torch.from_numpy(np.stack([sample_x / 31 * 2 - 1, sample_y / 31 * 2 - 1], axis=-1).astype(np.float32))
    planes = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    out = F.grid_sample(planes, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    return _uint8(out.permute(0, 2, 3, 1).numpy())


def pixelate(x, severity, rng):
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    small = int(32 * c)
    return np.stack([np.asarray(Image.fromarray(im).resize((small, small), Image.Resampling.BOX)
                                .resize((32, 32), Image.Resampling.BOX)) for im in x])


def jpeg_compression(x, severity, rng):
    quality = [80, 65, 58, 50, 40][severity - 1]
    out = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return np.stack(out)


# Families as CIFAR-10-C groups them. The training augmentation (--corrupt-prob: Gaussian noise and Gaussian blur)
# is of the noise and blur kinds; weather and digital are the half it never sees.
CORRUPTIONS: dict[str, dict[str, Corruption]] = {
    "noise": {"gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise},
    "blur": {"defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur,
             "zoom_blur": zoom_blur},
    "weather": {"snow": snow, "fog": fog, "brightness": brightness},
    "digital": {"contrast": contrast, "elastic_transform": elastic_transform, "pixelate": pixelate,
                "jpeg_compression": jpeg_compression},
}
SEEN_IN_TRAINING = ("noise", "blur")
