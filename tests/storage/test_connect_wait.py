"""A job array's burst: workers that start while the server's connection slots are all taken wait
for a slot (HPSEARCH_CONNECT_WAIT) instead of quitting, on a throwaway PostgreSQL of their own."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import psycopg2
import pytest

from conftest import cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from faultkit import assert_exactly_once
from hpsearch.storage.backend import open_storage
from pgcluster import PASSWORD, Cluster


@pytest.fixture
def small_pg() -> Cluster:
    cluster = Cluster(max_connections=8).init()
    cluster.start()
    yield cluster
    cluster.destroy()


def _hold_every_slot(cluster: Cluster) -> list[object]:
    held = []
    while True:
        try:
            held.append(psycopg2.connect(host="127.0.0.1", port=cluster.port, user="postgres", password=PASSWORD,
                                         dbname="postgres"))
        except psycopg2.OperationalError as exc:
            assert "too many clients" in str(exc) or "reserved" in str(exc), exc
            return held
        assert len(held) < 50


def test_workers_wait_for_a_free_connection_slot(small_pg: Cluster, tmp_path: Path) -> None:
    url = small_pg.create_db("full")
    name = unique("full")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", url, check=True)
    held = _hold_every_slot(small_pg)
    log = tmp_path / "w.log"
    worker = start_worker(name, url, env=cli_env(HPSEARCH_CONNECT_WAIT="120"), log=log)
    try:
        time.sleep(10)  # every slot taken for 10 s: the worker must still be waiting, not gone
        assert worker.poll() is None, log.read_text()
    finally:
        for conn in held:
            conn.close()  # type: ignore[attr-defined]
    assert worker.wait(timeout=180) == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    assert_exactly_once(optuna.load_study(study_name=name, storage=open_storage(url)), 4)


def test_without_connect_wait_a_full_server_is_one_line(small_pg: Cluster, tmp_path: Path) -> None:
    url = small_pg.create_db("full0")
    name = unique("full0")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", url, check=True)
    held = _hold_every_slot(small_pg)
    try:
        proc = run_cli("worker", "--study", name, "--storage", url, env=cli_env(HPSEARCH_CONNECT_WAIT="0"))
    finally:
        for conn in held:
            conn.close()  # type: ignore[attr-defined]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "too many clients" in lines[0] and PASSWORD not in lines[0], proc.stderr
