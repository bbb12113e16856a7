"""The secret token of hpsearch's servers (the gRPC proxy, the dashboard): where it comes from, where it is kept.

A server refuses every request without it, on loopback too (a login node's loopback is shared by
every user on it). It is never taken from a command line (`ps` shows command lines to every local
user) and never printed to a pipe or a log. A client finds it, in this order, in:

- the storage URL's password, `grpc://:TOKEN@host:port` (masked like a database password);
- `$HPSEARCH_TOKEN`: the token itself, or `@FILE` holding it;
- the user-only token file the server writes when it is given none, `~/.config/hpsearch/token`
  (`$XDG_CONFIG_HOME/hpsearch/token`): on a cluster whose nodes share the home directory, the
  user's workers find it there and other users cannot read it.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from hpsearch.errors import HpsearchError

log = logging.getLogger("hpsearch")
TOKEN_ENV = "HPSEARCH_TOKEN"
MIN_LENGTH = 16


def token_file() -> Path:
    """Where a server keeps the token it generated, and where clients look for it last."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "hpsearch" / "token"


def check(token: str, what: str) -> str:
    """A usable token, or one line that names where it came from (never the token itself)."""
    token = token.strip()
    if len(token) < MIN_LENGTH or not token.isprintable() or any(c.isspace() or c in "@/:" for c in token):
        raise HpsearchError(f"{what} must be a token of {MIN_LENGTH}+ printable characters without spaces, '@', "
                            f"'/' or ':', but got {len(token)} characters")
    return token


def read_file(path: Path, what: str) -> str:
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise HpsearchError(f"{what}: cannot read the token file {path} "
                            f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the token file %s can be read by other users: chmod 600 %s", path, path)
    return check(text, f"{what} ({path})")


def from_env() -> str | None:
    value = os.environ.get(TOKEN_ENV, "")
    if not value:
        return None
    if value.startswith("@"):
        return read_file(Path(value[1:]).expanduser(), TOKEN_ENV)
    return check(value, TOKEN_ENV)


def for_client(url_token: str | None = None) -> str | None:
    """The token a client sends: the URL's, else $HPSEARCH_TOKEN's, else the token file's; None if none."""
    if url_token:
        return check(url_token, "the storage URL's token")
    token = from_env()
    if token is not None:
        return token
    path = token_file()
    return read_file(path, "token file") if path.is_file() else None


def for_server(path_arg: str | None = None) -> tuple[str, str]:
    """The token a server demands, and where it is (for its start line; never the token).

    `--token-file`, else $HPSEARCH_TOKEN, else the token file, created with a new token when it
    does not exist yet (kept across restarts, so running workers keep working).
    """
    if path_arg:
        path = Path(path_arg).expanduser()
        return read_file(path, "--token-file"), str(path)
    token = from_env()
    if token is not None:
        return token, f"${TOKEN_ENV}"
    path = token_file()
    if path.is_file():
        return read_file(path, "token file"), str(path)
    return generate(path), f"{path} (new)"


def generate(path: Path) -> str:
    """A new token in a file only its owner can read, created whole or not at all."""
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        try:
            os.link(tmp, path)  # fails if another server created it meanwhile: then theirs is the token
        except FileExistsError:
            return read_file(path, "token file")
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise HpsearchError(f"cannot write the token file {path} ({exc.strerror}); set {TOKEN_ENV} "
                            "(the token or @FILE) or give --token-file") from None
    return token
