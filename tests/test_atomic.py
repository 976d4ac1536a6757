"""contract.atomic: files appear whole, with the permissions a plain open() gives them."""
import os
import stat
from pathlib import Path

import pytest

from contract.atomic import atomic_write


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_file_gets_the_usual_permissions_not_mkstemps_owner_only(tmp_path: Path, umask_022):
    target = tmp_path / "best.pt"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"weights"))
    assert target.read_bytes() == b"weights"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path):
    target = tmp_path / "history.json"
    target.write_text("old")

    def torn(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, torn)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]
