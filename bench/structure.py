"""The shape of the hpsearch package: import floors and cycles, Optuna-internal accesses, literals.

    .venv/bin/python bench/structure.py [PACKAGE_DIR [SCHEMA_FILE]]   (default: hpsearch/ of this checkout)

Run it on two checkouts (e.g. `git worktree add /tmp/old <rev>`) to compare before and after.

floors    the import graph between hpsearch modules (every import, at module level or inside a
          function), its strongly connected components (an import cycle is a component of two or
          more modules) and the number of floors: the longest chain of imports, cycles collapsed.
internal  lines that touch Optuna internals, by three rules:
          - a name imported from a private Optuna module (a dotted path with a part starting with
            "_"), or a line that uses such a name;
          - an attribute access `x._name` (x not self/cls) or `super()._name` where `_name` is a
            private name defined somewhere in Optuna's source;
          - a string holding SQL (SELECT/INSERT/UPDATE/DELETE ... FROM/INTO/SET) that names one of
            Optuna's tables.
literals  string literals in hpsearch equal to an attribute key that hpsearch stores on studies
          or trials (listed in hpsearch's schema module when one exists; otherwise the keys
          found as the first argument of set_user_attr / set_system_attr / set_trial_*_attr).
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

OPTUNA_TABLES = ("trials", "studies", "trial_values", "trial_params", "trial_intermediate_values",
                 "trial_user_attributes", "trial_system_attributes", "study_user_attributes",
                 "study_system_attributes", "trial_heartbeats", "version_info", "study_directions",
                 "alembic_version")
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b.*\b(FROM|INTO|SET)\b", re.S)
TABLE = re.compile(r"\b(" + "|".join(OPTUNA_TABLES) + r")\b")


def modules(root: Path) -> dict[str, Path]:
    package = root.name
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    assert package in found or any(m.startswith(package + ".") for m in found)
    return found


def imports(name: str, path: Path, known: dict[str, Path], top_level: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    nodes = tree.body if top_level else list(ast.walk(tree))
    for node in nodes:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            # `from hpsearch import data` names the module hpsearch.data; `from hpsearch.data import
            # Raw` names hpsearch.data: take the longest known prefix.
            parts = target.split(".")
            for cut in range(len(parts), 0, -1):
                candidate = ".".join(parts[:cut])
                if candidate in known:
                    if candidate != name and not name.startswith(candidate + "."):
                        out.add(candidate)
                    break
    return out


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    result: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            result.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def floors(graph: dict[str, set[str]], comps: list[list[str]]) -> int:
    of = {m: i for i, comp in enumerate(comps) for m in comp}
    dag: dict[int, set[int]] = defaultdict(set)
    for v, ws in graph.items():
        for w in ws:
            if of[v] != of[w]:
                dag[of[v]].add(of[w])
    depth: dict[int, int] = {}

    def height(c: int) -> int:
        if c not in depth:
            depth[c] = 1 + max((height(d) for d in dag[c]), default=0)
        return depth[c]

    return max(height(c) for c in range(len(comps)))


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest import chain (the graph has no cycles when this is asked)."""
    memo: dict[str, list[str]] = {}

    def chain(v: str) -> list[str]:
        if v not in memo:
            memo[v] = [v] + max((chain(w) for w in graph[v]), key=len, default=[])
        return memo[v]

    return max((chain(v) for v in graph), key=len)


def optuna_private_names() -> set[str]:
    import optuna

    names: set[str] = set()
    pattern = re.compile(r"(?:def|class)\s+(_[A-Za-z]\w*)|self\.(_[A-Za-z]\w*)\s*[:=]|^\s*(_[A-Za-z]\w*)\s*[:=]", re.M)
    for path in Path(optuna.__file__).parent.rglob("*.py"):
        for match in pattern.finditer(path.read_text(errors="replace")):
            names.add(next(g for g in match.groups() if g))
    return {n for n in names if not (n.startswith("__") and n.endswith("__"))}


def internal_lines(path: Path, private: set[str], sql: bool = True) -> set[int]:
    """Lines touching Optuna internals; `sql=False`: private names only (SQL strings left out)."""
    source = path.read_text()
    tree = ast.parse(source)
    lines: set[int] = set()
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optuna"):
            if any(part.startswith("_") for part in node.module.split(".")):
                lines.add(node.lineno)
                imported.update(alias.asname or alias.name for alias in node.names)
            elif any(alias.name.startswith("_") for alias in node.names):
                lines.add(node.lineno)
                imported.update(alias.asname or alias.name for alias in node.names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in imported:
            lines.add(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr in private:
            receiver = node.value
            if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
                continue
            lines.add(node.lineno)
        elif sql and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if SQL.search(node.value) and TABLE.search(node.value):
                lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def stored_keys(root: Path, found: dict[str, Path]) -> set[str]:
    for name, path in found.items():
        if name.endswith(".schema") or name.endswith(".attrs"):
            tree = ast.parse(path.read_text())
            keys = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                    and re.fullmatch(r"[a-z][a-z0-9_:.]*", n.value)}
            if keys:
                return keys
    for path in found.values():
        tree = ast.parse(path.read_text())
        names = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                 if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}
        if "SPEC_ATTR" in names:  # before the schema module: the key constants sat in study.py
            return {v for k, v in names.items() if k.isupper() and re.fullmatch(r"[a-z][a-z0-9_:.]*", v)}
    keys: set[str] = set()
    for path in found.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and re.search(
                    r"set_(trial_)?(user|system)_attr", node.func.attr) and len(node.args) >= 1:
                arg = node.args[-2] if len(node.args) >= 2 else node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    keys.add(arg.value)
    return keys


