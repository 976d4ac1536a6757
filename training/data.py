"""Dataset loading: a decoded split is one uint8 tensor [N, 32, 32, 3] (HWC, RGB), cached on disk.

Two layouts are accepted under --data DIR:
  * an ImageFolder tree: DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg (any class count);
  * torchvision's CIFAR-10 root: DIR/cifar-10-batches-py/ (fetched with --download).
"""
from __future__ import annotations

import hashlib
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from contract.constants import IMAGE_SIZE
from contract.folders import FolderError, list_image_folder
from contract.images import RESIZE_FILTER, prepare

from .config import ConfigError, TrainConfig
from .io import atomic_torch_save

CIFAR_BATCHES = "cifar-10-batches-py"
LAYOUTS = (
    f"an ImageFolder tree (train/<class>/*.jpg and test/<class>/*.jpg) or a torchvision CIFAR-10 "
    f"root ({CIFAR_BATCHES}/, use --download to fetch it)"
)
# Bump when decoding changes, so caches made by older code are never reused.
CACHE_FORMAT = 2


class DataError(Exception):
    """The dataset folder is missing or malformed; the message is one sentence for the user."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 32, 32, 3], RGB
    labels: torch.Tensor  # int64 [N]
    classes: list[str]

    def __len__(self) -> int:
        return self.labels.numel()


def load_image(path: Path | str) -> np.ndarray:
    """Decode one file to uint8 [32, 32, 3] RGB exactly as the service decodes an upload."""
    with Image.open(path) as im:
        return prepare(im, IMAGE_SIZE)


def detect_layout(root: Path) -> str:
    if (root / CIFAR_BATCHES).is_dir():
        return "cifar"
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folder"
    return "none"


def load_split(root: str | os.PathLike, split: str, download: bool = False,
               cache_dir: str | os.PathLike | None = None) -> Split:
    """Load the "train" or "test" split of the dataset at root."""
    root = Path(root).expanduser()
    layout = detect_layout(root) if root.is_dir() else "none"
    if layout == "none" and download:
        _download_cifar10(root)
        layout = "cifar"
    if layout == "none":
        why = "does not exist" if not root.exists() else "has neither layout"
        raise DataError(f"dataset folder {root} {why}; expected {LAYOUTS}")
    if layout == "cifar":
        return _load_cifar_batches(root / CIFAR_BATCHES, split)
    return _load_image_folder(root / split, cache_dir)


def _download_cifar10(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    try:
        download_and_extract_archive(url, str(root), md5="c58f30108f718f92721af3b95e74349a")
    except Exception as exc:  # network errors come in many types; the user needs one sentence
        raise DataError(f"could not download CIFAR-10 into {root}: {exc}") from None


def _load_cifar_batches(folder: Path, split: str) -> Split:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    try:
        with open(folder / "batches.meta", "rb") as f:
            classes = [str(c) for c in pickle.load(f, encoding="latin1")["label_names"]]
        data, labels = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch["labels"])
    except (OSError, KeyError, ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(f"{folder} is not a readable CIFAR-10 batches folder ({exc}); expected {LAYOUTS}") from None
    images = torch.from_numpy(np.concatenate(data)).permute(0, 2, 3, 1).contiguous()  # NCHW -> NHWC
    return Split(images, torch.tensor(labels, dtype=torch.int64), classes)


def _list_image_folder(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    try:
        return list_image_folder(folder)
    except FolderError as exc:
        raise DataError(f"{exc}; expected {LAYOUTS}") from None


def _cache_key(folder: Path, samples: list[tuple[Path, int]]) -> str:
    # Keyed on every file's name, size and mtime (what make trusts too): a changed, added or
    # removed image changes the key, so a stale cache is never served. Reading stats only keeps a
    # cache hit fast on 60,000 files.
    h = hashlib.sha256(f"v{CACHE_FORMAT}|{IMAGE_SIZE}|{RESIZE_FILTER}|{folder.resolve()}".encode())
    for path, label in samples:
        st = path.stat()
        h.update(f"{path.relative_to(folder)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    if os.environ.get("CIFAR10_CACHE_DIR"):
        return Path(os.environ["CIFAR10_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifar10-service"


def _load_image_folder(folder: Path, cache_dir: str | os.PathLike | None) -> Split:
    classes, samples = _list_image_folder(folder)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache / f"{folder.name}-{_cache_key(folder, samples)}.pt"
    if cache_file.is_file():
        try:
            blob = torch.load(cache_file, weights_only=True)
            return Split(blob["images"], blob["labels"], list(blob["classes"]))
        except Exception:
            pass  # an unreadable cache is rebuilt below, never trusted

    def decode(sample: tuple[Path, int]) -> np.ndarray:
        try:
            return load_image(sample[0])
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {sample[0]}: {exc}") from None

    # PIL releases the GIL while decoding, so threads use every core without pickling arrays.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        arrays = list(pool.map(decode, samples, chunksize=256))
    split = Split(
        torch.from_numpy(np.stack(arrays)),
        torch.tensor([label for _, label in samples], dtype=torch.int64),
        classes,
    )
    try:
        atomic_torch_save({"images": split.images, "labels": split.labels, "classes": classes}, cache_file)
    except OSError:
        pass  # a read-only cache location only costs the next run a decode
    return split


def _subset(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.images[idx], split.labels[idx], split.classes)


def split_order(n: int, seed: int) -> torch.Tensor:
    """The seeded order of the n training images: its first `val_split` are the hold-out. The export stage
    reproduces a checkpoint's hold-out from its config with this (seed, val_split)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def holdout(train: Split, seed: int, val_split: int) -> Split:
    """The training images a run with this seed and --val-split held out (never trained on)."""
    return _subset(train, split_order(len(train), seed)[:val_split])


def prepare_data(cfg: TrainConfig, download: bool = False,
                 cache_dir: str | os.PathLike | None = None) -> tuple[Split, Split, Split, str]:
    """(train, validation, test, where validation comes from). Held-out and limited subsets are seeded."""
    train = load_split(cfg.data, "train", download=download, cache_dir=cache_dir)
    test = load_split(cfg.data, "test", download=False, cache_dir=cache_dir)
    if test.classes != train.classes:
        raise DataError(f"train and test splits of {cfg.data} have different class folders")
    order = split_order(len(train), cfg.seed)
    if cfg.val_split:
        if cfg.val_split >= len(train):
            raise ConfigError(f"--val-split {cfg.val_split} leaves no training images (the split has {len(train)})")
        val = _subset(train, order[:cfg.val_split])
        order = order[cfg.val_split:]
        val_source = f"{cfg.val_split} images held out of the training split"
    else:
        val = test
        val_source = "the test split (as in the design report)"
    if cfg.limit_train:
        order = order[:cfg.limit_train]
    if cfg.val_split or cfg.limit_train:
        train = _subset(train, order.sort().values)
    return train, val, test, val_source
