"""The gRPC server of `hpsearch proxy`: Optuna's storage service behind a token check, over TLS when given.

Optuna's run_grpc_proxy_server takes no interceptors or credentials, so the server is made here
with grpc's public API around Optuna's service (reached through optuna_internals).
"""

from __future__ import annotations

import hmac
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from hpsearch.errors import HpsearchError
from hpsearch.storage.grpc_proxy import REFUSED_DETAILS, target


class TokenCheck(grpc.ServerInterceptor):
    """A grpc.ServerInterceptor: a call without `authorization: Bearer TOKEN` ends UNAUTHENTICATED.

    Compared in constant time; the refusal is logged (at most one line per few seconds, with a
    count) without what the client sent.
    """

    def __init__(self, secret: str, quiet_for: float = 5.0) -> None:
        self._expected = f"Bearer {secret}".encode()
        self._deny = grpc.unary_unary_rpc_method_handler(self._refuse)
        self._quiet_for = quiet_for
        self._lock = threading.Lock()
        self._last = -quiet_for
        self._unlogged = 0

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        sent = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                sent = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(sent, self._expected):
            return continuation(handler_call_details)
        return self._deny

    def _refuse(self, request: Any, context: Any) -> None:
        self._note(context.peer())
        context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED_DETAILS)

    def _note(self, peer: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._quiet_for:
                self._unlogged += 1
                return
            more = f" (and {self._unlogged} more since the last line)" if self._unlogged else ""
            self._last, self._unlogged = now, 0
        print(f"hpsearch proxy: refused a call from {peer}: missing or wrong token{more}", file=sys.stderr, flush=True)


def tls_credentials(cert: str | None, key: str | None) -> Any:
    if not cert and not key:
        return None
    if not (cert and key):
        raise HpsearchError(f"--tls-cert and --tls-key go together, but got only --tls-{'cert' if cert else 'key'}")
    pem = {}
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            pem[flag] = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise HpsearchError(f"{flag} must be a readable PEM file, but got {path!r} ({exc.strerror})") from None
        if b"-----BEGIN " not in pem[flag]:
            raise HpsearchError(f"{flag} must be a PEM file, but got {path!r} (no -----BEGIN line)")
    return grpc.ssl_server_credentials([(pem["--tls-key"], pem["--tls-cert"])])


def make_server(storage: Any, host: str, port: int, threads: int, secret: str | None, credentials: Any) -> Any:
    """Optuna's storage service on a gRPC server with the token check (and TLS) in front."""
    from hpsearch.storage.optuna_internals import add_grpc_storage_service

    # gRPC binds with SO_REUSEPORT by default: a second proxy on the same port would silently
    # share it with the first (each getting some of the workers' calls); refuse instead.
    server = grpc.server(ThreadPoolExecutor(max_workers=threads),
                         interceptors=[TokenCheck(secret)] if secret else [], options=[("grpc.so_reuseport", 0)])
    add_grpc_storage_service(server, storage)
    address = target(host.strip("[]"), port)
    _check_free(host.strip("[]"), port, address)  # before gRPC tries: its failure is a log line of its own
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError:
        bound = 0
    if not bound:
        raise HpsearchError(f"cannot listen on {address} (in use, or not an address of this machine); "
                            "pick another --port or --host")
    return server


def _check_free(host: str, port: int, address: str) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HpsearchError(f"--host must be an address of this machine, but got {host!r} ({exc.strerror})") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise HpsearchError(f"cannot listen on {address} ({exc.strerror}); pick another --port or --host") from None
