import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, make_cifar_batches, make_image_folder
from training.cli import get_args_parser, main
from training.data import DataError, load_split


def test_image_folder_layout_any_class_count(tmp_path):
    root = make_image_folder(tmp_path, classes=("a", "b", "c"), per_class=(5, 2))
    train = load_split(root, "train", cache_dir=tmp_path / "cache")
    test = load_split(root, "test", cache_dir=tmp_path / "cache")
    assert train.images.shape == (15, 32, 32, 3) and train.images.dtype == torch.uint8
    assert train.classes == ["a", "b", "c"] and test.classes == train.classes
    assert train.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    pixels = np.array(Image.open(root / "train" / "b" / "0001.png"))
    assert torch.equal(train.images[6], torch.from_numpy(pixels))


def test_other_sizes_are_resized_to_32(tmp_path):
    root = make_image_folder(tmp_path, per_class=(2, 1), size=50)
    Image.new("L", (20, 70), 128).save(root / "train" / "cat" / "gray.png")  # grayscale too
    split = load_split(root, "train", cache_dir=tmp_path / "cache")
    assert split.images.shape[1:] == (32, 32, 3)
    assert split.images.shape[0] == 7


def test_cifar_batches_layout(tmp_path):
    root = make_cifar_batches(tmp_path, per_batch=4)
    train, test = load_split(root, "train"), load_split(root, "test")
    assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    import pickle
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)
    first = torch.from_numpy(raw["data"][0].reshape(3, 32, 32)).permute(1, 2, 0)  # CHW -> HWC
    assert torch.equal(test.images[0], first)


def test_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path, monkeypatch):
    import training.data

    root = make_image_folder(tmp_path / "d", per_class=(2, 1))
    cache = tmp_path / "cache"
    first = load_split(root, "train", cache_dir=cache)
    files = list(cache.glob("train-*.pt"))
    assert len(files) == 1

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache holds it")

    with monkeypatch.context() as m:
        m.setattr(training.data, "load_image", no_decoding)  # the second load must come from the cache alone
        assert torch.equal(load_split(root, "train", cache_dir=cache).images, first.images)
    target = root / "train" / "cat" / "0000.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(target)
    os.utime(target, ns=(1, 1))  # a different mtime even on coarse-grained file systems
    changed = load_split(root, "train", cache_dir=cache)
    assert changed.images[0, 0, 0].tolist() == [255, 0, 0]
    assert len(list(cache.glob("train-*.pt"))) == 2


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "has neither layout"),
    (lambda p: (p / "train").mkdir(parents=True) or (p / "test").mkdir(), "has no class folders"),
    (lambda p: (p / "train" / "cat").mkdir(parents=True) or (p / "test" / "cat").mkdir(parents=True),
     "has no images"),
])
def test_bad_folders_are_one_clear_error(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message) as info:
        load_split(root, "train")
    assert "ImageFolder" in str(info.value) and "cifar-10-batches-py" in str(info.value)


def test_corrupt_image_names_the_file(tmp_path):
    root = make_image_folder(tmp_path, per_class=(2, 1))
    (root / "train" / "dog" / "0001.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="0001.png"):
        load_split(root, "train")


def test_mismatched_classes_between_splits(tmp_path, capsys):
    root = make_image_folder(tmp_path, per_class=(2, 1))
    (root / "test" / "frog").rename(root / "test" / "toad")
    rc = main(get_args_parser().parse_args(["--data", str(root), "--epochs", "1", "--checkpoint-dir",
                                            str(tmp_path / "ck"), "--quiet"]))
    assert rc == 2 and "different class folders" in capsys.readouterr().err


def test_cli_missing_data_exits_2_with_one_sentence(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training", "--data", str(tmp_path / "nope"), "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: dataset folder") and "accepted" not in proc.stdout
