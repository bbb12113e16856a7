"""Plain registries: a dict filled by a decorator, `build(name, **kw)`, and plugin references.

Unknown names list the known ones and suggest the closest, never `getattr(module, user_string)`
on our own modules. User code is reached only through an explicit `package.module:function`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from hpsearch.errors import HpsearchError

T = TypeVar("T", bound=Callable[..., Any])


def unknown_name_message(kind: str, name: object, known: Iterable[str]) -> str:
    known = sorted(known)
    msg = f"{kind} {name!r} is not registered; known: {', '.join(known)}"
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return msg


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


def is_plugin_ref(name: object) -> bool:
    return isinstance(name, str) and ":" in name and not name.startswith(":")


def _import(module_name: str) -> Any:
    """Import a user's module as `python -m` would find it: the current directory is searched too
    (last, so an installed package of the same name wins), whether hpsearch runs as the `hpsearch`
    script, `python -m hpsearch` or `python worker.py`."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
    return importlib.import_module(module_name)


def load_plugin(ref: str, kind: str = "plugin") -> Callable[..., Any]:
    """Import `package.module:function` and return the function."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise HpsearchError(f"{kind} {ref!r} must be 'package.module:function', but got {ref=}")
    try:
        module = _import(module_name)
    except Exception as exc:  # noqa: BLE001 - user code: a SyntaxError or a failing import line too
        raise HpsearchError(f"{kind} {ref!r}: cannot import module {module_name!r} here (searched: installed "
                            f"packages, PYTHONPATH, the current directory): {_one_line(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except Exception:  # noqa: BLE001 - a module __getattr__ may raise anything
            raise HpsearchError(f"{kind} {ref!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise HpsearchError(f"{kind} {ref!r} must be callable, but got {type(obj).__name__}")
    return obj


def import_plugin(module_name: str) -> None:
    """Import a plugin module, so its `@MODELS.register(...)` (optimizers', datasets') lines run here."""
    try:
        _import(module_name)
    except Exception as exc:  # noqa: BLE001 - user code: a SyntaxError or a failing import line too
        raise HpsearchError(f"cannot import plugin module {module_name!r} here (searched: installed packages, "
                            f"PYTHONPATH, the current directory): {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


class Registry(Generic[T]):
    """name -> factory, with `package.module:function` plugins accepted where allowed."""

    def __init__(self, kind: str, allow_plugins: bool = True) -> None:
        self.kind = kind
        self.allow_plugins = allow_plugins
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def check(self, name: object) -> str | None:
        """Return an error message for an unusable name, or None when it is fine."""
        if isinstance(name, str) and name in self._items:
            return None
        if self.allow_plugins and is_plugin_ref(name):
            return None
        return unknown_name_message(self.kind, name, self._items)

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        if self.allow_plugins and is_plugin_ref(name):
            return load_plugin(name, self.kind)  # type: ignore[return-value]
        raise HpsearchError(unknown_name_message(self.kind, name, self._items))

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)
