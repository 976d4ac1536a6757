"""Shared fixtures: tiny generated datasets and a small real subset of the shared CIFAR-10 copy."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = Path(os.environ.get("CIFAR10_DATA") or ROOT.parent / "shared" / "datasets" / "cifar10")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Decoded-dataset caches go to a per-session temp folder, never the user's ~/.cache.
    monkeypatch.setenv("CIFAR10_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dataset-cache"))


def make_image_folder(root: Path, classes=("cat", "dog", "frog"), per_class=(6, 3), size=32, seed=0) -> Path:
    """train/<class>/ and test/<class>/ of random PNGs (sizes other than 32 exercise resizing)."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i:04d}.png")
    return root


def make_cifar_batches(root: Path, per_batch=4, seed=0) -> Path:
    """A torchvision-style cifar-10-batches-py/ with tiny random batches."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(x) for x in rng.integers(0, 10, per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return root


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory) -> Path:
    """A small ImageFolder of real CIFAR-10 JPEGs (symlinks into the shared copy, never copies)."""
    if not (SHARED_CIFAR / "train").is_dir():
        pytest.skip(f"the shared CIFAR-10 copy is not at {SHARED_CIFAR}")
    root = tmp_path_factory.mktemp("cifar-subset")
    for split, n in (("train", 60), ("test", 30)):
        for class_dir in sorted((SHARED_CIFAR / split).iterdir()):
            dst = root / split / class_dir.name
            dst.mkdir(parents=True)
            for src in sorted(class_dir.glob("*.jpg"))[:n]:
                (dst / src.name).symlink_to(src.resolve())
    return root
