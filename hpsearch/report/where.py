"""`--where` filters: a tiny comparison language over the trial table, never Python's eval.

Grammar (keywords case-insensitive):

    expr    := and_expr ("or" and_expr)*
    and_expr:= unary ("and" unary)*
    unary   := "not" unary | "(" expr ")" | NAME OP VALUE
    OP      := < <= > >= == != =
    VALUE   := number | 'text' | "text" | true | false | bare-word (text)

NAME is a parameter (`lr`, or `params_lr`) or a column of the trial table (`val_acc`, `test_acc`,
`state`, `seed`, ...). A trial that has no value for NAME (an inactive conditional parameter, a
pruned trial's test_acc) never matches a comparison on it, not even `!=`; `not (...)` does include it.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hpsearch import schema
from hpsearch.errors import HpsearchError
from hpsearch.report.export import PARAM_PREFIX

if TYPE_CHECKING:
    import pandas as pd

# Columns a filter may name besides the parameters (a whitelist: nothing else is reachable).
# Most are trial attributes (hpsearch.schema), as hpsearch.report.export names its columns.
COLUMNS = ("number", "state", "value", schema.NAME, schema.CONFIG_ID, schema.SEED, schema.IS_REPEAT, schema.REPEAT_OF,
           schema.DIVERGENT, schema.VAL_ACC, schema.VAL_LOSS, schema.TEST_ACC, schema.TEST_LOSS, schema.BEST_EPOCH,
           schema.EPOCHS_TRAINED, schema.PRUNED_AT_EPOCH, schema.DURATION_S, schema.TRAIN_TIME_S, schema.DEVICE,
           schema.WORKER, "config_seeds", "config_complete", "config_pruned", "config_failed", "config_pending",
           "config_clean")

_TOKEN = re.compile(r"""\s*(?:
    (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
  | (?P<str>'[^']*'|"[^"]*")
  | (?P<op><=|>=|==|!=|<|>|=)
  | (?P<paren>[()])
  | (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)
)""", re.VERBOSE)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "=": operator.eq, "!=": operator.ne,
}
_KEYWORDS = {"and", "or", "not"}


@dataclass(frozen=True)
class Compare:
    name: str
    op: str
    value: Any


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or" | "not"
    args: tuple[Any, ...]


Node = Compare | BoolOp


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokenize(expr: str) -> list[Token]:
    tokens, pos = [], 0
    text = expr.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise HpsearchError(f"--where {expr!r}: cannot read {text[pos:].strip()!r}; expected "
                                "NAME OP VALUE joined by and/or, e.g. \"test_acc < 0.15 and lr >= 0.01\"")
        kind = m.lastgroup or ""
        tokens.append(Token(kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = tokenize(expr)
        self.i = 0

    def fail(self, what: str) -> HpsearchError:
        got = self.tokens[self.i].text if self.i < len(self.tokens) else "the end"
        return HpsearchError(f"--where {self.expr!r}: expected {what}, but got {got!r}")

    def peek_word(self) -> str | None:
        tok = self.tokens[self.i] if self.i < len(self.tokens) else None
        return tok.text.lower() if tok is not None and tok.kind == "word" else None

    def parse(self) -> Node:
        if not self.tokens:
            raise HpsearchError("--where must be a comparison such as \"val_acc > 0.95\", but got an empty string")
        node = self.or_expr()
        if self.i != len(self.tokens):
            raise self.fail("'and', 'or' or the end")
        return node

    def or_expr(self) -> Node:
        args = [self.and_expr()]
        while self.peek_word() == "or":
            self.i += 1
            args.append(self.and_expr())
        return args[0] if len(args) == 1 else BoolOp("or", tuple(args))

    def and_expr(self) -> Node:
        args = [self.unary()]
        while self.peek_word() == "and":
            self.i += 1
            args.append(self.unary())
        return args[0] if len(args) == 1 else BoolOp("and", tuple(args))

    def unary(self) -> Node:
        if self.peek_word() == "not":
            self.i += 1
            return BoolOp("not", (self.unary(),))
        tok = self.tokens[self.i] if self.i < len(self.tokens) else None
        if tok is not None and tok.text == "(":
            self.i += 1
            node = self.or_expr()
            if self.i >= len(self.tokens) or self.tokens[self.i].text != ")":
                raise self.fail("')'")
            self.i += 1
            return node
        return self.compare()

    def compare(self) -> Compare:
        name = self.peek_word()
        if name is None or name in _KEYWORDS:
            raise self.fail("a parameter or metric name")
        name = self.tokens[self.i].text
        self.i += 1
        if self.i >= len(self.tokens) or self.tokens[self.i].kind != "op":
            raise self.fail(f"a comparison operator (<, <=, >, >=, ==, !=) after {name!r}")
        op = self.tokens[self.i].text
        self.i += 1
        if self.i >= len(self.tokens) or self.tokens[self.i].kind not in ("num", "str", "word"):
            raise self.fail(f"a value after {name} {op}")
        tok = self.tokens[self.i]
        self.i += 1
        return Compare(name, op, _literal(tok))


def _literal(tok: Token) -> Any:
    if tok.kind == "num":
        return float(tok.text)
    if tok.kind == "str":
        return tok.text[1:-1]
    low = tok.text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("nan", "inf", "-inf"):
        raise HpsearchError(f"--where: compare with a number, not {tok.text!r} (missing values never match)")
    return tok.text  # a bare word is text: optimizer == adam, state == pruned


def parse(expr: str) -> Node:
    return _Parser(expr).parse()


# ---------------------------------------------------------------- evaluation


def resolve(name: str, columns: list[str]) -> str:
    """A filter name -> a table column; parameters by bare name, metric columns win a clash."""
    if name in COLUMNS and name in columns:
        return name
    if PARAM_PREFIX + name in columns:
        return PARAM_PREFIX + name
    if name.startswith(PARAM_PREFIX) and name in columns:
        return name
    params = sorted(c[len(PARAM_PREFIX):] for c in columns if c.startswith(PARAM_PREFIX))
    known = [c for c in COLUMNS if c in columns] + params
    from hpsearch.registry import unknown_name_message

    raise HpsearchError("--where: " + unknown_name_message("name", name, known).replace("is not registered",
                                                                                      "is not a parameter or metric"))


def names(node: Node) -> set[str]:
    if isinstance(node, Compare):
        return {node.name}
    return set().union(*(names(a) for a in node.args))


def validate(node: Node, columns: list[str]) -> None:
    """Fail on unknown names before any work is done."""
    for name in names(node):
        resolve(name, columns)


def evaluate(node: Node, frame: pd.DataFrame) -> pd.Series:
    """Boolean mask over the rows of the trial table."""
    if isinstance(node, Compare):
        return _compare(node, frame)
    masks = [evaluate(a, frame) for a in node.args]
    if node.op == "not":
        return ~masks[0]
    out = masks[0]
    for m in masks[1:]:
        out = (out & m) if node.op == "and" else (out | m)
    return out


def _compare(node: Compare, frame: pd.DataFrame) -> pd.Series:
    import pandas as pd

    col = frame[resolve(node.name, list(frame.columns))]
    fn = _OPS[node.op]
    present = col.map(_present)
    if isinstance(node.value, bool) or isinstance(node.value, str):
        if node.op not in ("==", "=", "!="):
            raise HpsearchError(f"--where: {node.name} {node.op} {node.value!r}: only == and != compare text")
        values = col.map(lambda v: v if isinstance(v, bool) else str(v))
        target = node.value if isinstance(node.value, bool) else str(node.value)
        return present & values.map(lambda v: fn(v, target)).astype(bool)
    nums = pd.to_numeric(col.map(lambda v: v if _is_number(v) else None), errors="coerce")
    if present.any() and nums[present].isna().all():
        raise HpsearchError(f"--where: {node.name} holds text (e.g. {col[present].iloc[0]!r}), so it cannot be "
                            f"compared with the number {node.value:g}; quote the value to compare as text")
    if node.op in ("==", "=", "!="):
        # Floats parsed from the command line equal the stored ones only up to rounding.
        equal = nums.map(lambda v: v == v and math.isclose(v, node.value, rel_tol=1e-9, abs_tol=1e-12))
        result = equal if node.op != "!=" else ~equal.astype(bool)
        return (nums.notna() & result).astype(bool)
    return (nums.notna() & nums.map(lambda v: v == v and fn(v, node.value))).astype(bool)


def _present(v: Any) -> bool:
    if v is None or isinstance(v, (list, tuple, dict)):
        return v is not None
    import pandas as pd

    return not bool(pd.isna(v))  # None, NaN, pd.NA and NaT alike: nullable columns hold all of them


def _is_number(v: Any) -> bool:
    # numbers.Real also admits numpy scalars (np.int64 is not an int subclass).
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def select(expr: str, frame: pd.DataFrame) -> pd.DataFrame:
    node = parse(expr)
    validate(node, list(frame.columns))
    return frame[evaluate(node, frame).to_numpy(dtype=bool)]
