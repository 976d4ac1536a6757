"""The image-decoding contract: any image file -> the model's input, uint8 [32, 32, 3] RGB.

The training stage decodes its files with prepare() and the service decodes uploads with decode(), so
the service sees exactly the pixels evaluation saw: EXIF orientation applied, first frame, RGB, and
(only when the size differs) a PIL bilinear resize to 32x32. Imports only PIL and numpy.

An image that is not square is framed by a resize policy first (RESIZE_POLICIES; a deployment picks one with
CIFAR10_RESIZE, the batch job with --resize): "squash" (the whole image, aspect ratio lost), "center-crop" (the
central square), or "pad" (the whole image on a square of the training images' mean colour). A square image is
the same under all three. Which serves photos best was measured (docs/experiments.md, "Photos that are not
32x32 squares"); DEFAULT_RESIZE is the winner.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import CIFAR10_MEAN, DEFAULT_MAX_PIXELS, IMAGE_SIZE

RESIZE_FILTER = Image.Resampling.BILINEAR
RESIZE_POLICIES = ("squash", "center-crop", "pad")
DEFAULT_RESIZE = "center-crop"
PAD_COLOR = tuple(round(255 * m) for m in CIFAR10_MEAN)  # what normalization maps to zero
# File names an image folder is read by (training's ImageFolder, `cifar10-classify --eval`).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")


class ImageError(ValueError):
    """An upload that is not a usable image. `code` is stable for clients; the message is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: PIL's convert("RGB") would clip at 255 instead of scaling.
        arr = np.asarray(im, dtype=np.uint32)
        im = Image.fromarray((arr >> 8).clip(0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "1", "L", "RGB") and "transparency" in im.info:
        # A palette entry or (PNG tRNS) one grey level or colour marked transparent: an alpha channel.
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels are shown on white, as a browser shows them.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im if im.mode == "RGB" else im.convert("RGB")  # convert() would copy an RGB image (0.16 GB at 40 MP)


def prepare(im: Image.Image, size: int = IMAGE_SIZE, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """A PIL image (any mode, any size) -> uint8 [size, size, 3] RGB, framed by the `resize` policy. Turns `im`
    itself by its EXIF orientation."""
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    try:
        ImageOps.exif_transpose(im, in_place=True)  # without in_place, an upright image is copied whole
    except Exception:  # noqa: BLE001 - a malformed EXIF block (wrong tag types) still leaves readable pixels
        pass
    im = _to_rgb(im)
    if im.size != (size, size):
        im = _framed(im, size, resize)
    return np.asarray(im, dtype=np.uint8)


def _framed(im: Image.Image, size: int, resize: str) -> Image.Image:
    width, height = im.size
    if resize == "squash" or width == height:
        return im.resize((size, size), RESIZE_FILTER)
    if resize == "center-crop":
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return im.resize((size, size), RESIZE_FILTER, box=(left, top, left + side, top + side))
    if resize == "pad":
        scale = size / max(width, height)
        inner = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = Image.new("RGB", (size, size), PAD_COLOR)
        canvas.paste(im.resize(inner, RESIZE_FILTER), ((size - inner[0]) // 2, (size - inner[1]) // 2))
        return canvas
    raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")


def open_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Encoded bytes -> an opened image whose header is read and checked (pixels not decoded yet: cheap, so a
    caller can see `.size` before deciding where the expensive part, to_input(), runs), or ImageError."""
    if not data:
        raise ImageError("empty_file", "the uploaded file is empty")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "the uploaded file is not an image in a format this service reads "
                         "(JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types (struct.error, IndexError...)
        raise _refusal(exc) from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise ImageError("image_too_large", f"the image is {width}x{height} pixels; the limit is {max_pixels:,} pixels")
    return im


def to_input(im: Image.Image, size: int = IMAGE_SIZE, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """An image from open_upload() -> uint8 [size, size, 3] (decodes its pixels, then closes it), or ImageError."""
    if resize not in RESIZE_POLICIES:  # a caller's mistake, not the upload's: not an ImageError
        raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    try:
        with im:
            im.load()
            return prepare(im, size, resize)
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types (struct.error, IndexError...)
        raise _refusal(exc) from None


def decode(data: bytes, size: int = IMAGE_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS,
           resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """Encoded bytes -> uint8 [size, size, 3], or ImageError with a stable code."""
    return to_input(open_upload(data, max_pixels), size, resize)


def _refusal(exc: Exception) -> ImageError:
    """What Pillow raised while opening or decoding an upload, as the ImageError a client gets."""
    if isinstance(exc, Image.DecompressionBombError):
        return ImageError("image_too_large", f"the image is too large to decode safely ({exc})")
    return ImageError("corrupt_image", f"the image could not be decoded; it is truncated or corrupt ({exc})")