def _attrs_like(node: ast.AST) -> bool:
    """`x.user_attrs`, `x.system_attrs`, `attrs`, `user_attrs`: something holding stored attributes."""
    text = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return text.endswith("attrs")


def attribute_literals(tree: ast.AST, keys: set[str]) -> list[ast.Constant]:
    """String literals naming a stored key where an attribute is read or written: attrs.get("k"),
    attrs["k"], set_user_attr("k", v), a dict literal given to set_user_attrs / user_attrs= /
    system_attrs=, or "k" in attrs."""
    out: list[ast.Constant] = []

    def lit(n: ast.AST | None) -> None:
        if isinstance(n, ast.Constant) and n.value in keys:
            out.append(n)

    def dict_keys(n: ast.AST) -> None:
        if isinstance(n, ast.Dict):
            for k in n.keys:
                lit(k)

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _attrs_like(node.value):
            lit(node.slice)
        elif isinstance(node, ast.Compare) and any(_attrs_like(c) for c in node.comparators):
            lit(node.left)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            fn = node.func.attr
            if fn in ("get", "pop", "setdefault") and _attrs_like(node.func.value) and node.args:
                lit(node.args[0])
            elif re.fullmatch(r"set_(trial_)?(user|system)_attr", fn) and node.args:
                lit(node.args[-2] if len(node.args) >= 2 else node.args[0])
            elif re.fullmatch(r"set_(trial_)?(user|system)_attrs|set_study_attrs|set_attrs", fn):
                for a in node.args:
                    dict_keys(a)
        if isinstance(node, ast.Call):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if fn in ("set_user_attrs", "set_study_attrs"):
                for a in node.args:
                    dict_keys(a)
            for kw in node.keywords:
                if kw.arg in ("user_attrs", "system_attrs", "attrs"):
                    dict_keys(kw.value)
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "hpsearch").resolve()
    found = modules(root)
    graph = {name: imports(name, path, found) for name, path in found.items()}
    comps = components(graph)
    cycles = [c for c in comps if len(c) > 1]
    print(f"{root}: {len(found)} modules in {len({p.parent for p in found.values()})} folders, "
          f"{sum(len(p.read_text().splitlines()) for p in found.values())} lines")
    print(f"import floors: {floors(graph, comps)}")
    if not cycles:
        print("  longest chain: " + " -> ".join(m.removeprefix("hpsearch.") for m in longest_chain(graph)))
    print(f"import cycles (any import, also inside functions): {len(cycles)}"
          + "".join(f"\n  {' <-> '.join(c)}" for c in cycles))
    top = {name: imports(name, path, found, top_level=True) for name, path in found.items()}
    top_cycles = [c for c in components(top) if len(c) > 1]
    print(f"import cycles (module-level imports): {len(top_cycles)}"
          + "".join(f"\n  {' <-> '.join(c)}" for c in top_cycles))
    private = optuna_private_names()
    per_module = {name: internal_lines(path, private) for name, path in found.items()}
    touched = {name: len(lines) for name, lines in per_module.items() if lines}
    print(f"Optuna-internal accesses: {sum(touched.values())} lines in {len(touched)} modules")
    names_only = {name: len(internal_lines(found[name], private, sql=False)) for name in touched}
    print("  lines  of them private names (the rest: SQL naming Optuna's tables)  module")
    for name, count in sorted(touched.items(), key=lambda kv: -kv[1]):
        print(f"  {count:5d}  {names_only[name]:5d}  {name}")
    # A second argument names the schema to take the keys from (to count an older tree's literals
    # against today's full list of keys).
    keys = stored_keys(Path(sys.argv[2]).parent, {"x.schema": Path(sys.argv[2])}) if len(sys.argv) > 2 \
        else stored_keys(root, found)
    literal_in: dict[str, int] = {}
    for name, path in found.items():
        if name.endswith(".schema") or name.endswith(".attrs"):
            continue
        hits = len(attribute_literals(ast.parse(path.read_text()), keys))
        if hits:
            literal_in[name] = hits
    print(f"stored attribute keys: {len(keys)}; written as string literals where an attribute is read or "
          f"written: {sum(literal_in.values())} in {len(literal_in)} modules"
          + "".join(f"\n  {count:4d}  {name}" for name, count in sorted(literal_in.items(), key=lambda kv: -kv[1])))
    longest = []
    for name, path in found.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                longest.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    print("longest functions: " + ", ".join(f"{n} {f}" for f, n in [(f, n) for n, f in sorted(longest)[-6:][::-1]]))


if __name__ == "__main__":
    main()
