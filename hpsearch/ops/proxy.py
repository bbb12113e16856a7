"""`hpsearch proxy`: Optuna's gRPC storage proxy in front of PostgreSQL, for hundreds of workers.

Workers point at it with `--storage grpc://host:port` and hold no database connection: the proxy
holds a small pool (`--pool`), so 200 workers fit under PostgreSQL's default max_connections=100.
Beside the server, a keeper thread issues each study's planned trials in chunks (what workers do
themselves under the study lock when they talk to PostgreSQL directly).

The proxy can read, change and delete every study, so it refuses every call without its token,
on loopback too (a login node's loopback is shared by all its users): `--token-file`, else
$HPSEARCH_TOKEN, else the user-only ~/.config/hpsearch/token (written with a new token when
missing), which workers sharing the home directory read (hpsearch.storage.token). A non-loopback
address needs TLS (`--tls-cert`/`--tls-key`; workers use grpcs://) or `--insecure`.
`--no-auth` drops the token, on loopback only, for a machine with one user.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from hpsearch import schema
from hpsearch.errors import HpsearchError
from hpsearch.ops.access import is_loopback
from hpsearch.storage.backend import mask, open_storage, resolve_url

log = logging.getLogger("hpsearch.proxy")
NO_AUTH_WARNING = ("--no-auth: this proxy serves anyone who can reach it: every local user can read, change and "
                   "delete its studies; use it only on a machine with one user")


def add_parsers(sub: Any, command: Callable[..., Any], storage_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("proxy", help="gRPC storage proxy in front of PostgreSQL (for hundreds of workers)")
    storage_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback); any other "
                   "needs --tls-cert/--tls-key or --insecure")
    p.add_argument("--port", type=int, default=13000)
    p.add_argument("--threads", type=int, default=32, help="server threads (concurrent requests)")
    p.add_argument("--pool", type=int, default=8, help="database connections held by the proxy")
    p.add_argument("--token-file", metavar="FILE", help="file holding the token every call must carry (default: "
                   "$HPSEARCH_TOKEN, the token or @FILE, else ~/.config/hpsearch/token, created user-only with a "
                   "new token when missing); workers find it the same way, or in grpc://:TOKEN@host:port")
    p.add_argument("--no-auth", action="store_true", help="DANGEROUS: no token; anyone who reaches the port (every "
                   "local user) can read, change and delete studies. Loopback only, for a machine with one user")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (chain); workers use grpcs://")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument("--insecure", action="store_true", help="DANGEROUS: allow a non-loopback --host without TLS; the "
                   "token and every study travel in clear. Only on a network you trust entirely")
    command("proxy")(_proxy)


def check_exposure(host: str, tls: bool, insecure: bool, no_auth: bool) -> None:
    if no_auth and not is_loopback(host):
        raise HpsearchError(f"--no-auth is for a machine with one user and must keep --host on loopback, but got "
                            f"--host {host}")
    if not is_loopback(host) and not tls and not insecure:
        raise HpsearchError(
            f"--host {host} would serve the storage proxy unencrypted (the token and every study in clear); give "
            "--tls-cert PEM --tls-key PEM (workers then use grpcs://), or --insecure on a network you trust, "
            "or keep --host 127.0.0.1")


def reap(study: Any) -> None:
    """Workers behind the proxy run no reaper of their own (200 of them would flood it): do it here."""
    from hpsearch.queue.faults import fail_and_requeue, stale_trials
    from hpsearch.queue.retries import stale_reason

    for trial_id, age, limit in stale_trials(study, default_interval=30):
        fail_and_requeue(study, trial_id, stale_reason(age, limit), only_if_stale=limit)


def keep_queues(storage: Any, stop: threading.Event, period: float = 0.5) -> None:
    """Issue the next chunk of every hpsearch study whose queue runs low, and reap stale trials."""
    import optuna

    from hpsearch.queue import plan as plan_mod
    from hpsearch.queue import study as study_mod
    from hpsearch.queue.lock import StudyLock

    specs: dict[str, Any] = {}
    chunk = plan_mod.chunk_size()
    while not stop.wait(period):
        try:
            for frozen in storage.get_all_studies():
                attrs = frozen.user_attrs
                if not attrs.get(schema.READY_ATTR):
                    continue
                study = optuna.load_study(study_name=frozen.study_name, storage=storage)
                if int(attrs.get(schema.ISSUED_ATTR, 0)) >= int(attrs.get(schema.PLANNED_ATTR, 0)):
                    reap(study)
                    continue
                if frozen.study_name not in specs:
                    specs[frozen.study_name] = study_mod.stored_spec(study)
                with StudyLock.of(study):
                    waiting, _ = study_mod.active_counts(study)
                    if waiting < chunk // 2:
                        plan_mod.top_up(study, specs[frozen.study_name], chunk)
                reap(study)
        except Exception as exc:  # noqa: BLE001 - the keeper must outlive database hiccups
            print(f"hpsearch proxy: keeper: {mask(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}",
                  flush=True)
            time.sleep(1.0)


def _proxy(args: argparse.Namespace) -> int:
    from hpsearch.ops.proxy_server import make_server, tls_credentials
    from hpsearch.storage import token as token_mod
    from hpsearch.storage.optuna_internals import cached

    url = resolve_url(args.storage)
    if not url.startswith(("postgresql", "mysql", "sqlite")):
        raise HpsearchError(f"--storage must be a database URL (postgresql://...) for the proxy, but got {mask(url)!r}")
    credentials = tls_credentials(args.tls_cert, args.tls_key)
    check_exposure(args.host, credentials is not None, args.insecure, args.no_auth)
    if args.no_auth and args.token_file:
        raise HpsearchError("--no-auth and --token-file do not go together: --no-auth serves without a token")
    secret, where = (None, "") if args.no_auth else token_mod.for_server(args.token_file)
    rdb = open_storage(url, create=True, pool_size=args.pool)
    storage = cached(rdb)  # Optuna's cache, as optuna.load_study would put around the storage
    stop = threading.Event()
    keeper = threading.Thread(target=keep_queues, args=(storage, stop), daemon=True, name="hpsearch-keeper")
    keeper.start()
    server = make_server(storage, args.host, args.port, args.threads, secret, credentials)
    scheme = "grpcs" if credentials is not None else "grpc"
    guard = f"token in {where}" if secret else "NO AUTHENTICATION"
    print(f"hpsearch proxy for {mask(url)} on {scheme}://{args.host}:{args.port} "
          f"({guard}; {args.threads} threads, {args.pool} database connections)", flush=True)
    if args.no_auth:
        log.warning("%s", NO_AUTH_WARNING)
    elif credentials is None and not is_loopback(args.host):
        log.warning("--insecure: the token and every study travel in clear between the workers and %s", args.host)
    try:
        server.start()
        server.wait_for_termination()
    finally:
        stop.set()
    return 0
