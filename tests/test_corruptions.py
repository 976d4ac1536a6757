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


def test_the_model_card_measures_each_export_and_reads_only_its_own_corruption_figures(bento_home, tmp_path):
    import shutil

    import onnxruntime as ort

    export = tmp_path / "simplecnn"
    shutil.copytree(bento_home / "artifacts", export)
    bench = [sys.executable, "benchmarks/corruptions.py", str(export), "--data", str(SHARED_CIFAR / "test"),
             "--images", "40", "--only", "gaussian_noise", "--severities", "1", "--save"]
    assert subprocess.run(bench, capture_output=True, text=True, cwd=ROOT, timeout=300).returncode == 0
    saved = json.loads((export / "corruptions.json").read_text())
    stale = tmp_path / "stale"
    shutil.copytree(export, stale)
    (stale / "corruptions.json").write_text(json.dumps({**saved, "model_onnx_sha256": "another graph"}))
    plot = tmp_path / "card.png"
    proc = subprocess.run([sys.executable, "benchmarks/model_card.py", str(export), str(stale), "--names", "fresh",
                           "old", "--data", str(SHARED_CIFAR / "test"), "--images", "60", "--duration", "1",
                           "--no-int8", "--plot", str(plot)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "req/s c32" in proc.stdout and plot.stat().st_size > 0
    rows = {(r["name"], r["runtime"]): r for r in json.loads(proc.stdout.strip().splitlines()[-1])["rows"]}
    assert set(rows) == {("fresh", "onnx"), ("old", "onnx")}  # --no-int8
    fresh = rows[("fresh", "onnx")]
    assert fresh["corrupted_acc"] == saved["mean_corrupted_acc"] and "corrupted_acc" not in rows[("old", "onnx")]
    assert fresh["rps_c1"] > 0 and fresh["rps_c32"] > 0 and fresh["non_200"] == 0 and fresh["training_minutes"] > 0
    # Its accuracy is the graph's own on the same seeded images.
    from corruptions import load_test_images
    meta = json.loads((export / "metadata.json").read_text())
    images, labels = load_test_images(SHARED_CIFAR / "test", meta["classes"], 60, 0)
    probs = ort.InferenceSession(str(export / "model.onnx")).run(["probabilities"], {"image": images})[0]
    assert fresh["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    bad = subprocess.run([sys.executable, "benchmarks/model_card.py", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "is not an export" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("files", [{"model.onnx": b""}, {"model.onnx": b"", "metadata.json": b'{"model": "x"}'},
                                   {"model.onnx": b"", "metadata.json": b"not json"}])
def test_benchmarks_refuse_a_folder_that_is_not_an_export(tmp_path, capsys, files):
    from common import read_export

    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(SystemExit) as stop:
        read_export(tmp_path)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "is not an export" in err and err.count("\n") == 1
