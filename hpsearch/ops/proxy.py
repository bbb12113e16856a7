"""`hpsearch proxy`: Optuna's gRPC storage proxy in front of PostgreSQL, for hundreds of workers.

Workers point at it with `--storage grpc://host:port` and hold no database connection: the proxy
holds a small pool (`--pool`), so 200 workers fit under PostgreSQL's default max_connections=100.
Beside the server, a keeper thread issues each study's planned trials in chunks (what workers do
themselves under the study lock when they talk to PostgreSQL directly).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hpsearch import schema
from hpsearch.errors import HpsearchError
from hpsearch.storage.backend import mask, open_storage, resolve_url


def add_parsers(sub: Any, command: Callable[..., Any], storage_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("proxy", help="gRPC storage proxy in front of PostgreSQL (for hundreds of workers)")
    storage_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=13000)
    p.add_argument("--threads", type=int, default=32, help="server threads (concurrent requests)")
    p.add_argument("--pool", type=int, default=8, help="database connections held by the proxy")
    command("proxy")(_proxy)


def reap(study: Any) -> None:
    """Workers behind the proxy run no reaper of their own (200 of them would flood it): do it here."""
    from hpsearch.queue.faults import fail_and_requeue, stale_trials

    for trial_id, age, limit in stale_trials(study, default_interval=30):
        fail_and_requeue(study, trial_id, f"stale: no heartbeat for {age:.0f}s (limit {limit:.0f}s); "
                         "worker presumed dead", only_if_stale=limit)


def keep_queues(storage: Any, stop: threading.Event, period: float = 0.5) -> None:
    """Issue the next chunk of every hpsearch study whose queue runs low, and reap stale trials."""
    import optuna

    from hpsearch.queue import plan as plan_mod
    from hpsearch.queue import study as study_mod
    from hpsearch.queue.lock import StudyLock

    specs: dict[str, Any] = {}
    chunk = plan_mod.issue_chunk(storage) or 64
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
    from optuna.storages import run_grpc_proxy_server

    from hpsearch.storage.optuna_internals import cached

    url = resolve_url(args.storage)
    if not url.startswith(("postgresql", "mysql", "sqlite")):
        raise HpsearchError(f"--storage must be a database URL (postgresql://...) for the proxy, but got {mask(url)!r}")
    rdb = open_storage(url, create=True, pool_size=args.pool)
    storage = cached(rdb)  # Optuna's cache, as optuna.load_study would put around the storage
    stop = threading.Event()
    keeper = threading.Thread(target=keep_queues, args=(storage, stop), daemon=True, name="hpsearch-keeper")
    keeper.start()
    print(f"hpsearch proxy for {mask(url)} on grpc://{args.host}:{args.port} "
          f"({args.threads} threads, {args.pool} database connections)", flush=True)
    try:
        run_grpc_proxy_server(storage, host=args.host, port=args.port,
                              thread_pool=ThreadPoolExecutor(max_workers=args.threads))
    finally:
        stop.set()
    return 0
