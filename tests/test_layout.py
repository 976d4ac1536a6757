"""The import rules of README's folder map, checked by parsing every module's imports (nothing is imported).

Imports run one way, with the pipeline: contract <- training <- export; contract <- serving; contract <- clients.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PACKAGES = ("contract", "training", "export", "serving", "clients")
# package -> first-party packages it must never import (anywhere in its files, lazily or not)
FORBIDDEN = {
    "contract": {"training", "export", "serving", "clients"},
    "training": {"export", "serving", "clients"},
    "export": {"serving", "clients"},
    "serving": {"training", "export", "clients"},
    "clients": {"training", "export", "serving"},
}
# Modules that are a stage's command line: no other stage may import them.
COMMAND_LINES = {"training.cli", "training.sweep", "training.__main__", "export.cli", "export.__main__",
                 "clients.cli", "clients.__main__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module_name: str | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """(imported module, enclosing class/function names) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = (module_name or _module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[str, tuple[str, ...]]] = []

    def visit(node: ast.AST, scope: tuple[str, ...]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, (*scope, child.name))
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, scope) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    parts = package[:len(package) - child.level + 1]
                    module = ".".join([*parts, child.module] if child.module else parts)
                    names = [module, *(f"{module}.{a.name}" for a in child.names)]
                    found.extend((n, scope) for n in names)
                else:
                    found.append((child.module, scope))
                    found.extend((f"{child.module}.{a.name}", scope) for a in child.names)
            visit(child, scope)

    visit(tree, ())
    return found


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_run_one_way_with_the_pipeline(package):
    bad = []
    for path in files(package):
        for module, _ in imports(path):
            top = module.split(".")[0]
            if top in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
            if module in COMMAND_LINES and top != package:
                bad.append(f"{path.relative_to(ROOT)} imports {top}'s command line ({module})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", ["contract", "clients"])
def test_no_torch_at_all(package):
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in files(package) for m, _ in imports(p) if m.split(".")[0] == "torch"]
    assert not bad, bad


def test_serving_imports_torch_only_on_the_torchscript_runtime():
    # The ONNX path (the CPU bento) has no torch installed: any other torch import would break it. The
    # TorchScript graph (the classifier's and the explainer's TorchScript runtime) imports it lazily, in its own code.
    allowed = {("backends.py", ("TorchScriptGraph", "__init__"))}
    seen = set()
    for path in files("serving"):
        for module, scope in imports(path):
            if module.split(".")[0] == "torch":
                seen.add((path.name, scope[:2]))
                assert (path.name, scope[:2]) in allowed, (path, scope)
    assert seen == allowed


def _reaches_inside_a_framework(module: str) -> bool:
    """bentoml's private packages, Starlette's private modules, uvicorn (BentoML runs it; the service never
    needs to name it)."""
    parts = module.split(".")
    if parts[0] in ("_bentoml_impl", "_bentoml_sdk", "bentoml_cli", "uvicorn", "circus"):
        return True
    if parts[0] == "bentoml" and any(p.startswith("_") for p in parts[1:]):
        return True
    return parts[0] == "starlette" and any(p.startswith("_") for p in parts[1:])


def test_only_serving_platform_reaches_into_framework_internals():
    platform = ROOT / "serving" / "platform"
    bad = [f"{p.relative_to(ROOT)}: {m}" for package in PACKAGES for p in files(package)
           if platform not in p.parents for m, _ in imports(p) if _reaches_inside_a_framework(m)]
    assert not bad, "only serving/platform/ may reach into BentoML, Starlette or uvicorn internals:\n" + "\n".join(bad)
    inside = {m for p in platform.glob("*.py") for m, _ in imports(p) if _reaches_inside_a_framework(m)}
    assert inside, "the rule above would catch nothing: serving/platform/ is where the internals are reached"


# What `pip install --no-deps .` plus these gives (docs/clients.md): the client-only install, no torch; and what
# `cifar10-classify --eval` adds, imported only where it is used.
CLIENT_ONLY = {"httpx", "numpy", "PIL"}
CLIENT_EVAL = {"tqdm", "matplotlib"}


