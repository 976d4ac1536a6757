"""Shared fixtures: tiny generated datasets and a small real subset of the shared CIFAR-10 copy."""
from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from contract.constants import CIFAR10_CLASSES as _CLASSES

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/local_service.py (a service process with a free port and a clean stop) serves the tests too.
sys.path.insert(0, str(ROOT / "benchmarks"))
from local_service import LocalService  # noqa: E402

# Absolute: make passes CIFAR10_DATA relative to the project root, and the browser needs absolute paths.
SHARED_CIFAR = Path(os.environ.get("CIFAR10_DATA") or ROOT.parent / "shared" / "datasets" / "cifar10").resolve()


CIFAR10_CLASSES = list(_CLASSES)


def cifar_test_images(n_per_class: int = 1) -> list[Path]:
    """The first n test JPEGs of each class of the shared CIFAR-10 copy, class by class."""
    return [p for c in CIFAR10_CLASSES for p in sorted((SHARED_CIFAR / "test" / c).glob("*.jpg"))[:n_per_class]]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Decoded-dataset caches go to a per-session temp folder, never the user's ~/.cache.
    monkeypatch.setenv("CIFAR10_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dataset-cache"))


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    """A PIL image as the bytes of a file in format fmt."""
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (with a valid CRC) but whose data is tiny: a bomb."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def make_image_folder(root: Path, classes=("cat", "dog", "frog"), per_class=(6, 3), size=32, seed=0) -> Path:
    """train/<class>/ and test/<class>/ of random PNGs (sizes other than 32 exercise resizing)."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class, strict=True):
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


def run_training(*argv: str) -> int:
    """`python -m training ARGV` in this process. Training runs get --deterministic: the tests compare runs bit
    for bit, which CUDA only gives with deterministic kernels (the flag changes nothing on the CPU)."""
    from training.cli import get_args_parser, main

    extra = [] if "--eval-only" in argv else ["--deterministic"]
    return main(get_args_parser().parse_args([*argv, *extra]))


def interrupt_after(monkeypatch, epoch: int) -> Callable[[], None]:
    """Make training raise KeyboardInterrupt (Ctrl-C) once `epoch` is recorded (last.pt written); returns the
    function that puts the real epoch recorder back."""
    from training import train as training_train

    real_record = training_train._record_epoch

    def stop(run, done, *args):
        real_record(run, done, *args)
        if done == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(training_train, "_record_epoch", stop)
    return lambda: monkeypatch.setattr(training_train, "_record_epoch", real_record)


@pytest.fixture(scope="session")
def brief_checkpoint(tmp_path_factory, real_subset) -> Path:
    """best.pt of 2 epochs on the real subset: a real, if weak, model for export and serving."""
    from training.cli import get_args_parser, main

    out = tmp_path_factory.mktemp("brief-train")
    argv = ["--data", str(real_subset), "--epochs", "2", "--batch-size", "32", "--checkpoint-dir", str(out), "--quiet"]
    assert main(get_args_parser().parse_args(argv)) == 0
    return out / "best.pt"


@pytest.fixture(scope="session")
def bento_home(tmp_path_factory, brief_checkpoint) -> Path:
    """A temporary BENTOML_HOME holding cifar10-simplecnn:latest, exported from brief_checkpoint."""
    import subprocess
    import sys

    if not (SHARED_CIFAR / "test").is_dir():
        pytest.skip("the shared CIFAR-10 copy is needed for the export's parity check")
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.run([sys.executable, "-m", "export", "--checkpoint", str(brief_checkpoint), "--out",
                           str(home / "artifacts"), "--data", str(SHARED_CIFAR), "--parity-images", "1000",
                           "--bentoml", "--quiet"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return home


def own_home(bento_home: Path, folder: Path) -> Path:
    """A BENTOML_HOME with bento_home's models but a Prometheus folder of its own: a starting server empties
    <home>/prometheus_multiproc_dir, which would reset the metrics of a server already running on that home."""
    home = folder / "bentoml-home"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(bento_home / "models", target_is_directory=True)
    return home


def Server(target: str, home: Path, extra_env: dict | None = None, cwd: Path = ROOT,
           fail_on: str | None = None) -> LocalService:
    """A real `bentoml serve` subprocess on a free loopback port, using home as BENTOML_HOME; .stop() ends
    its process group. fail_on: a log line that means it will not start (raises at once)."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", **(extra_env or {})}
    return LocalService.bentoml(target, env=env, cwd=cwd, log_dir=home, fail_on=fail_on)


@pytest.fixture(scope="session")
def server(bento_home) -> Server:
    """The service from bento_home's model, served once for every test module that talks to it."""
    srv = Server("serving.service:CIFAR10Classifier", bento_home)
    yield srv
    srv.stop()
