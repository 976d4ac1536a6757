import torch

from training.augment import augment, normalize


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Strictly positive pixels, so zero padding is distinguishable from image content.
    return torch.randint(1, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)


def test_shape_and_dtype_are_kept():
    x = _batch()
    y = augment(x, 4, True, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.uint8


def test_crop_is_a_window_of_the_zero_padded_image():
    x = _batch(32)
    y = augment(x, 4, False, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (0, 0, 4, 4, 4, 4))
    shifted = 0
    for i in range(len(x)):
        windows = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.equal(padded[i, dy:dy + 32, dx:dx + 32], y[i])]
        assert windows, f"image {i} is not a 32x32 window of its padded self"
        shifted += windows[0] != (4, 4)
    assert shifted > len(x) // 2  # most images move: offsets are uniform over 81 positions
    assert (y == 0).any()  # zero padding shows up in shifted crops


def test_flip_alone_mirrors_about_half_the_images():
    x = _batch(400)
    y = augment(x, 0, True, torch.Generator().manual_seed(2))
    same = [torch.equal(y[i], x[i]) for i in range(len(x))]
    mirrored = [torch.equal(y[i], x[i].flip(1)) for i in range(len(x))]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 150 < sum(mirrored) < 250


def test_no_augmentation_is_identity():
    x = _batch(8)
    assert torch.equal(augment(x, 0, False, torch.Generator().manual_seed(0)), x)


def test_deterministic_under_a_seed():
    x = _batch()
    a = augment(x, 4, True, torch.Generator().manual_seed(7))
    b = augment(x, 4, True, torch.Generator().manual_seed(7))
    c = augment(x, 4, True, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalize_matches_torchvision_and_is_channels_last():
    from torchvision.transforms import functional as TF

    x = _batch(4)
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    out = normalize(x, torch.tensor(mean), torch.tensor(std))
    ref = torch.stack([TF.normalize(TF.to_tensor(img.numpy()), mean, std) for img in x])
    assert out.shape == (4, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5)


def test_reflect_crop_is_a_window_of_the_mirror_padded_image():
    x = _batch(32)
    y = augment(x, 2, False, torch.Generator().manual_seed(3), pad_mode="reflect")
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2).float(), (2, 2, 2, 2), mode="reflect")
    padded = padded.permute(0, 2, 3, 1).to(torch.uint8)  # [N, 36, 36, 3]
    for i in range(len(x)):
        assert any(torch.equal(padded[i, dy:dy + 32, dx:dx + 32], y[i]) for dy in range(5) for dx in range(5)), i
    assert not (y == 0).any()  # mirrored edges, never black


def test_given_flips_are_applied_and_draw_no_random_flip():
    x = _batch(16)
    mirrored = torch.arange(16) % 2 == 0
    y = augment(x, 0, True, torch.Generator().manual_seed(4), mirrored=mirrored)
    for i in range(16):
        assert torch.equal(y[i], x[i].flip(1) if mirrored[i] else x[i])


def test_translate_views_shift_with_mirrored_edges():
    from training.augment import translate_views

    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    up_left, down_right = translate_views(x, 1)
    assert torch.equal(up_left[:, :, 1:, 1:], x[:, :, :-1, :-1])  # content moved down-right by one
    assert torch.equal(up_left[:, :, 0, 1:], x[:, :, 1, :-1])  # the new top row mirrors row 1
    assert torch.equal(down_right[:, :, :-1, :-1], x[:, :, 1:, 1:])
