"""The documentation stays true: every documented command exists with the flags it is shown with, every link
resolves, and README.md stays short. Cheap: each command's --help runs once."""
from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
# How a documented command starts -> the command whose --help lists its flags.
COMMANDS = {
    ("python", "-m", "training.sweep"): [sys.executable, "-m", "training.sweep"],
    ("python", "-m", "training"): [sys.executable, "-m", "training"],
    ("cifar10-train",): [str(BIN / "cifar10-train")],
    ("python", "-m", "export"): [sys.executable, "-m", "export"],
    ("cifar10-export",): [str(BIN / "cifar10-export")],
    ("cifar10-classify",): [str(BIN / "cifar10-classify")],
    ("python", "-m", "clients"): [sys.executable, "-m", "clients"],
    ("python", "-m", "clients.batch"): [sys.executable, "-m", "clients.batch"],
    ("cifar10-batch",): [str(BIN / "cifar10-batch")],
    ("scripts/container_smoke.sh",): ["bash", "scripts/container_smoke.sh"],
    ("scripts/kube_smoke.sh",): ["bash", "scripts/kube_smoke.sh"],
}
for script in sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py")):
    if script.name not in ("serve_peer.py", "native_service.py", "local_service.py", "common.py"):  # not commands
        rel = str(script.relative_to(ROOT))
        COMMANDS[("python", rel)] = [sys.executable, rel]


def code_lines(path: Path) -> list[str]:
    """Lines of the indented and fenced code blocks, continuation lines joined, comments dropped."""
    lines, out, in_fence, prev_blank, in_block = path.read_text().splitlines(), [], False, True, False
    for line in lines:
        if line.strip().startswith("```"):
            in_fence = not in_fence
            continue
        indented = line.startswith("    ") and (prev_blank or in_block)
        if in_fence or indented:
            in_block = not in_fence
            out.append(line.strip())
        elif line.strip():
            in_block = False
        prev_blank = not line.strip()
    joined: list[str] = []
    for line in out:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line
        else:
            joined.append(line)
    return [re.sub(r"\s+#\s.*$", "", line) for line in joined]


def documented_commands() -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(doc, command key, its argv after the key) for every documented invocation of a project command."""
    found = []
    for doc in DOCS:
        for line in code_lines(doc):
            try:
                argv = shlex.split(line)
            except ValueError:
                continue
            # Drop what comes before the command: VAR=value assignments, /usr/bin/time -v, torchrun's own flags.
            while argv and (re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]) or argv[0] in ("/usr/bin/time", "-v")):
                argv = argv[1:]
            if argv[:1] == ["torchrun"] and "-m" in argv:
                argv = ["python", *argv[argv.index("-m"):]]
            for key in sorted(COMMANDS, key=len, reverse=True):
                if tuple(argv[:len(key)]) == key:
                    found.append((doc.name, key, argv[len(key):]))
                    break
    return found


@functools.lru_cache(maxsize=None)
def help_text(key: tuple[str, ...]) -> str:
    proc = subprocess.run([*COMMANDS[key], "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, f"{' '.join(key)} --help failed: {proc.stderr[-2000:]}"
    return proc.stdout


def test_every_documented_command_exists_with_its_flags():
    commands = documented_commands()
    keys = {key for _, key, _ in commands}
    # Each --help starts an interpreter that imports torch: run them side by side to fill both cores.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(help_text, keys))
    # The stages' commands are all documented somewhere.
    for must in [("python", "-m", "training"), ("python", "-m", "export"), ("cifar10-classify",),
                 ("python", "-m", "training.sweep"), ("scripts/container_smoke.sh",),
                 ("python", "-m", "clients.batch")]:
        assert must in keys, f"{' '.join(must)} is not documented"
    problems = [f"{doc}: {' '.join(key)} {flag} (not in its --help)"
                for doc, key, rest in commands for flag in unknown_flags(key, rest)]
    assert not problems, "\n".join(problems)


def unknown_flags(key: tuple[str, ...], rest: list[str]) -> list[str]:
    """The --flags in rest that the command's --help does not list as a whole flag (a prefix of one is unknown:
    argparse would take it as an abbreviation today and refuse it as ambiguous once a similar flag is added)."""
    text = help_text(key)
    flags = (a.split("=")[0] for a in rest if a.startswith("--"))
    return [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]


def test_documented_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    used = {m for doc in DOCS for m in re.findall(r"`make ([a-z-]+)", doc.read_text())}
    assert used and used <= targets, used - targets


def _anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_relative_link_resolves():
    problems = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            if not path.exists():
                problems.append(f"{doc.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md":
                anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.*)$", path.read_text(), re.M)}
                if anchor not in anchors:
                    problems.append(f"{doc.name}: {target} (no such heading)")
    assert not problems, "\n".join(problems)


def test_readme_is_the_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for heading in ("## Two commands", "## Walkthrough", "## Where things are", "## Documentation"):
        assert heading in text


def test_the_checker_sees_a_wrong_flag(tmp_path, monkeypatch):
    doc = tmp_path / "x.md"
    doc.write_text("Run it:\n\n    python -m training --no-such-flag 3 --limit-tr 9 --seed=1   # a comment\n")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", [doc])
    [(_, key, rest)] = documented_commands()
    assert key == ("python", "-m", "training") and rest == ["--no-such-flag", "3", "--limit-tr", "9", "--seed=1"]
    assert unknown_flags(key, rest) == ["--no-such-flag", "--limit-tr"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_have_no_stale_module_paths(doc):
    # Modules that moved in the restructuring; a doc naming them would send a reader to a missing file.
    stale = ["serving/preprocess.py", "serving.preprocess", "training/model.py", "training.train:cli"]
    text = doc.read_text()
    assert not [s for s in stale if s in text]
