"""The client side of `hpsearch proxy`: a channel that carries the token on every call, over TLS when asked,
and the queue backend of its workers.

`grpc://[:TOKEN@]host:port` is plain gRPC (loopback, or a network the proxy was told to trust
with --insecure); `grpcs://[:TOKEN@]host:port` is TLS, checked against the system's roots or
against `$HPSEARCH_TLS_CA` (the proxy's own certificate, or the CA that signed it). The token
(hpsearch.storage.token) goes in each call's `authorization` metadata; a proxy that refuses it
is one line here, not a traceback from deep inside Optuna.
"""

from __future__ import annotations

import functools
import os
import random
from collections import namedtuple
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
import optuna
from optuna.trial import FrozenTrial

from hpsearch.errors import HpsearchError, StorageUnavailable
from hpsearch.redact import mask
from hpsearch.storage import token as token_mod
from hpsearch.storage.generic import OptunaBackend

CA_ENV = "HPSEARCH_TLS_CA"
SCHEMES = ("grpc://", "grpcs://")
REFUSED_DETAILS = "missing or wrong token"


class ProxyRefused(StorageUnavailable):
    """The proxy answered UNAUTHENTICATED."""


def parse(url: str) -> tuple[str, int, bool, str | None]:
    """(host, port, tls, token in the URL) of grpc[s]://[:TOKEN@]host:port."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("grpc", "grpcs") or port is None or parts.path.strip("/") or parts.query:
        raise HpsearchError(f"storage must be grpc://host:port or grpcs://host:port (with the token in "
                            f"${token_mod.TOKEN_ENV}), but got {mask(url)!r}")
    if parts.username and parts.password is None:
        # grpc://TOKEN@host: the token where a user name goes; mask() hides it, but say where it belongs.
        raise HpsearchError("the storage URL's token goes after a colon: grpc://:TOKEN@host:port "
                            f"(or in ${token_mod.TOKEN_ENV})")
    host = parts.hostname or "localhost"
    return host, port, parts.scheme == "grpcs", unquote(parts.password) if parts.password else None


def target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_proxy(url: str, wait: float = 30.0) -> Any:
    """Optuna's GrpcStorageProxy, authenticated, after one call that the proxy answered."""
    from hpsearch.storage.optuna_internals import grpc_proxy_on

    host, port, tls, url_token = parse(url)
    secret = token_mod.for_client(url_token)
    ca = _read_ca() if tls else None
    storage = grpc_proxy_on(functools.partial(make_channel, host, port, secret, tls, ca), host, port)
    try:
        storage.wait_server_ready(timeout=wait)
    except ConnectionError:
        hint = (" (is it serving TLS? then use grpcs://)" if not tls
                else f" (does its certificate match {host}, and ${CA_ENV} name its CA?)")
        raise StorageUnavailable(f"no gRPC proxy answered at {target(host, port)} within {wait:.0f}s{hint}") from None
    try:
        storage.get_study_id_from_name("hpsearch: is the token accepted?")  # any call checks the token
    except KeyError:
        pass
    return storage


def _read_ca() -> bytes | None:
    path = os.environ.get(CA_ENV)
    if not path:
        return None  # the system's roots
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise HpsearchError(f"{CA_ENV} must name a readable PEM certificate, but got {path!r} ({exc.strerror})") from None


def make_channel(host: str, port: int, secret: str | None, tls: bool, ca: bytes | None) -> grpc.Channel:
    """The channel Optuna's client talks through (made again after unpickling, hence a plain function)."""
    options = [("grpc.max_receive_message_length", -1)]  # as Optuna's own channel
    if tls:
        channel = grpc.secure_channel(target(host, port), grpc.ssl_channel_credentials(root_certificates=ca), options)
    else:
        channel = grpc.insecure_channel(target(host, port), options)
    return grpc.intercept_channel(channel, TokenInterceptor(secret, target(host, port)))


_Details = namedtuple("_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"))


class CallDetails(_Details, grpc.ClientCallDetails):
    pass


class TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the token to each call; turns the proxy's refusal into ProxyRefused (one line at the CLI)."""

    def __init__(self, secret: str | None, where: str) -> None:
        self._metadata = (("authorization", f"Bearer {secret}"),) if secret else ()
        self._where = where

    def _details(self, details: grpc.ClientCallDetails) -> CallDetails:
        return CallDetails(details.method, details.timeout, (*(details.metadata or ()), *self._metadata),
                           details.credentials, getattr(details, "wait_for_ready", None),
                           getattr(details, "compression", None))

    def _check(self, outcome: Any) -> Any:
        if isinstance(outcome, grpc.Call) and outcome.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise ProxyRefused(refused_message(self._where, bool(self._metadata)))
        return outcome

    def intercept_unary_unary(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                              request: Any) -> Any:
        return self._check(continuation(self._details(client_call_details), request))

    def intercept_unary_stream(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                               request: Any) -> Any:
        return continuation(self._details(client_call_details), request)


def refused_message(where: str, sent: bool) -> str:
    found = "" if sent else " (none was found here)"
    return (f"the proxy at {where} refused this connection: {REFUSED_DETAILS}{found}; set ${token_mod.TOKEN_ENV} to "
            f"the proxy's token (the token or @FILE; the proxy keeps it in {token_mod.token_file()} unless given one)")


class GrpcBackend(OptunaBackend):
    """Workers behind `hpsearch proxy`: Optuna's own compare-and-set claims through the proxy, beats as
    a trial attribute. Workers take no study lock and run no reaper (200 of them would flood the
    proxy): the proxy's keeper issues the plan and reaps, under the database's own study lock."""

    name = "grpc"
    workers_keep_queue = False

    def _claim_order(self, waiting: list[FrozenTrial]) -> list[FrozenTrial]:
        """Optuna's own _pop_waiting_trial_id tries the waiting trials in order, so N workers asking at
        once all race for the first one and make O(N) failed attempts each, every attempt a round
        trip through the proxy: each worker starts at a random place among the first waiting trials."""
        if len(waiting) <= 1:
            return waiting
        head = min(len(waiting), 64)
        start = random.randrange(head)
        return waiting[start:head] + waiting[:start] + waiting[head:]

    def _first_chunk(self, planned: int, chunk: int) -> int:
        return planned  # everything at once: workers here cannot take the study lock to issue the rest

    def finish_plan(self, study: optuna.Study, planned: int) -> None:
        raise HpsearchError(f"study {study.study_name!r} is not ready: its creation was interrupted; "
                            "run the same hpsearch create-study again to finish it")