# python -m clients.batch: the [batch] extra on top (docs/scale.md), never reached from the light client's modules.
BATCH_EXTRA = {"ray", "pyarrow", "onnxruntime"}


def _third_party_imports(start: list[Path], skip_eval: bool) -> list[str]:
    """Third-party imports of these files and of the contract modules they reach (as path: module)."""
    import sys

    todo, seen, found = [("clients", p) for p in start], set(), []
    while todo:
        _, path = todo.pop()
        for module, scope in imports(path):
            top = module.split(".")[0]
            if top in CLIENT_EVAL and scope and skip_eval:
                continue
            if top == "contract":
                name = ".".join(module.split(".")[:2])
                target = ROOT / (name.replace(".", "/") + ".py")
                if target.is_file() and name not in seen:
                    seen.add(name)
                    todo.append((name, target))
            elif top not in sys.stdlib_module_names and top != "clients":
                found.append(f"{path.relative_to(ROOT)}: {module}")
    return found


def test_clients_import_only_what_a_client_only_install_has():
    light = [p for p in files("clients") if "batch" not in p.relative_to(ROOT).parts]
    bad = [f for f in _third_party_imports(light, skip_eval=True) if f.split(": ")[1].split(".")[0] not in CLIENT_ONLY]
    assert not bad, f"clients/ (and the contract modules it uses) import beyond {sorted(CLIENT_ONLY)}: {bad}"
    reach = [f"{p.relative_to(ROOT)}: {m}" for p in light for m, _ in imports(p) if m.startswith("clients.batch")]
    assert not reach, f"the light client must not import the batch job: {reach}"


def test_the_batch_job_imports_only_its_extra():
    batch = files("clients/batch")
    assert batch, "clients/batch/ is where the batch job lives"
    allowed = CLIENT_ONLY | CLIENT_EVAL | BATCH_EXTRA
    bad = [f for f in _third_party_imports(batch, skip_eval=False) if f.split(": ")[1].split(".")[0] not in allowed]
    assert not bad, f"clients/batch/ imports beyond the light install and the [batch] extra: {bad}"


def test_the_model_files_import_only_torch():
    for path in (ROOT / "training" / "models").glob("*.py"):
        if path.name == "__init__.py":
            continue
        found = {m for m, _ in imports(path)}
        # A model file may build on a sibling model file (residual.py on airbench.py's layers): each is held to this
        # same rule, so the network still needs nothing but torch.
        siblings = {m for m in found if m.startswith("training.models.")}
        assert all((ROOT / "training" / "models" / f"{m.split('.')[2]}.py").is_file() for m in siblings), siblings
        tops = {m.split(".")[0] for m in found - siblings} - {"__future__", "math", "typing", "dataclasses"}
        assert tops <= {"torch"}, (path.name, tops)


def test_the_rules_would_catch_a_violation(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("def f():\n    from training.cli import main\n    from ..export import cli\n    from . import api\n")
    found = [m for m, _ in imports(bad, module_name="serving.probe")]
    assert {"training.cli", "export.cli", "serving.api"} <= set(found)


@pytest.mark.parametrize("bentofile", ["bentofile.yaml", "bentofile.gpu.yaml"])
def test_bentofiles_pack_every_package_the_service_imports(bentofile):
    spec = yaml.safe_load((ROOT / bentofile).read_text())
    included = {pattern.split("/")[0] for pattern in spec["include"]}
    needed, todo = set(), ["serving"]
    while todo:
        package = todo.pop()
        needed.add(package)
        for path in files(package):
            for module, _ in imports(path):
                top = module.split(".")[0]
                if top in PACKAGES and top not in needed:
                    todo.append(top)
    assert needed == {"serving", "contract"}
    assert needed <= included, f"{bentofile} includes {sorted(included)}, the service needs {sorted(needed)}"
    # Every module of those packages, matched as BentoML matches (gitignore patterns: * stops at a /).
    from pathspec import PathSpec

    spec_ = PathSpec.from_lines("gitwildmatch", spec["include"])
    left_out = [str(p.relative_to(ROOT)) for package in needed for p in files(package)
                if not spec_.match_file(str(p.relative_to(ROOT)))]
    assert not left_out, f"{bentofile} leaves out {left_out}"
