"""The import layers: no two packages import each other, and the trainer never climbs into the queue.

Every import counts, also one inside a function (a lazy import is still a dependency); only imports
under `if TYPE_CHECKING:` do not, since they never run. A unit is a package of hpsearch
(hpsearch.queue, hpsearch.training, ...) or a top-level module (hpsearch.objective, hpsearch.models).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "hpsearch"


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _exists(module: str) -> bool:
    base = ROOT / module.replace(".", "/")
    return base.is_dir() or base.with_suffix(".py").exists()


def _runtime_imports(tree: ast.AST) -> list[str]:
    type_only = {id(n) for node in ast.walk(tree)
                 if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                 for sub in node.body for n in ast.walk(sub)}
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from hpsearch import schema` imports the module hpsearch.schema
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return [m for m in found if m.startswith("hpsearch.") and _exists(m)]


def import_edges() -> dict[str, dict[str, list[str]]]:
    """unit -> {imported unit: ["module -> imported module", ...]}"""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for target in _runtime_imports(ast.parse(path.read_text())):
            if _unit(target) != _unit(module):
                edges[_unit(module)][_unit(target)].append(f"{module} -> {target}")
    return edges


def test_no_two_packages_import_each_other() -> None:
    edges = import_edges()
    pairs = sorted({tuple(sorted((a, b))) for a, outs in edges.items() for b in outs if a in edges.get(b, {})})
    shown = [f"{a} <-> {b}: {edges[a][b][0]}; {edges[b][a][0]}" for a, b in pairs]
    assert not shown, "\n".join(shown)


def test_the_trainer_and_the_user_files_never_import_the_queue_or_the_worker() -> None:
    edges = import_edges()
    below = ["hpsearch.training", "hpsearch.objective", "hpsearch.models", "hpsearch.space", "hpsearch.spec"]
    climbing = [how for unit in below for target in ("hpsearch.queue", "hpsearch.worker", "hpsearch.ops", "hpsearch.cli")
                for how in edges.get(unit, {}).get(target, [])]
    assert not climbing, "\n".join(climbing)


def test_the_checker_sees_a_lazy_import_and_skips_a_type_only_one() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hpsearch.queue import study\n"
                     "def f():\n    from hpsearch.worker import loop\n")
    assert _runtime_imports(tree) == ["hpsearch.worker", "hpsearch.worker.loop"]
