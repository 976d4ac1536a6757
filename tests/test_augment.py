import torch

from training.augment import BLUR_SIGMA, augment, beta, corrupt, cutout, mix, normalize


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


# --- Cutout, MixUp, CutMix, the corruption-style augmentation ----------------------------------------------------


def _normalized(n=16, seed=0):
    return normalize(_batch(n, seed), torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25]))


def test_cutout_zeroes_one_square_per_image_clipped_at_the_edges():
    x = _normalized(200).abs() + 1  # no zeros before
    y = cutout(x, 8, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last)
    zeros = (y == 0).all(1)  # [B, H, W]: every channel zeroed together
    assert ((y == 0).any(1) == zeros).all()
    counts = zeros.sum((1, 2))
    assert counts.max() == 64 and counts.min() >= 16  # a whole square, or a corner of one at the edges
    for i in range(200):
        rows, cols = zeros[i].any(1).nonzero(), zeros[i].any(0).nonzero()
        assert counts[i] == len(rows) * len(cols)  # a rectangle
    assert torch.equal(y[~zeros[:, None].expand_as(y)], x[~zeros[:, None].expand_as(x)])
    assert torch.equal(cutout(x, 8, torch.Generator().manual_seed(0)), y)


def test_the_beta_draws_are_seeded_and_have_the_beta_moments():
    for alpha in (0.2, 1.0, 3.0):
        g = torch.Generator().manual_seed(1)
        draws = torch.tensor([beta(alpha, g, torch.device("cpu")) for _ in range(4000)], dtype=torch.float64)
        assert 0 <= draws.min() and draws.max() <= 1  # Beta(0.2, 0.2) puts draws within 1e-16 of 0 and 1
        assert abs(draws.mean() - 0.5) < 0.02, alpha
        assert abs(draws.var() - 1 / (4 * (2 * alpha + 1))) < 0.01, alpha  # Var Beta(a, a) = 1 / (4 (2a + 1))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [beta(0.4, g1, torch.device("cpu")) for _ in range(5)] == [beta(0.4, g2, torch.device("cpu"))
                                                                      for _ in range(5)]


def test_mixup_blends_each_image_with_its_partner_by_lam():
    x, y = _normalized(), torch.arange(16) % 10
    mixed, partner, lam = mix(x, y, 0.4, None, 1.0, torch.Generator().manual_seed(0))
    assert 0 < lam < 1 and torch.equal(partner, y.flip(0))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0))
    # The soft target lam * one_hot(y) + (1 - lam) * one_hot(partner) is a distribution.
    target = lam * torch.nn.functional.one_hot(y, 10) + (1 - lam) * torch.nn.functional.one_hot(partner, 10)
    assert torch.allclose(target.sum(1), torch.ones(16, dtype=target.dtype))


def test_cutmix_pastes_a_box_whose_area_is_one_minus_lam():
    x, y = _normalized(), torch.arange(16) % 10
    for seed in range(20):
        mixed, partner, lam = mix(x, y, None, 1.0, 1.0, torch.Generator().manual_seed(seed))
        pasted = (mixed != x).any(1)[0]  # [H, W] of image 0: where its partner's pixels are
        from_partner = (mixed[0] == x.flip(0)[0]).all(0)
        assert ((pasted & from_partner) == pasted).all()
        assert abs((1 - lam) - from_partner.float().mean().item()) < 0.01 or pasted.sum() == 0
        assert torch.equal(partner, y.flip(0)) and 0 <= lam <= 1


def test_mix_prob_and_the_switch_between_mixup_and_cutmix():
    x, y = _normalized(), torch.arange(16) % 10
    g = torch.Generator().manual_seed(0)
    assert all(mix(x, y, 0.4, None, 0.0, g)[2] == 1.0 for _ in range(20))  # never mixed
    kinds = set()
    for _ in range(40):
        mixed, _, lam = mix(x, y, 0.4, 1.0, 1.0, g)
        blended = torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0))
        kinds.add("mixup" if blended else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_corruption_changes_the_chosen_images_only_and_is_seeded():
    x = _batch(64)
    assert torch.equal(corrupt(x, 0.0, torch.Generator().manual_seed(0)), x)
    y = corrupt(x, 1.0, torch.Generator().manual_seed(0))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert all(not torch.equal(y[i], x[i]) for i in range(64))
    half = corrupt(x, 0.5, torch.Generator().manual_seed(0))
    changed = sum(not torch.equal(half[i], x[i]) for i in range(64))
    assert 16 < changed < 48
    assert torch.equal(corrupt(x, 0.5, torch.Generator().manual_seed(0)), half)


def test_the_blur_preserves_a_flat_image_and_smooths_an_edge():
    from training.augment import _blur

    flat = torch.full((2, 8, 8, 3), 100.0)
    assert torch.allclose(_blur(flat, torch.tensor(BLUR_SIGMA)), flat)
    edge = torch.zeros(1, 8, 8, 1)
    edge[:, :, 4:] = 255.0
    out = _blur(edge, torch.tensor([1.0]))[0, 0, :, 0]
    assert (out[1:] >= out[:-1]).all() and 0 < out[3] < 255 and 0 < out[4] < 255
