"""The GPU check's pieces (scripts/device_check.sh, device_runtime_check.py, device_summary.py), run on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import SHARED_CIFAR

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_the_check_needs_an_output_folder():
    proc = _run("bash", "scripts/device_check.sh")
    assert proc.returncode != 0 and "usage: scripts/device_check.sh OUT_DIR" in proc.stderr


def test_the_summary_reads_each_run(tmp_path):
    run = tmp_path / "air-s0"
    run.mkdir()
    (run / "history.json").write_text(json.dumps([
        {"epoch": 1, "img_s": 100.0, "seconds": 5.0, "train_loss": 2.0},
        {"epoch": 2, "img_s": 300.0, "seconds": 4.0, "train_loss": 1.23456},
        {"epoch": 3, "img_s": 200.0, "seconds": 4.5, "train_loss": 1.0}]))
    (run / "results.md").write_text("- **Device**: cuda (NVIDIA H200); precision bf16; batch size 512\n"
                                    "- **Test Accuracy of best.pt**: 90.82% (fp32, 10000 test images)\n")
    (tmp_path / "cache").mkdir()  # not a run
    proc = _run(sys.executable, "scripts/device_summary.py", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures == {"runs": [{"run": "air-s0", "epochs": 3, "test_acc": 90.82, "median_img_s": 200,
                                 "train_s": 13.5, "final_train_loss": 1.0,
                                 "device": "cuda (NVIDIA H200); precision bf16; batch size 512"}]}
    assert "| air-s0 | 3 | 90.82 | 200 | 13.5 | 1.0 |" in proc.stdout


def test_the_runtime_check_compares_an_export_with_the_cpu(bento_home):
    proc = _run(sys.executable, "scripts/device_runtime_check.py", str(bento_home / "artifacts"), str(SHARED_CIFAR),
                "--device", "cpu", "--images", "300", "--seconds", "0.2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["images"] == 300 and figures["device"] == "cpu"
    assert figures["top1_agreement"] == 1.0 and figures["max_abs_dprob"] < 1e-6
    assert set(figures["device_img_s"]) == {"1", "16", "256"} and min(figures["cpu_img_s"].values()) > 0


def test_the_runtime_check_refuses_a_folder_without_a_model(tmp_path):
    proc = _run(sys.executable, "scripts/device_runtime_check.py", str(tmp_path), str(SHARED_CIFAR))
    assert proc.returncode == 2 and "has no model.ts" in proc.stderr
