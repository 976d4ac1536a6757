"""What `pip install .` ships: a wheel built from the tracked files holds every package and the service's pages,
and on its own (no extras) it is the light client install: no torch, the client and cifar10-classify work."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to know the tracked files")
    if importlib.util.find_spec("setuptools") is None:  # the build backend, used without build isolation
        pytest.skip("setuptools is not installed in this environment")
    tmp = tmp_path_factory.mktemp("wheel")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    src = tmp / "src"
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp / "dist")], cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (built,) = (tmp / "dist").glob("*.whl")
    return built


def test_the_wheel_holds_every_package_and_the_pages_the_service_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    # /ui and / read these from beside serving/handlers.py: without them an installed service answers 500.
    assert {"serving/static/index.html", "serving/static/docs.html"} <= names
    for package in ("contract", "training", "training/models", "export", "serving", "serving/platform", "clients",
                    "clients/batch"):
        assert f"{package}/__init__.py" in names, package
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in names)


def test_the_wheel_alone_is_the_light_client_install(wheel, tmp_path):
    # A fresh venv, the wheel without extras: what a machine that only calls the service installs.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            env=env, cwd=tmp_path).stdout.lower()
    installed = {line.split("==")[0] for line in listed.splitlines()}
    assert {"httpx", "numpy", "pillow", "tqdm", "cifar10-service"} <= installed
    assert not installed & {"torch", "torchvision", "matplotlib", "onnx", "onnxruntime", "onnxscript", "bentoml", "ray",
                            "pyarrow"}
    ok = subprocess.run([str(bin_dir / "cifar10-classify"), "--help"], capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=60)
    assert ok.returncode == 0 and "--api-key" in ok.stdout, ok.stderr
    imported = subprocess.run([str(py), "-c", "from clients import Client; import contract.images, sys; "
                               "print('torch' in sys.modules)"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert imported.returncode == 0 and imported.stdout.strip() == "False", imported.stderr
    # The stages say in one sentence which extra they need.
    for command, extra in (("cifar10-train", "[train]"), ("cifar10-export", "[train]"), ("cifar10-batch", "[batch]")):
        refused = subprocess.run([str(bin_dir / command), "--help"], capture_output=True, text=True, env=env,
                                 cwd=tmp_path, timeout=60)
        assert refused.returncode == 1 and extra in refused.stderr and "Traceback" not in refused.stderr, command
