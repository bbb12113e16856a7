"""`hpsearch dashboard`: optuna-dashboard on the study's storage, loopback unless protected."""

from __future__ import annotations

import ipaddress

from hpsearch.errors import HpsearchError
from hpsearch.storage import dashboard_target, mask, resolve_url


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(storage: str | None, host: str, port: int, read_only: bool = False, auth: str | None = None) -> int:
    if not is_loopback(host) and not (read_only or auth):
        raise HpsearchError(
            f"--host {host} exposes optuna-dashboard, which has no authentication and can delete studies; "
            "add --read-only or --auth USER:PASSWORD (or a token)"
        )
    url = resolve_url(storage)
    from optuna_dashboard import run_server

    from hpsearch.storage import artifact_store, open_storage

    st = open_storage(url)
    print(f"optuna-dashboard for {mask(dashboard_target(url))} on http://{host}:{port}/", flush=True)
    run_server(st, host=host, port=port, artifact_store=artifact_store(url))
    return 0
