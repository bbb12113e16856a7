"""Reading a spec file: bounded YAML, then CLI overrides (`--set KEY.PATH=VALUE`), then validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hpsearch.errors import HpsearchError
from hpsearch.spec.model import SpecError, StudySpec
from hpsearch.spec.parse import parse_spec

# Bounds that keep a hostile or mistyped spec from exhausting memory before it is even validated:
MAX_SPEC_BYTES = 1_000_000  # real specs are a few hundred bytes
MAX_YAML_NODES = 100_000  # nodes after expanding aliases (a 677-byte alias bomb expands to 10^9)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand beyond MAX_YAML_NODES nodes.

    PyYAML builds aliased nodes once and shares them, so a "billion laughs" spec loads quickly but
    anything that walks it (validation, repr in a message, JSON for the storage) runs out of memory.
    The composed graph is measured before anything is constructed from it.
    """

    def compose_document(self) -> yaml.Node:  # type: ignore[override]
        node = super().compose_document()
        _check_expansion(node)
        return node


class _AliasBomb(yaml.YAMLError):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes of the fully expanded document (memoised per node: linear in the graph)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise _AliasBomb("an alias refers to a node that contains it (recursive YAML)")
        visiting.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        visiting.discard(key)
        if total > MAX_YAML_NODES:
            raise _AliasBomb(f"must expand to at most {MAX_YAML_NODES:,} YAML nodes, but its aliases (*name) "
                             f"expand to more")
        sizes[key] = total
        return total

    size(root)


def safe_load(text: str) -> Any:
    """yaml.safe_load with alias expansion bounded (see _BoundedLoader)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> StudySpec:
    """Read a YAML file and validate it; `overrides` are top-level keys and `sets` KEY.PATH=VALUE from the CLI."""
    path = Path(path)
    raw = _read(path)
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    for assignment in sets or []:
        apply_set(raw, assignment, str(path))
    return parse_spec(raw, source=str(path))


def _read(path: Path) -> dict[str, Any]:
    """The file's mapping of spec fields; every way a file can fail to be one is one line."""
    if not path.is_file():
        raise HpsearchError(f"{path}: spec file not found")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise HpsearchError(f"{path}: must be a spec of at most {MAX_SPEC_BYTES:,} bytes, but got {size:,} bytes")
    try:
        raw = safe_load(path.read_text())
    except UnicodeDecodeError as exc:
        raise HpsearchError(f"{path}: must be UTF-8 text, but got byte {exc.object[exc.start]:#04x} at offset "
                            f"{exc.start}") from None
    except RecursionError:
        raise HpsearchError(f"{path}: malformed YAML: nested too deeply") from None
    except _AliasBomb as exc:
        raise HpsearchError(f"{path}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise HpsearchError(f"{path}:{where}: malformed YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError([f"{path}: must be a mapping of spec fields, but got {type(raw).__name__}"])
    return raw


def apply_set(raw: dict[str, Any], assignment: str, source: str = "--set") -> None:
    """`--set dataset.root=/data` or `--set space.lr.choices=[0.1,0.01]` (values parsed as YAML)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise HpsearchError(f"--set must be KEY.PATH=VALUE, but got {assignment!r}")
    try:
        value = safe_load(text)
    except (yaml.YAMLError, RecursionError):
        raise HpsearchError(f"--set {key}: value {text!r} is not valid YAML") from None
    node: Any = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if isinstance(node.get(part), str) and part in ("dataset", "sampler", "pruner"):
            node[part] = {"name": node[part]}
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise HpsearchError(f"{source}: --set {key}: {part!r} is not a mapping")
    node[parts[-1]] = value
