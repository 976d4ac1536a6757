"""benchmarks/reference_train.py: the textbook loop and its component swaps (docs/experiments.md, issue 17)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import reference_train  # noqa: E402
from reference_train import TensorBatches  # noqa: E402

HISTORY_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "img_s", "epoch_seconds",
                "samples"}


def test_tensor_batches_visit_every_image_once_per_pass_in_a_new_order():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 32, 32, 3).contiguous()
    labels = torch.arange(10)
    batches = TensorBatches(images, labels, 4, torch.Generator().manual_seed(0))
    first = [y for _, y in batches]
    second = torch.cat([y for _, y in batches])
    assert [len(y) for y in first] == [4, 4, 2]
    assert sorted(torch.cat(first).tolist()) == sorted(second.tolist()) == list(range(10))
    assert torch.cat(first).tolist() != second.tolist()
    x, _ = next(iter(TensorBatches(images, labels, 10)))  # evaluation: no augmentation, in order
    assert x.shape == (10, 3, 32, 32) and x.is_contiguous()  # the textbook loop's plain NCHW batches
    assert torch.allclose(x[3, 0], torch.full((32, 32), (3 / 255 - 0.4914) / 0.247), atol=1e-5)


def _main(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["reference_train.py", *argv])
    return reference_train.main()


def test_textbook_loop_writes_the_training_history_fields(real_subset, tmp_path, monkeypatch, capsys):
    out = str(tmp_path)
    assert _main(monkeypatch, "--data", str(real_subset), "--epochs", "1", "--workers", "0", "--out", out) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["swap"] == [] and summary["best_epoch"] == 1
    (epoch,) = json.loads((tmp_path / "history.json").read_text())
    assert set(epoch) == HISTORY_KEYS and epoch["samples"] == 600 and epoch["val_acc"] == summary["best_test_acc"]


def test_every_component_swapped_in_gives_the_projects_run(real_subset, tmp_path, monkeypatch, capsys):
    """The three swaps cover every difference between the two loops: with them the textbook loop makes the same
    steps as `python -m training` (fp32), so a swap's effect on accuracy is that component's. (Until the
    project seeded its streams once, a fourth, epoch-seeds, was needed: see the next test.)"""
    from training.cli import get_args_parser, main

    swaps = [arg for name in ("tensor-data", "channels-last", "fused-adam") for arg in ("--swap", name)]
    assert _main(monkeypatch, "--data", str(real_subset), "--epochs", "2", "--seed", "3", "--out",
                 str(tmp_path / "textbook"), *swaps) == 0
    assert main(get_args_parser().parse_args(["--data", str(real_subset), "--epochs", "2", "--seed", "3",
                                              "--precision", "fp32", "--quiet",
                                              "--checkpoint-dir", str(tmp_path / "project")])) == 0
    textbook, project = (json.loads((tmp_path / name / "history.json").read_text()) for name in ("textbook", "project"))
    assert set(textbook[0]) == HISTORY_KEYS
    for ours, theirs in zip(textbook, project, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-5)
        assert ours["train_acc"] == theirs["train_acc"] and ours["val_acc"] == theirs["val_acc"]


def test_the_old_per_epoch_seeding_changes_the_run_from_its_second_epoch(real_subset, tmp_path, monkeypatch):
    """epoch-seeds restarts the streams from (seed, epoch): epoch 1 draws other numbers than the seed-once
    loop, and the swap is what it says (each epoch's streams depend on the epoch alone)."""
    runs = {}
    for name, extra in (("once", []), ("epochs", ["--swap", "epoch-seeds"])):
        assert _main(monkeypatch, "--data", str(real_subset), "--epochs", "2", "--seed", "3", "--out",
                     str(tmp_path / name), "--swap", "tensor-data", *extra) == 0
        runs[name] = json.loads((tmp_path / name / "history.json").read_text())
    assert [e["train_loss"] for e in runs["once"]] != [e["train_loss"] for e in runs["epochs"]]
    batches = TensorBatches(torch.zeros(8, 32, 32, 3, dtype=torch.uint8), torch.arange(8), 8,
                            torch.Generator().manual_seed(0), epoch_seed=3)
    first, second = ([y for _, y in batches] for _ in range(2))
    torch.manual_seed(3 * 1_000_003 + 1)
    assert torch.equal(first[0], torch.randperm(8, generator=torch.Generator().manual_seed(3 * 1_000_003 + 1)))
    assert not torch.equal(first[0], second[0])


def test_the_half_restarts_restart_one_stream_each():
    images, labels = torch.zeros(8, 32, 32, 3, dtype=torch.uint8), torch.arange(8)
    epoch_1 = 3 * 1_000_003 + 1

    aug = TensorBatches(images, labels, 8, torch.Generator().manual_seed(0), epoch_seed=3, restart="aug")
    torch.manual_seed(11)
    (_, order), = list(aug)
    assert torch.equal(order, torch.randperm(8, generator=torch.Generator().manual_seed(epoch_1)))
    after = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(after, torch.rand(3))  # dropout's stream ran on, untouched

    kept = torch.Generator().manual_seed(0)
    dropout = TensorBatches(images, labels, 8, torch.Generator().manual_seed(0), epoch_seed=3, restart="dropout")
    (_, order), = list(dropout)
    assert torch.equal(order, torch.randperm(8, generator=kept))  # the data generator as seeded once
    after = torch.rand(3)
    torch.manual_seed(epoch_1)
    assert torch.equal(after, torch.rand(3))


def test_two_epoch_seeds_swaps_are_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    assert _main(monkeypatch, "--data", str(tmp_path), "--swap", "tensor-data", "--swap", "epoch-seeds-aug",
                 "--swap", "epoch-seeds-dropout") == 2
    assert "are alternatives: pick one" in capsys.readouterr().err


def test_textbook_loop_refuses_a_folder_without_splits(tmp_path, monkeypatch, capsys):
    assert _main(monkeypatch, "--data", str(tmp_path)) == 2
    assert "no train/ and test/" in capsys.readouterr().err
