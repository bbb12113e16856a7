"""`hpsearch dashboard`: optuna-dashboard on the study's storage, loopback unless protected.

optuna-dashboard has no authentication, and its API deletes studies, tells trials and edits
notes. So its WSGI app is served behind a small guard:

- a token by default, on loopback too (as Jupyter's): hpsearch's server token (hpsearch.storage.token:
  $HPSEARCH_TOKEN, else the user-only ~/.config/hpsearch/token, created when missing), taken once
  from `?token=...` and then kept in an HttpOnly cookie, or sent as `Authorization: Bearer`, or as
  the password of the browser's basic-auth prompt; `--no-auth` drops it (one user on the machine);
- read-only mode refuses every write request (anything but GET/HEAD/OPTIONS) with 403, and says
  so in the page: a banner, and the delete/rename/create/edit/upload controls hidden (the page
  would otherwise offer them, and a click would end in "Failed to delete study");
- a credential of the user's own instead (`--auth`: `USER:PASSWORD` for basic auth, or a bare token
  used like the default one); every credential is checked in constant time;
- on loopback, requests must name a loopback host (a DNS-rebinding page cannot reach the API);
- writes from another origin are refused (a page elsewhere cannot post with the user's login).

Binding to a non-loopback address needs read-only mode or a credential (hpsearch.ops.access).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import socketserver
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from hpsearch.errors import HpsearchError
from hpsearch.ops.access import (
    Credential,
    check_exposure,
    clear_text_warning,
    cookie_name,
    is_loopback,
    login_cookie,
    parse_credential,
    same,
    server_credential,
)
from hpsearch.storage.backend import dashboard_target, mask, resolve_url

log = logging.getLogger("hpsearch.dashboard")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


# ---------------------------------------------------------------- the guard


class Guard:
    """WSGI middleware in front of optuna-dashboard: host check, authentication, read-only, same origin."""

    def __init__(self, app: WSGIApp, read_only: bool = False, credential: Credential | None = None,
                 allowed_hosts: frozenset[str] | None = None) -> None:
        self.app = app
        self.read_only = read_only
        self.credential = credential
        self.allowed_hosts = allowed_hosts

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        host = _hostname(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return _refuse(start_response, "403 Forbidden", f"host {host!r} is not served here")
        if self.credential is not None:
            verdict = self._authenticate(environ)
            if verdict == "login":
                return self._login(environ, start_response)
            if verdict != "ok":
                return _refuse(start_response, "401 Unauthorized", "missing or wrong token", [
                    ("WWW-Authenticate", 'Basic realm="hpsearch dashboard", charset="UTF-8"')],
                    logged=verdict == "wrong", peer=environ.get("REMOTE_ADDR", "?"))
        if method not in SAFE_METHODS:
            if self.read_only:
                return _refuse(start_response, "403 Forbidden",
                               f"this dashboard is read-only; {method} {environ.get('PATH_INFO', '')} refused")
            origin = environ.get("HTTP_ORIGIN")
            if origin and urlsplit(origin).netloc != environ.get("HTTP_HOST"):
                return _refuse(start_response, "403 Forbidden", "cross-origin write refused")
        return self.app(environ, start_response)


    def _authenticate(self, environ: dict[str, Any]) -> str:
        """"ok", "login" (a right ?token=), "wrong" (something was sent, and it is wrong) or "none"."""
        assert self.credential is not None
        sent = False
        token = dict(parse_qsl(environ.get("QUERY_STRING", ""))).get("token")
        if token is not None and self.credential.user is None:
            if same(token, self.credential.secret):
                return "login"
            sent = True
        header = environ.get("HTTP_AUTHORIZATION")
        if header:
            if self.credential.accepts(header):
                return "ok"
            sent = True
        cookie = login_cookie(environ, cookie_name(environ))
        if cookie is not None:
            if same(cookie, self.credential.cookie()):
                return "ok"
            sent = True
        return "wrong" if sent else "none"

    def _login(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        """The token once in the URL, then a cookie: the page's own requests carry no token."""
        assert self.credential is not None
        rest = [(k, v) for k, v in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True) if k != "token"]
        location = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/"
        if rest:
            location += "?" + urlencode(rest)
        cookie = f"{cookie_name(environ)}={self.credential.cookie()}; Path=/; HttpOnly; SameSite=Strict"
        start_response("303 See Other", [("Location", location), ("Set-Cookie", cookie), ("Content-Length", "0"),
                                         ("Cache-Control", "no-store")])
        return [b""]


