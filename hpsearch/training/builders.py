"""What a model, optimizer or schedule builder must take: checked before a user's is called.

Below the registries that call it (models, optim), so neither imports the other for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from hpsearch.errors import HpsearchError


def check_signature(fn: Callable[..., Any], what: str, expected: str, *args: Any) -> None:
    """A plugin with the wrong parameters fails with what it must take, not a TypeError inside."""
    try:
        signature = inspect.signature(fn)
    except ValueError:  # no introspectable signature (a builtin): let the call decide
        return
    try:
        signature.bind(*args)
    except TypeError:
        got = f"{getattr(fn, '__name__', 'function')}({', '.join(signature.parameters)})"
        raise HpsearchError(f"{what} must take ({expected}), but got {got}") from None
