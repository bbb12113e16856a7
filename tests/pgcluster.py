"""A throwaway PostgreSQL cluster a test starts, restarts and stops itself (never the shared one).

It runs as the `postgres` system user when the tests run as root (initdb refuses root), listens
on a free loopback port and requires a password (scram), so wrong-password handling is real.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PASSWORD = "s3cret-pw"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL binary {name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, max_connections: int = 100) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hps-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.max_connections = max_connections
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        full = ["runuser", "-u", "postgres", "--", *cmd] if self.as_postgres else list(cmd)
        return subprocess.run(full, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> Cluster:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                    f"max_connections = {self.max_connections}\nfsync = off\nsynchronous_commit = off\n")
        return self

    def start(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def url(self, db: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{db}"

    def create_db(self, name: str) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url().replace("postgresql://", "postgresql+psycopg2://"),
                                  isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def scram_secret(self, user: str = "postgres") -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url().replace("postgresql://", "postgresql+psycopg2://"))
        with engine.connect() as conn:
            secret = conn.execute(sa.text("SELECT rolpassword FROM pg_authid WHERE rolname = :u"), {"u": user}).scalar()
        engine.dispose()
        return str(secret)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("throwaway PostgreSQL did not come up")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class Bouncer:
    """pgbouncer (Debian's package) in transaction pooling mode in front of a Cluster.

    Clients connect to its port with the cluster's user and password; it keeps at most
    `pool_size` server connections per database however many clients it has.
    """

    def __init__(self, cluster: Cluster, pool_size: int = 10, max_client_conn: int = 1000) -> None:
        exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.path.exists(exe):
            raise RuntimeError("pgbouncer is not installed (Debian package pgbouncer; .ci/run installs it)")
        self.exe = exe
        self.cluster = cluster
        self.dir = cluster.root / "pgbouncer"
        self.dir.mkdir()
        self.port = free_port()
        # The server's SCRAM secret, not the password: with a plain password pgbouncer runs the
        # 4096-round key derivation for every login (~0.1 s each, one at a time), and 200 workers
        # starting together time out; with the secret a login is a couple of HMACs.
        (self.dir / "userlist.txt").write_text(f'"postgres" "{cluster.scram_secret()}"\n')
        (self.dir / "pgbouncer.ini").write_text(
            f"[databases]\n* = host=127.0.0.1 port={cluster.port}\n\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self.dir / 'userlist.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = {max_client_conn}\n"
            f"max_db_connections = {pool_size}\nlogfile = {self.dir / 'log'}\npidfile = {self.dir / 'pid'}\n"
            "ignore_startup_parameters = extra_float_digits,options\n")
        if cluster.as_postgres:
            for path in (self.dir, *self.dir.iterdir()):
                shutil.chown(path, "postgres", "postgres")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [self.exe, str(self.dir / "pgbouncer.ini")]
        if self.cluster.as_postgres:  # pgbouncer refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"pgbouncer exited: {(self.dir / 'log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        raise RuntimeError("pgbouncer did not come up")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
