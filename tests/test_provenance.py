"""contract.provenance: the commit an artifact names says whether the code differed from it."""
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def _load_from(repo: Path):
    """contract/provenance.py imported from a copy inside `repo`, so it looks at that checkout."""
    spec = importlib.util.spec_from_file_location("provenance_copy", repo / "contract" / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    (tmp_path / "contract").mkdir()
    shutil.copy(ROOT / "contract" / "provenance.py", tmp_path / "contract" / "provenance.py")
    (tmp_path / "model.py").write_text("WIDTH = 32\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def _head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


def test_a_clean_checkout_gives_its_commit(checkout: Path):
    assert _load_from(checkout).git_commit() == _head(checkout)


def test_untracked_files_such_as_checkpoints_leave_it_clean(checkout: Path):
    (checkout / "best.pt").write_bytes(b"weights")
    assert _load_from(checkout).git_commit() == _head(checkout)


def test_edited_tracked_code_is_marked_dirty(checkout: Path):
    (checkout / "model.py").write_text("WIDTH = 64\n")
    assert _load_from(checkout).git_commit() == _head(checkout) + "-dirty"
    _git(checkout, "add", "model.py")  # staged but not committed: still not the commit's code
    assert _load_from(checkout).git_commit() == _head(checkout) + "-dirty"


def test_outside_a_checkout_there_is_no_commit(tmp_path: Path):
    (tmp_path / "contract").mkdir()
    shutil.copy(ROOT / "contract" / "provenance.py", tmp_path / "contract" / "provenance.py")
    assert _load_from(tmp_path).git_commit() is None
