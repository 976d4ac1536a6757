"""What `pip install .` ships: a wheel built from the tracked files holds every package and the service's pages."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT


def test_the_wheel_holds_every_package_and_the_pages_the_service_reads(tmp_path: Path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to know the tracked files")
    if importlib.util.find_spec("setuptools") is None:  # the build backend, used without build isolation
        pytest.skip("setuptools is not installed in this environment")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    src = tmp_path / "src"
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # /ui and / read these from beside serving/handlers.py: without them an installed service answers 500.
    assert {"serving/static/index.html", "serving/static/docs.html"} <= names
    for package in ("contract", "training", "training/models", "export", "serving", "serving/platform", "clients"):
        assert f"{package}/__init__.py" in names, package
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in names)