def _hostname(host_header: str) -> str:
    if host_header.startswith("["):  # [::1]:8080
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _refuse(start_response: StartResponse, status: str, reason: str,
            headers: list[tuple[str, str]] | None = None, logged: bool = True, peer: str | None = None) -> list[bytes]:
    body = json.dumps({"reason": reason}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            *(headers or [])])
    # A 401 for a request that sent nothing is every browser's first request: not worth a line.
    # What was sent is never logged.
    if logged:
        log.warning("dashboard: %s: %s%s", status, reason, f" (from {peer})" if peer else "")
    return [body]


def allowed_hosts_for(host: str) -> frozenset[str] | None:
    """On loopback only loopback names are valid Host headers; elsewhere any name may reach us."""
    return LOOPBACK_NAMES | {host.strip("[]")} if is_loopback(host) else None


def build_app(url: str, read_only: bool = False, credential: Credential | None = None,
              host: str = "127.0.0.1") -> WSGIApp:
    from optuna_dashboard import wsgi

    from hpsearch.storage.artifacts import artifact_store
    from hpsearch.storage.backend import open_storage

    storage = open_storage(url)
    store = artifact_store(url)
    app: WSGIApp = ArtifactGuard(wsgi(storage, artifact_store=store), storage, store)
    if read_only:
        app = ReadOnlyPage(app)
    return Guard(app, read_only=read_only, credential=credential, allowed_hosts=allowed_hosts_for(host))


# ---------------------------------------------------------------- read-only, in the page

BANNER_ID = "hpsearch-read-only"
BANNER_TEXT = ("Read-only dashboard: studies and trials can be viewed here, not changed "
               "(delete, rename, create, notes, tell and uploads are refused)")
_BANNER_PX = 28
# Controls whose request the guard refuses in read-only mode, by what optuna-dashboard 0.21 renders
# (aria labels and MUI icon test ids). One it adds later still shows, and its click is refused.
_WRITE_CONTROLS = ", ".join([
    'button[aria-label="delete study"]', 'button[aria-label="rename study"]', '[aria-label="delete artifact"]',
    '[aria-label="skip trial"]', 'input[type="file"]', 'form button[type="submit"]',
    *(f'{tag}:has(svg[data-testid="{icon}Icon"])' for tag in ("button", "li")
      for icon in ("AddBox", "Delete", "Edit", "ModeEdit", "StopCircle", "UploadFile")),
])
_READ_ONLY_STYLE = f"""<style id="{BANNER_ID}-style">
#{BANNER_ID} {{ position: fixed; top: 0; left: 0; right: 0; height: {_BANNER_PX}px; z-index: 2000;
  background: #8a4b00; color: #fff; font: 600 14px/{_BANNER_PX}px Roboto, Helvetica, Arial, sans-serif;
  text-align: center; overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }}
body {{ padding-top: {_BANNER_PX}px; }}
/* optuna-dashboard's app bar and side drawer are fixed at the top: move them below the banner. */
.MuiAppBar-positionFixed, .MuiDrawer-paperAnchorDockedLeft, .MuiDrawer-paperAnchorLeft {{
  top: {_BANNER_PX}px !important; }}
.MuiDrawer-paperAnchorDockedLeft, .MuiDrawer-paperAnchorLeft {{ height: calc(100% - {_BANNER_PX}px) !important; }}
{_WRITE_CONTROLS} {{ display: none !important; }}
</style>"""
_BANNER = f'<div id="{BANNER_ID}" role="status">{BANNER_TEXT}</div>'


