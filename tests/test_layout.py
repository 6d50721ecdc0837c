"""The package's shape (issue 28): folders in the order a run flows, imports only downward, the
planning side torch-free. A change that breaks one of these rules fails here, not in a review."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

PACKAGE = ROOT / "launcher"
# Every place (a folder, or a flat module at the top), lowest first: a place imports only places before it.
LAYERS = (
    "errors",
    "util",
    "model",
    "registry",
    "data",
    "recipe",
    "kernels",
    "compat",
    "engines",
    "checkpoint",
    "plan",
    "monitoring",
    "methods",
    "infer",
    "stages",
    "backends",
    "ui",
    "worker",
    "cli",
)
TORCH_FREE = ("recipe", "model", "plan", "backends")  # `launch plan` answers without torch
HEAVY = ("torch", "transformers", "deepspeed", "peft")


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _place(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root itself


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:`: names for annotations, never imported when the code runs."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }


def _imports(tree: ast.Module) -> set[str]:
    """Every launcher module an import anywhere in the file runs, lazy ones included (annotation-only ones not)."""
    names = set()
    skip = _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("launcher.")}


def _place_edges() -> dict[str, set[tuple[str, str]]]:
    """place -> {(importing module, imported place)}; imports within a place are its own business."""
    modules = _modules()
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for name, tree in modules.items():
        for target in _imports(tree):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]  # `from launcher.x import name`: the module x
            here, there = _place(name), _place(target)
            if here and there and here != there:
                edges[here].add((name, there))
    return edges


def test_every_place_has_a_layer():
    places = {_place(name) for name in _modules()} - {None}
    assert places <= set(LAYERS), f"add {sorted(places - set(LAYERS))} to LAYERS, where it belongs in the flow"


def test_imports_only_go_downward():
    """No cycle between any two places and no upward import: the place list reads as the flow."""
    rank = {place: i for i, place in enumerate(LAYERS)}
    upward = sorted(
        f"{module} imports launcher.{there}"
        for here, targets in _place_edges().items()
        for module, there in targets
        if rank[there] >= rank[here]
    )
    assert not upward, "upward imports (a place may import only places before it in LAYERS):\n" + "\n".join(upward)


def test_few_flat_modules():
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert flat == ["cli.py", "compat.py", "errors.py", "registry.py"], flat


def test_the_planning_side_imports_no_torch():
    """recipe/, model/, plan/ and backends/ import none of torch, transformers, deepspeed, peft at import time."""
    names = sorted(n for n in _modules() if _place(n) in TORCH_FREE and not n.endswith("__main__"))
    probe = (
        "import importlib, json, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_folder_has_a_readme_naming_each_module():
    """Each folder's README.md says its job and lists its modules (a module added without a line fails here)."""
    missing = []
    for folder in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        readme = folder / "README.md"
        text = readme.read_text(encoding="utf-8") if readme.exists() else ""
        missing += [
            f"{folder.name}/{path.name}"
            for path in sorted(folder.glob("*.py"))
            if path.name != "__init__.py" and f"`{path.name}`" not in text
        ]
    assert not missing, f"not in their folder's README.md: {missing}"
