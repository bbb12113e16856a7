"""Who may use hpsearch's servers: loopback, the dashboard's credentials and login cookie, exposure.

Credentials are `--auth` (`USER:PASSWORD` for basic auth, or a token of the user's own), else
hpsearch's server token (hpsearch.storage.token), which the gRPC proxy demands too. Every
comparison runs in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any

from hpsearch.errors import HpsearchError

AUTH_ENV = "HPSEARCH_DASHBOARD_AUTH"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Credential:
    """Basic auth (user and password) or a token (Bearer, or any user with the token as password)."""

    secret: str
    user: str | None = None

    def accepts(self, header: str) -> bool:
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return self.user is None and same(value, self.secret)
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        # Both comparisons always run: the time taken must not tell which part was wrong.
        user_ok = self.user is None or same(user, self.user)
        return same(password, self.secret) and user_ok

    def cookie(self) -> str:
        """What the login cookie holds: derived from the secret, so the cookie store never holds the secret."""
        return hmac.new(self.secret.encode("utf-8"), b"hpsearch dashboard login", hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def parse_credential(value: str | None) -> Credential | None:
    """`USER:PASSWORD`, a bare token, `@FILE` holding either, or $HPSEARCH_DASHBOARD_AUTH when None.

    A file or the environment keeps the secret out of `ps` and shell history.
    """
    if value is None:
        value = os.environ.get(AUTH_ENV) or None
        if value is None:
            return None
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise HpsearchError(f"--auth @{path}: cannot read the credential file ({exc.strerror})") from None
    user, sep, password = value.partition(":")
    if sep:
        if not user or not password:
            raise HpsearchError("--auth must be USER:PASSWORD or a token, but got an empty user or password")
        return Credential(secret=password, user=user)
    if len(value) < 8:
        raise HpsearchError(f"--auth token must be at least 8 characters, but got {len(value)}")
    return Credential(secret=value)


def clear_text_warning(host: str, credential: Credential | None) -> str | None:
    """Basic auth (and a bearer token) travel with every request, in clear over plain HTTP."""
    if credential is None or is_loopback(host):
        return None  # on loopback the request never leaves the machine (an SSH tunnel's end is here too)
    return (f"the credential (token or --auth) on {host} over plain HTTP travels in clear with every request: put TLS "
            "(a reverse proxy) or an SSH tunnel in front")


def check_exposure(host: str, read_only: bool, credential: Credential | None) -> None:
    if not is_loopback(host) and not (read_only or credential):
        raise HpsearchError(
            f"--host {host} would expose optuna-dashboard, which has no authentication and can delete studies; "
            f"add --read-only, or --auth USER:PASSWORD / a token (or set {AUTH_ENV}), or keep --host 127.0.0.1"
        )


def server_credential(auth: str | None, no_auth: bool) -> tuple[Credential | None, str]:
    """The credential and what to say about it: --auth / $HPSEARCH_DASHBOARD_AUTH, else hpsearch's token."""
    if no_auth:
        if auth:
            raise HpsearchError("--no-auth and --auth do not go together: --no-auth serves without a credential")
        return None, "NO AUTHENTICATION"
    credential = parse_credential(auth)
    if credential is not None:
        return credential, "authentication"
    from hpsearch.storage import token as token_mod

    secret, where = token_mod.for_server()
    return Credential(secret=secret), f"token in {where}"


def cookie_name(environ: dict[str, Any]) -> str:
    # Cookies are shared by every port of a host: one per port keeps two dashboards' logins apart.
    return f"hpsearch-dashboard-{environ.get('SERVER_PORT', '')}"


def login_cookie(environ: dict[str, Any], name: str) -> str | None:
    try:
        jar = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None
