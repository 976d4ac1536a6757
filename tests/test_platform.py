"""serving/platform/: what the service takes for granted about BentoML, Starlette and uvicorn, checked against the
installed packages (an upgrade that breaks one fails here, with the whole checklist to go through)."""
from __future__ import annotations

from pathlib import Path

from serving import platform


def test_the_installed_frameworks_meet_every_assumption():
    broken = platform.unmet()
    assert not broken, ("serving/platform/ relies on what no longer holds:\n" + "\n".join(broken)
                        + "\n\nThe whole checklist (serving/platform/__init__.py):\n" + platform.checklist())


def test_a_broken_assumption_is_named_with_its_file(monkeypatch):
    import bentoml

    monkeypatch.setattr(bentoml, "__version__", "1.5.2")
    assert platform.unmet() == ["fastlane.py: BentoML 1.5.2 is outside 1.4 to 1.5"]

    def moved():
        raise ImportError("no module named bentoml._internal.server")
    monkeypatch.setattr(platform, "ASSUMPTIONS", (platform.Assumption("swagger.py", "files", moved),))
    assert platform.unmet() == ["swagger.py: checking it failed "
                                "(ImportError: no module named bentoml._internal.server)"]


def test_the_checklist_names_every_file_of_the_fence():
    files = {p.name for p in Path(platform.__file__).parent.glob("*.py")}
    named = {a.where for a in platform.ASSUMPTIONS}
    assert named == files - {"__init__.py"}, (named, files)
