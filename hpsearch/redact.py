"""Passwords out of sight: masking URL passwords in text, and in this process's own command line.

Kept free of heavy imports (no optuna, no torch) so the command line can import it and hide a
password given with `--storage` within milliseconds of starting, before anything else loads.
"""

from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path

# Everything between "scheme://user:" and the LAST "@" of the token: a password with a raw "@"
# (postgresql://u:p@ss@host/db) must be hidden whole, not up to its first "@". The user name may
# itself hold a raw "@" (Azure's user@server). Over-masking a token is harmless; under-masking is not.
_PASSWORD_RE = re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/\s]*:)(?P<pw>\S*)(?P<at>@)")
_QUERY_PW_RE = re.compile(r"(?P<pre>[?&]password=)(?P<pw>[^&\s]*)", re.IGNORECASE)
# The proxy's token belongs in the password slot (grpc://:TOKEN@host:port); one put where a user
# name goes (grpc://TOKEN@host:port) is hidden too.
_GRPC_USER_RE = re.compile(r"(?P<pre>\bgrpcs?://)(?P<pw>[^:/@\s]+)(?P<at>@)", re.IGNORECASE)


def mask(text: str) -> str:
    """Hide the password of every URL in `text` (messages, logs, reprs), and the proxy token of a grpc:// URL."""
    text = _PASSWORD_RE.sub(lambda m: f"{m['pre']}***{m['at']}", str(text))
    text = _GRPC_USER_RE.sub(lambda m: f"{m['pre']}***{m['at']}", text)
    return _QUERY_PW_RE.sub(lambda m: f"{m['pre']}***", text)


def userinfo_problem(url: str) -> str | None:
    """Why a URL's user name or password cannot be parsed, without echoing either; None when fine.

    A raw "@" makes the host ambiguous: drivers split at the first or the last one, and the error
    they print then shows most of the password as if it were the host name.
    """
    _, sep, rest = url.partition("://")
    if not sep:
        return None
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if netloc.count("@") <= 1:
        return None
    userinfo = netloc.rpartition("@")[0]
    user, has_password, _ = userinfo.partition(":")
    part = "user name" if "@" in user or not has_password else "password"
    return (f"the storage URL's {part} contains '@': percent-encode it as %40 "
            "(or keep the password out of the URL: ~/.pgpass or a service file)")


VISIBLE_WARNING = ("the storage password is visible in this process's command line (ps); pass the URL in "
                   "HPSEARCH_STORAGE or keep the password in ~/.pgpass instead")


def scrub_argv() -> bool | None:
    """Mask URL passwords in sys.argv and in what `ps` shows for this process.

    None: there was none. True: hidden. False: sys.argv is masked but `ps` still shows it.

    W&B records sys.argv with every run, and /proc/PID/cmdline is readable by every local user.
    The kernel serves the command line from the process's own argument area, so rewriting that
    memory in place (what setproctitle does on Linux) hides it; until then, and on other systems,
    it stays visible: the safe way is a password-free command line (HPSEARCH_STORAGE, ~/.pgpass).
    """
    masked = [mask(a) for a in sys.argv]
    if masked == sys.argv:
        return None
    sys.argv[:] = masked
    return _rewrite_cmdline()


def _rewrite_cmdline() -> bool:
    """Overwrite the process's argument area with its masked copy, padded with NULs to its length."""
    try:
        stat = Path("/proc/self/stat").read_text()
        # Fields after the parenthesised command name; arg_start and arg_end are fields 48 and 49.
        fields = stat[stat.rindex(")") + 2:].split()
        start, end = int(fields[48 - 3]), int(fields[49 - 3])
        current = Path("/proc/self/cmdline").read_bytes()
        if end <= start or ctypes.string_at(start, end - start) != current:
            return False  # not the layout we know: leave it alone rather than write blindly
        args = current.rstrip(b"\0").split(b"\0")
        new = b"\0".join(mask(a.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
                         for a in args)
        # "***" is longer than a one- or two-letter password: cut the (masked) tail to fit.
        new = new[: end - start - 1]
        ctypes.memmove(start, new.ljust(end - start, b"\0"), end - start)
        return Path("/proc/self/cmdline").read_bytes().rstrip(b"\0") == new
    except (OSError, ValueError, IndexError):
        return False
