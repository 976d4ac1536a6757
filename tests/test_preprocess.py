"""Upload decoding: every format a user might send becomes uint8 [32, 32, 3] RGB, or a clear error."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import encode, png_claiming
from contract.images import ImageError, decode


def solid(color, mode="RGB", size=(32, 32)) -> Image.Image:
    return Image.new(mode, size, color)


@pytest.mark.parametrize("fmt, kw", [
    ("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("PPM", {}),
])
def test_lossless_formats_keep_pixels(fmt, kw):
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = decode(encode(Image.fromarray(arr), fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    assert np.array_equal(out, arr)


def test_jpeg_decodes_like_pil():
    arr = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = encode(Image.fromarray(arr), "JPEG", quality=75)
    assert np.array_equal(decode(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_grayscale_cmyk_and_16_bit():
    assert decode(encode(solid(128, "L"), "PNG"))[0, 0].tolist() == [128, 128, 128]
    cmyk = decode(encode(solid((0, 0, 0, 0), "CMYK"), "JPEG", quality=100))
    assert (cmyk > 250).all()  # no ink is white
    sixteen = Image.fromarray(np.full((32, 32), 0x8000, dtype=np.uint16))
    assert decode(encode(sixteen, "PNG"))[0, 0].tolist() == [128, 128, 128]


def test_palette_and_alpha_are_composited_on_white():
    rgba = solid((255, 0, 0, 0), "RGBA")  # fully transparent red
    assert decode(encode(rgba, "PNG"))[0, 0].tolist() == [255, 255, 255]
    half = solid((0, 0, 0, 128), "RGBA")
    assert decode(encode(half, "PNG"))[0, 0].tolist() == [127, 127, 127]
    pal = solid((0, 0, 255)).convert("P")
    assert decode(encode(pal, "PNG"))[0, 0].tolist() == [0, 0, 255]
    # PNG's tRNS chunk: one grey level or one colour marked transparent, in images without a palette.
    assert decode(encode(solid(0, "L"), "PNG", transparency=0))[0, 0].tolist() == [255, 255, 255]
    assert decode(encode(solid((0, 0, 0)), "PNG", transparency=(0, 0, 0)))[0, 0].tolist() == [255, 255, 255]
    assert decode(encode(solid((9, 9, 9)), "PNG", transparency=(0, 0, 0)))[0, 0].tolist() == [9, 9, 9]


def test_gif_uses_the_first_frame():
    frames = [solid((255, 0, 0)).convert("P"), solid((0, 255, 0)).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert decode(buf.getvalue())[0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied():
    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[:, :32] = (255, 0, 0)  # left half red, right half blue
    arr[:, 32:] = (0, 0, 255)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the left half ends up on top
    out = decode(encode(im, "JPEG", quality=100, exif=exif))
    assert out[2, 16, 0] > 200 and out[29, 16, 2] > 200


def test_a_malformed_exif_block_leaves_the_image_unrotated():
    # Orientation 6 and a SamplesPerPixel tag holding text: Pillow cannot rewrite that EXIF while rotating
    # (struct.error), yet the pixels are fine, as any browser shows.
    exif = Image.Exif()
    exif[0x0112], exif[0x0131] = 6, "sw"
    raw = exif.tobytes()
    software, samples = (tag.to_bytes(2, "big") + (2).to_bytes(2, "big") for tag in (0x0131, 0x0115))
    assert raw.count(software) == 1
    out = decode(encode(solid((200, 10, 10), size=(20, 12)), "JPEG", exif=raw.replace(software, samples)))
    assert out.shape == (32, 32, 3) and out[16, 16, 0] > 150


def test_damaged_files_of_every_format_are_a_400_never_a_crash():
    # Seeded byte mutations of small valid files (EXIF-laden JPEG/WebP/TIFF, animated GIF, ...): Pillow's
    # plugins raise struct.error, IndexError, TypeError... on some; decode() must answer ImageError for all.
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0131] = 6, "cam", "sw"
    im = solid((200, 10, 10), size=(20, 12))
    seeds = [encode(im, fmt, exif=exif.tobytes()) for fmt in ("JPEG", "PNG", "TIFF", "WEBP")]
    seeds += [encode(im, fmt) for fmt in ("GIF", "BMP", "PPM")]
    gif = io.BytesIO()
    im.convert("P").save(gif, "GIF", save_all=True, append_images=[im.convert("P")] * 2, transparency=0)
    seeds.append(gif.getvalue())
    rng = np.random.default_rng(0)
    outcomes = {"decoded": 0, "refused": 0}
    for i in range(3000):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(int(rng.integers(1, 5))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        try:
            assert decode(bytes(data)).shape == (32, 32, 3)
            outcomes["decoded"] += 1
        except ImageError:
            outcomes["refused"] += 1
    assert min(outcomes.values()) > 100  # both paths were exercised


def test_any_size_is_resized_bilinear_after_the_default_center_crop():
    im = Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 200, 3), dtype=np.uint8))  # 200 wide
    out = decode(encode(im, "PNG"))
    assert out.shape == (32, 32, 3)
    assert np.array_equal(out, np.asarray(im.resize((32, 32), Image.Resampling.BILINEAR, box=(0, 50, 200, 250))))
    squashed = decode(encode(im, "PNG"), resize="squash")
    assert np.array_equal(squashed, np.asarray(im.resize((32, 32), Image.Resampling.BILINEAR)))


@pytest.mark.parametrize("data, code", [
    (b"", "empty_file"),
    (b"hello, this is text", "not_an_image"),
    (encode(solid((1, 2, 3), size=(64, 64)), "JPEG")[:200], "corrupt_image"),
])
def test_bad_uploads(data, code):
    with pytest.raises(ImageError) as info:
        decode(data)
    assert info.value.code == code


def test_decompression_bomb_is_refused_from_the_header():
    with pytest.raises(ImageError) as info:
        decode(png_claiming(100_000, 100_000))
    assert info.value.code == "image_too_large"
    with pytest.raises(ImageError) as info:
        decode(png_claiming(5000, 5000), max_pixels=1_000_000)
    assert info.value.code == "image_too_large" and "5000x5000" in str(info.value)


@pytest.mark.parametrize("size", [(96, 64), (64, 96), (50, 50)])
def test_the_resize_policies_frame_a_photo_as_they_say(size):
    from contract.images import PAD_COLOR, RESIZE_POLICIES, prepare

    w, h = size
    # Left/top half red, right/bottom half blue, a green stripe in the middle third of the long side.
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = 255
    if w >= h:
        arr[:, w // 2:] = (0, 0, 255)
        arr[:, w // 3: 2 * w // 3, 1] = 255
    else:
        arr[h // 2:] = (0, 0, 255)
        arr[h // 3: 2 * h // 3, :, 1] = 255
    out = {policy: prepare(Image.fromarray(arr), 32, policy) for policy in RESIZE_POLICIES}
    assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in out.values())
    if w == h:  # a square is the same under every policy
        assert all(np.array_equal(out["squash"], o) for o in out.values())
        return
    assert np.array_equal(out["squash"], np.asarray(Image.fromarray(arr).resize((32, 32), Image.Resampling.BILINEAR)))
    crop = out["center-crop"]
    # The central square of a 3:2 image is mostly the green stripe's middle: no pure-red corner is left.
    assert crop[..., 1].mean() > out["squash"][..., 1].mean()
    pad = out["pad"]
    band = pad[:4] if w > h else pad[:, :4]  # the padding along the short side
    assert np.all(np.abs(band.reshape(-1, 3).astype(int) - PAD_COLOR) <= 1) and tuple(pad[0, 0]) == PAD_COLOR


def test_an_unknown_resize_policy_is_refused():
    from contract.images import to_input

    with pytest.raises(ValueError, match="resize must be one of squash, center-crop, pad"):
        to_input(Image.new("RGB", (40, 30)), 32, "stretch")
