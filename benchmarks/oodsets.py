"""Images of no CIFAR-10 class, made offline and seeded: the out-of-distribution sets of benchmarks/ood.py.

No download is possible here, so each far-OOD set stands in for a public one, drawn by a generator of its own:

    digits        house-number-like digit strings on coloured backgrounds (an SVHN stand-in)
    textures      procedural textures: gratings, checkers, dots, plaid, in random palettes (a DTD stand-in)
    noise         i.i.d. uniform colour noise per pixel
    smooth_noise  colour noise on a coarse 2-8 px grid, upsampled bicubic (blobs of colour, no object)

and one near-OOD set, which shares CIFAR-10's colours and local texture but shows no object:

    tile_shuffle  CIFAR-10 test images cut into a 4x4 grid of 8x8 tiles, the tiles permuted

OpenOOD's near-OOD sets for CIFAR-10 (CIFAR-100, TinyImageNet) are photos whose low-level statistics match
CIFAR-10's; a tile-shuffled test image is the closest thing made from data this project has: every 8x8 patch
is a real CIFAR-10 patch, only the object is gone. It is a harder test than the far sets; the issue's AUROC
target is for the far sets.

Every function maps a count and a numpy Generator to uint8 [N, 32, 32, 3]; tile_shuffle also takes the
in-distribution images it rearranges.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 32


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random RGB colours, uint8 [n, 3]."""
    return rng.integers(0, 256, size=(n, 3), dtype=np.uint8)


def digits(count: int, rng: np.random.Generator) -> np.ndarray:
    """1-3 digits in a random size and colour on a flat or two-tone background, drawn at 64 px and downsampled
    to 32 (SVHN's crops are a house number filling most of a small photo)."""
    out = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    fonts = {s: ImageFont.load_default(size=s) for s in range(36, 64, 4)}
    for i in range(count):
        bg, fg, bg2 = (tuple(int(v) for v in c) for c in _palette(rng, 3))
        if np.abs(np.subtract(bg, fg, dtype=int)).sum() < 150:  # legible: the digits differ from the background
            fg = tuple(255 - v for v in bg)
        canvas = Image.new("RGB", (64, 64), bg)
        draw = ImageDraw.Draw(canvas)
        if rng.random() < 0.5:  # a second tone: a wall edge or a plate behind the number
            x0 = int(rng.integers(0, 64))
            draw.rectangle([x0, 0, 64, 64] if rng.random() < 0.5 else [0, x0, 64, 64], fill=bg2)
        text = "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(1, 4))))
        font = fonts[int(rng.choice(list(fonts)))]
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = int(rng.integers(min(0, 64 - (right - left)), max(1, 64 - (right - left)) + 1)) - left
        y = int(rng.integers(min(0, 64 - (bottom - top)), max(1, 64 - (bottom - top)) + 1)) - top
        draw.text((x, y), text, fill=fg, font=font)
        if rng.random() < 0.5:
            canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
        out[i] = np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    return out


def textures(count: int, rng: np.random.Generator) -> np.ndarray:
    """Periodic patterns blended between two to three random colours: an oriented grating, a checkerboard, a dot
    lattice, or a plaid of two gratings; random period (3-16 px), angle and phase."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(count):
        period, angle, phase = rng.uniform(3, 16), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        u = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase
        v = (-xx * np.sin(angle) + yy * np.cos(angle)) * 2 * np.pi / period
        kind = int(rng.integers(0, 4))
        if kind == 0:
            t = 0.5 + 0.5 * np.sin(u)
        elif kind == 1:
            t = ((np.sin(u) > 0) ^ (np.sin(v) > 0)).astype(np.float32)
        elif kind == 2:
            t = ((np.sin(u) * np.sin(v)) > 0.5).astype(np.float32)
        else:
            second = (xx * np.cos(angle + np.pi / 2) + yy * np.sin(angle + np.pi / 2)) * 2 * np.pi / rng.uniform(3, 16)
            t = 0.25 * (2 + np.sin(u) + np.sin(second))
        a, b, c = _palette(rng, 3).astype(np.float32)
        image = a * (1 - t[..., None]) + b * t[..., None]  # [32, 32, 3]
        if rng.random() < 0.5:  # a slow colour drift across the image
            w = (xx / SIZE)[..., None]
            image = image * (1 - 0.5 * w) + c * 0.5 * w
        out[i] = np.clip(image, 0, 255).round().astype(np.uint8)
    return out


def noise(count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(count, SIZE, SIZE, 3), dtype=np.uint8)


def smooth_noise(count: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(count):
        grid = int(rng.integers(2, 9))
        coarse = rng.integers(0, 256, size=(grid, grid, 3), dtype=np.uint8)
        out[i] = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    return out


def tile_shuffle(images: np.ndarray, rng: np.random.Generator, tile: int = 8) -> np.ndarray:
    """Each image's tiles permuted (a fresh permutation per image that moves at least half of them)."""
    n, g = len(images), SIZE // tile
    tiles = images.reshape(n, g, tile, g, tile, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, tile, tile, 3)
    out = np.empty_like(tiles)
    for i in range(n):
        order = rng.permutation(g * g)
        while (order == np.arange(g * g)).sum() > g * g // 2:
            order = rng.permutation(g * g)
        out[i] = tiles[i, order]
    # [N, g*g, t, t, 3] -> [N, g, g, t, t, 3] -> [N, g, t, g, t, 3] -> [N, 32, 32, 3]
    return out.reshape(n, g, g, tile, tile, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, SIZE, SIZE, 3)


FAR: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "digits": digits, "textures": textures, "noise": noise, "smooth_noise": smooth_noise,
}
NEAR = ("tile_shuffle",)
SETS = (*FAR, *NEAR)


def make(name: str, count: int, seed: int, in_distribution: np.ndarray | None = None) -> np.ndarray:
    """The set `name`, `count` images, from its own seeded stream (the seed is mixed with the set's name, so two
    sets never share draws). tile_shuffle needs `in_distribution` images to rearrange (the first `count`)."""
    rng = np.random.default_rng([seed, SETS.index(name)])
    if name == "tile_shuffle":
        if in_distribution is None:
            raise ValueError("tile_shuffle rearranges in-distribution images: pass them")
        return tile_shuffle(in_distribution[:count], rng)
    return FAR[name](count, rng)
