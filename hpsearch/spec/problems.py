"""How spec validation reports, and the small predicates every part of it shares.

Validation never stops at the first problem: each phase adds its problems, with the field's path,
to one Problems, and the spec fails once with all of them (SpecError, one line each, in the order
the phases ran).
"""

from __future__ import annotations

import difflib
import math
from typing import Any


class Problems:
    """The problems found so far; calling it adds one: problems("space.lr.low", "must be > 0")."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def __call__(self, where: str, msg: str) -> None:
        self.lines.append(f"{self.source}: {where}: {msg}")

    def __bool__(self) -> bool:
        return bool(self.lines)


def short(value: Any, limit: int = 80) -> str:
    """repr for a message: a hostile value (a huge list, a control character) stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(word: str, known: Any) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
