"""Shared fixtures: a fresh PostgreSQL database per test session, journal files, running the CLI.

Tests use the real things: PostgreSQL on 127.0.0.1:5432, real Optuna, real torch on tiny data and
real worker processes. Without PostgreSQL, its tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# Workers train one trial at a time in the tests, as user objectives and sampled trials always
# do; tests/worker/test_fused.py turns fusion (the CPU default for grid points) on where it tests it.
os.environ.setdefault("HPSEARCH_FUSE", "1")
PG_ADMIN = os.environ.get("HPSEARCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def _admin_engine() -> Any:
    import sqlalchemy as sa

    url = PG_ADMIN.replace("postgresql://", "postgresql+psycopg2://", 1)
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the shared server; fails (not skips) under CI when it is unreachable."""
    import sqlalchemy as sa

    try:
        with _admin_engine().connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unreachable at {PG_ADMIN} under CI: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN}: {exc}")
    return PG_ADMIN


def _create_db(prefix: str) -> str:
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with _admin_engine().connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return name


def _drop_db(name: str) -> None:
    import sqlalchemy as sa

    with _admin_engine().connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_session_db(pg_server: str) -> Iterator[str]:
    """One fresh database per test session (studies inside get unique names)."""
    name = _create_db("hpsearch_test")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    _drop_db(name)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh database for one test (for tests that count every study or trial in it)."""
    name = _create_db("hpsearch_t")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    _drop_db(name)


@pytest.fixture
def journal_url(tmp_path: Path) -> str:
    return f"journal:{tmp_path / 'journal.log'}"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def write_spec(tmp_path: Path, spec: dict[str, Any], filename: str | None = None) -> Path:
    path = tmp_path / (filename or f"{spec.get('name', 'spec')}.yaml")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HPSEARCH_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(ROOT) + os.pathsep + str(ROOT / "tests" / "plugins")})
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `hpsearch ARGS...` as a user would, in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "hpsearch", *args], capture_output=True, text=True, timeout=timeout,
        env=env or cli_env(), cwd=cwd or ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"hpsearch {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_worker(study: str, storage: str, *extra: str, env: dict[str, str] | None = None,
                 log: Path | None = None) -> subprocess.Popen[str]:
    """A real `python worker.py` process."""
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py"), "--study", study, "--storage", storage, *extra],
        stdout=out, stderr=subprocess.STDOUT, text=True, env=env or cli_env(), cwd=ROOT,
    )


def tiny_spec(name: str, **over: Any) -> dict[str, Any]:
    """A spec that trains in well under a second per trial on digits."""
    spec: dict[str, Any] = {
        "name": name, "metric": "val_acc", "sampler": "grid", "pruner": "none", "repeats": 1,
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "train": {"epochs": 2, "batch_size": 128, "model": "dense", "hidden_size": 16, "hidden_layers": 1},
        "space": {"lr": {"choices": [0.01, 0.1]}, "optimizer": {"choices": ["sgd", "adam"]}},
    }
    spec.update(over)
    return spec


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by Selenium; required under CI (.ci/run installs it)."""
    import shutil

    if not (Path(CHROMIUM).exists() and shutil.which(CHROMEDRIVER)):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium/chromedriver are not installed (apt-get install chromium chromium-driver)")
        pytest.skip("chromium/chromedriver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console messages for the tests
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def throwaway_pg() -> Iterator[Any]:
    """A PostgreSQL cluster of the test module's own, to stop and restart (never the shared one)."""
    from pgcluster import Cluster

    cluster = Cluster().init()
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Dozens of tiny builds or steps: one torch thread each is faster than two that contend."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@contextmanager
def moto_s3(monkeypatch: pytest.MonkeyPatch, bucket: str, artifacts: str) -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1 (a real HTTP server) with an empty `bucket`, and
    the environment a worker reads (AWS_* and HPSEARCH_ARTIFACTS=`artifacts`); yields the endpoint."""
    import boto3
    from moto.server import ThreadedMotoServer

    from pgcluster import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "HPSEARCH_ARTIFACTS": artifacts}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    try:
        yield endpoint
    finally:
        server.stop()


# ---------------------------------------------------------------- what each test costs in CPU

_CPU_LOG = os.environ.get("HPSEARCH_TEST_CPU")  # a file: one line per test, "cpu_s wall_s nodeid"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """CPU seconds of a test, its own and its finished child processes' (workers, CLI runs), so the
    suite's cost can be ranked on a loaded machine, where wall times mean little."""
    if not _CPU_LOG:
        yield
        return
    import resource
    import time

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu(), time.monotonic()
    yield
    with open(_CPU_LOG, "a") as f:
        f.write(f"{cpu() - c0:.1f} {time.monotonic() - t0:.1f} {item.nodeid}\n")
