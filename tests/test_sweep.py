"""`python -m training.sweep`: a small grid on a real subset, re-runs, an interrupted cell, bad grids."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from training import sweep
from training import train as training_train

pytestmark = pytest.mark.slow


def _flags(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--epochs", "1", "--limit-train", "200", "--data", str(data), "--quiet", "--out", str(out), *extra]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def swept(real_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    with pytest.MonkeyPatch.context() as mp:  # the session's dataset cache, as the autouse fixture does
        mp.setenv("CIFAR10_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dataset-cache"))
        assert sweep.cli(["--lr", "1e-3", "5e-4", "--batch-size", "64", *_flags(real_subset, out)]) == 0
    return out


def test_grid_writes_one_row_per_cell(swept):
    rows = list(csv.DictReader((swept / "sweep.csv").open()))
    assert [(float(r["lr"]), int(r["batch_size"])) for r in rows] == [(1e-3, 64), (5e-4, 64)]
    assert [r["cell"] for r in rows] == ["lr=0.001_bs=64", "lr=0.0005_bs=64"]
    summary = json.loads((swept / "sweep.json").read_text())
    assert summary["cells_total"] == summary["cells_finished"] == 2
    for row, cell in zip(rows, summary["cells"], strict=True):
        best = json.loads((swept / cell["cell"] / "result.json").read_text())
        assert cell == best and 0 <= cell["best_val_acc"] <= 1 and cell["img_s"] > 0 and cell["epochs"] == 1
        assert float(row["test_acc"]) == cell["test_acc"] and len(cell["val_acc_curve"]) == 1
    assert summary["best"] == max(summary["cells"], key=lambda c: c["best_val_acc"])["cell"]
    with Image.open(swept / "sweep.png") as im:
        assert im.width > 800 and im.height > 300


def test_rerun_skips_finished_cells(swept, real_subset, capsys):
    cells_before = {name: t for name, t in _mtimes(swept).items() if "/" in name}
    assert sweep.cli(["--lr", "1e-3", "5e-4", "--batch-size", "64", *_flags(real_subset, swept)]) == 0
    out = capsys.readouterr().out
    assert "cell 1/2: lr=0.001 bs=64 skipped" in out and "cell 2/2: lr=0.0005 bs=64 skipped" in out
    assert {name: t for name, t in _mtimes(swept).items() if "/" in name} == cells_before


def test_rerun_with_other_settings_is_refused(swept, real_subset, capsys):
    before = _mtimes(swept)
    argv = ["--lr", "1e-3", "--batch-size", "64", *_flags(real_subset, swept), "--epochs", "2"]
    assert sweep.cli(argv) == 2
    assert "lr=0.001_bs=64 holds a run with other settings (epochs)" in capsys.readouterr().err
    assert _mtimes(swept) == before


def test_an_interrupted_cell_resumes_from_its_last_checkpoint(real_subset, tmp_path, monkeypatch, capsys):
    argv = ["--lr", "1e-3", "--batch-size", "64", *_flags(real_subset, tmp_path), "--epochs", "2"]
    real_epoch = training_train.train_one_epoch
    calls = []

    def ctrl_c_in_epoch_2(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*a, **kw)

    monkeypatch.setattr(training_train, "train_one_epoch", ctrl_c_in_epoch_2)
    assert sweep.cli(argv) == 130
    assert "run the same command again to continue" in capsys.readouterr().err
    cell = tmp_path / "lr=0.001_bs=64"
    assert not (cell / "result.json").exists()
    monkeypatch.setattr(training_train, "train_one_epoch", real_epoch)
    assert sweep.cli(argv) == 0
    assert f"cell 1/1: lr=0.001 bs=64 resuming from {cell / 'last.pt'}" in capsys.readouterr().out
    result = json.loads((cell / "result.json").read_text())
    assert result["resumed"] is True and len(result["val_acc_curve"]) == 2
    assert [h["epoch"] for h in json.loads((cell / "history.json").read_text())] == [1, 2]


@pytest.mark.parametrize("grid, message", [
    (["--lr", "--batch-size", "64"], "argument --lr: expected at least one argument"),
    (["--lr", "1e-3", "--batch-size"], "argument --batch-size: expected at least one argument"),
    (["--lr", "0", "--batch-size", "64"], "--lr values must be positive, got 0.0"),
    (["--lr", "1e-3", "--batch-size", "64", "-8"], "--batch-size values must be positive, got -8"),
    (["--lr", "1e-3", "0.001", "--batch-size", "64"], "--lr lists 0.001 more than once"),
    (["--lr", "1e-3", "--batch-size", "64", "64"], "--batch-size lists 64 more than once"),
    (["--lr", "1e-3", "--batch-size", "64", "--frobnicate", "3"], "unrecognized arguments: --frobnicate 3"),
    (["--lr", "1e-3", "--batch-size", "64", "--checkpoint-dir", "x"], "--checkpoint-dir is set by the sweep"),
    (["--lr", "1e-3", "--batch-size", "64", "--weight-decay", "-1"], "weight_decay must not be negative"),
    (["--batch-size", "64"], "the following arguments are required: --lr"),
])
def test_bad_grids_are_one_sentence_and_exit_2_before_anything_runs(grid, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert sweep.cli([*grid, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()
