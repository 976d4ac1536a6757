"""CIFAR-10-C's corruptions (benchmarks/cifar10c.py) and the corruption benchmark (benchmarks/corruptions.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from cifar10c import CORRUPTIONS, SEEN_IN_TRAINING
from PIL import Image

from conftest import ROOT, SHARED_CIFAR, cifar_test_images

ALL = {name: fn for family in CORRUPTIONS.values() for name, fn in family.items()}
# The reference's own parameters make these two non-monotone in how far they move the pixels: glass blur's
# severity 3 smooths less than 2 before its shuffle, and elastic's severity 1 is the largest affine warp with no
# elastic field (CIFAR-10-C's make_cifar_c.py).
NOT_MONOTONE = {"glass_blur", "elastic_transform"}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    paths = cifar_test_images(3)
    if not paths:
        pytest.skip("the shared CIFAR-10 copy is needed")
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def test_fourteen_types_in_four_families_and_the_held_out_half():
    assert sum(len(f) for f in CORRUPTIONS.values()) == 14 and "frost" not in ALL
    seen = [n for f in SEEN_IN_TRAINING for n in CORRUPTIONS[f]]
    assert len(seen) == 7 and len(ALL) - len(seen) == 7  # the training augmentation never sees half of them


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_corruption_changes_every_image_more_with_severity_and_is_seeded(images, name):
    fn = ALL[name]
    moved = []
    for severity in range(1, 6):
        out = fn(images.copy(), severity, np.random.default_rng(0))  # the same draws at every severity
        assert out.shape == images.shape and out.dtype == np.uint8
        again = fn(images.copy(), severity, np.random.default_rng(0))
        assert np.array_equal(out, again)
        per_image = np.abs(out.astype(int) - images).reshape(len(images), -1).mean(1)
        assert (per_image > 0).all(), (name, severity)
        moved.append(per_image.mean())
    if name not in NOT_MONOTONE:
        assert all(b > a for a, b in zip(moved, moved[1:], strict=False)), (name, moved)


def test_the_benchmark_prints_a_table_and_json(bento_home):
    proc = subprocess.run([sys.executable, "benchmarks/corruptions.py", str(bento_home / "artifacts"), "--data",
                           str(SHARED_CIFAR / "test"), "--images", "40", "--only", "gaussian_noise", "contrast",
                           "--severities", "1", "5"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "gaussian_noise" in proc.stdout and "never seen (weather, digital)" in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["per_corruption"]) == {"gaussian_noise", "contrast"} and result["images"] == 40
    contrast = result["per_corruption"]["contrast"]
    assert 0 <= contrast["5"] <= 1 and result["relative_drop"] == pytest.approx(
        1 - result["mean_corrupted_acc"] / result["clean_acc"])