class ReadOnlyPage:
    """optuna-dashboard's page (GET /dashboard...) with the read-only banner and style injected.

    Its Content-Security-Policy allows inline styles, not inline scripts, so this is HTML and CSS
    only. Conditional requests are answered in full and the page is not cached: a browser that
    kept the page of an earlier, writable dashboard would otherwise get "304 Not Modified" for it.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD", "GET").upper() != "GET" or not (
                path == "/dashboard" or path.startswith("/dashboard/")):
            return self.app(environ, start_response)
        environ = {k: v for k, v in environ.items() if k not in ("HTTP_IF_MODIFIED_SINCE", "HTTP_IF_NONE_MATCH")}
        got: dict[str, Any] = {}
        chunks: list[bytes] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            got.update(status=status, headers=headers)
            return chunks.append

        body_iter = self.app(environ, capture)
        try:
            chunks.extend(body_iter)
        finally:
            close = getattr(body_iter, "close", None)
            if close is not None:
                close()
        status, headers, body = got["status"], list(got["headers"]), b"".join(chunks)
        named = {k.lower(): v for k, v in headers}
        if status.startswith("200") and "text/html" in named.get("content-type", "") \
                and not named.get("content-encoding"):
            body = inject_read_only(body)
            headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "etag", "last-modified")]
            headers += [("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
        start_response(status, headers)
        return [body]


def inject_read_only(html: bytes) -> bytes:
    text = html.decode("utf-8")
    head = text.lower().find("</head>")
    text = text[:head] + _READ_ONLY_STYLE + text[head:] if head >= 0 else _READ_ONLY_STYLE + text
    body = re.search(r"<body[^>]*>", text, re.IGNORECASE)
    text = text[:body.end()] + _BANNER + text[body.end():] if body else _BANNER + text
    return text.encode("utf-8")


_ARTIFACT_PATH = re.compile(r"/artifacts/(?P<study>\d+)/(?:(?P<trial>\d+)/)?(?P<artifact>[0-9a-fA-F-]+)")


class ArtifactGuard:
    """Artifact URLs of a study, trial or file that does not exist: 404 and one line.

    optuna-dashboard answers them with a 500 page and prints a traceback on the server's terminal
    (a KeyError from the storage, or ArtifactNotFound from the store).
    """

    def __init__(self, app: WSGIApp, storage: Any, store: Any) -> None:
        self.app = app
        self.storage = storage
        self.store = store

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        m = _ARTIFACT_PATH.fullmatch(path)
        if m and environ.get("REQUEST_METHOD", "GET").upper() in ("GET", "HEAD") and not self._exists(m):
            return _refuse(start_response, "404 Not Found", f"no artifact at {path}")
        return self.app(environ, start_response)

    def _exists(self, m: re.Match[str]) -> bool:
        from optuna.artifacts.exceptions import ArtifactNotFound

        from hpsearch.optuna_private import dashboard_artifact_meta

        study_id, artifact_id = int(m["study"]), m["artifact"]
        trial_id = None if m["trial"] is None else int(m["trial"])
        try:
            meta = dashboard_artifact_meta(self.storage, study_id, trial_id, artifact_id)
            if meta is None:
                return False
            self.store.open_reader(artifact_id).close()
        except (KeyError, ArtifactNotFound, FileNotFoundError):  # unknown study/trial id; file gone
            return False
        return True


# ---------------------------------------------------------------- serving


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    # The dashboard's page polls several endpoints at once; one slow plot must not block the rest.
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # refusals are logged by the guard; an access log per poll would drown the terminal


def make_server(host: str, port: int, app: WSGIApp) -> WSGIServer:
    """A threaded wsgiref server on (host, port); port 0 picks a free one."""
    server_class: type[WSGIServer] = _Server
    if ":" in host:  # an IPv6 address
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    try:
        server = server_class((host.strip("[]"), port), _QuietHandler)
    except OSError as exc:
        raise HpsearchError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    server.set_app(app)
    return server


NO_AUTH_WARNING = ("--no-auth: this dashboard serves anyone who can reach it: every local user can read the "
                   "studies{}; use it only on a machine with one user")


def serve(storage: str | None, host: str, port: int, read_only: bool = False, auth: str | None = None,
          no_auth: bool = False) -> int:
    from hpsearch.ops import notes

    # Exposure is judged on what the user chose: off loopback, the default token alone is not enough.
    check_exposure(host, read_only, None if no_auth else parse_credential(auth))
    credential, described = server_credential(auth, no_auth)
    every = notes.interval_from_env()
    url = resolve_url(storage)
    app = build_app(url, read_only=read_only, credential=credential, host=host)
    server = make_server(host, port, app)
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{server.server_port}/"
    guards = ", ".join([described, *(["read-only"] if read_only else [])])
    print(f"optuna-dashboard for {mask(dashboard_target(url))} on {base} ({guards}); Ctrl-C stops it", flush=True)
    if credential is not None and credential.user is None:
        # The login URL holds the token: shown on a terminal (as Jupyter does), never into a pipe or a log.
        login = f"{base}?token={credential.secret}" if sys.stdout.isatty() else f"{base}?token=TOKEN"
        print(f"open {login} once (the browser keeps a cookie), or send 'Authorization: Bearer TOKEN'", flush=True)
    if no_auth:
        log.warning("%s", NO_AUTH_WARNING.format("" if read_only else ", change and delete them"))
    warning = clear_text_warning(host, credential)
    if warning:
        log.warning("%s", warning)
    # What the dashboard cannot know (best's ranking over seeds, a dead worker's trial), in its notes.
    keeper = notes.NoteKeeper(url, every).start() if every > 0 else None
    if keeper is not None:
        print(f"hpsearch writes its ranking over seeds and stale trials into the studies' notes every {every:g} s "
              "(HPSEARCH_DASHBOARD_NOTES=off: not at all)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if keeper is not None:
            keeper.stop()
        server.server_close()
    return 0
