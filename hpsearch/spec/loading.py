"""Reading a spec file: bounded YAML, then CLI overrides (`--set KEY.PATH=VALUE`), then validation."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from hpsearch.errors import HpsearchError
from hpsearch.spec.model import SpecError, StudySpec
from hpsearch.spec.parse import parse_spec

# Bounds that keep a hostile or mistyped spec from exhausting memory before it is even validated:
MAX_SPEC_BYTES = 1_000_000  # real specs are a few hundred bytes
MAX_YAML_NODES = 100_000  # nodes after expanding aliases (a 677-byte alias bomb expands to 10^9)
# Characters of scalars after expanding aliases: 90,000 aliases of one 100 KB scalar are under the
# node bound, yet 9 GB once validation, a message or the stored JSON walks them.
MAX_YAML_CHARS = 10 * MAX_SPEC_BYTES


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand beyond MAX_YAML_NODES nodes or
    MAX_YAML_CHARS characters of scalars.

    PyYAML builds aliased nodes once and shares them, so a "billion laughs" spec loads quickly but
    anything that walks it (validation, repr in a message, JSON for the storage) runs out of memory.
    The expansion is counted while the document is composed (an alias adds the whole of what it
    names), so a hostile spec stops at the alias that crosses a bound, before the rest is parsed.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, tuple[int, int]] = {}  # expanded (nodes, characters) of complete nodes
        self._open: list[str | None] = []  # anchors of the collections being composed
        self._nodes = self._chars = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise _AliasBomb("an alias refers to a node that contains it (recursive YAML)")
            node = super().compose_node(parent, index)
            nodes, chars = _expanded(node, self._sizes)  # all of it, every time it is named
        else:
            self._open.append(getattr(event, "anchor", None))
            try:
                node = super().compose_node(parent, index)
            finally:
                self._open.pop()
            nodes, chars = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0  # children count themselves
        self._nodes, self._chars = self._nodes + nodes, self._chars + chars
        _check_bounds(self._nodes, self._chars)
        return node


class _AliasBomb(yaml.YAMLError):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None


def _check_bounds(nodes: int, chars: int) -> None:
    if nodes > MAX_YAML_NODES:
        raise _AliasBomb(f"must expand to at most {MAX_YAML_NODES:,} YAML nodes, but its aliases (*name) "
                         f"expand to more")
    if chars > MAX_YAML_CHARS:
        raise _AliasBomb(f"must expand to at most {MAX_YAML_CHARS:,} characters of YAML values, but its "
                         "aliases (*name) expand to more")


def _expanded(node: yaml.Node, sizes: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(nodes, scalar characters) of a complete node with its aliases expanded; memoised per node,
    so linear in the graph."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    nodes, chars = 1, 0
    children: list[yaml.Node] = []
    if isinstance(node, yaml.ScalarNode):
        chars = len(node.value)
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    for child in children:
        n, c = _expanded(child, sizes)
        nodes, chars = nodes + n, chars + c
    _check_bounds(nodes, chars)
    sizes[key] = (nodes, chars)
    return nodes, chars


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
    text = _read_text(path)
    try:
        raw = safe_load(text)
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


# What a path is when it is not a regular file (stat's file types), for the one line that says so.
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _read_text(path: Path) -> str:
    """The file's text, read only from a regular file and never past the size bound: a FIFO would
    block, and /dev/urandom never ends."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise HpsearchError(f"{path}: spec file not found") from None
    except OSError as exc:
        raise HpsearchError(f"{path}: cannot read the spec file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise HpsearchError(f"{path}: must be a spec file (a regular file), but it is {kind}")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)  # a file that grows after stat() is still bounded
    except OSError as exc:
        raise HpsearchError(f"{path}: cannot read the spec file: {exc.strerror or exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        size = max(len(data), path.stat().st_size)
        raise HpsearchError(f"{path}: must be a spec of at most {MAX_SPEC_BYTES:,} bytes, but got {size:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HpsearchError(f"{path}: must be UTF-8 text, but got byte {exc.object[exc.start]:#04x} at offset "
                            f"{exc.start}") from None


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
