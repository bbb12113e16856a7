"""`hpsearch dashboard` demands a token by default, on loopback too: real processes, real HTTP."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, cli_env, run_cli, tiny_spec, unique, write_spec

TOKEN = "dashboard-auth-token-" + "d" * 20


class Dashboard:
    """`hpsearch dashboard --port 0` as a process, its output in a file."""

    def __init__(self, storage: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.log = tmp_path / f"dashboard-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hpsearch", "dashboard", "--storage", storage, "--port", "0", *extra],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, text=True,  # noqa: SIM115
            env=env or cli_env(HPSEARCH_TOKEN=TOKEN), cwd=ROOT)
        deadline = time.monotonic() + 60
        while not (m := re.search(r"http://127\.0\.0\.1:(\d+)/", self.output())):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.1)
        self.port = int(m[1])

    def output(self) -> str:
        return self.log.read_text()

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> http.client.HTTPResponse:
        """One request, redirects not followed (the login's 303 is what is tested)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def study_storage(tmp_path: Path, journal_url: str) -> str:
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(unique("dash")))), "--storage", journal_url, check=True)
    return journal_url


@pytest.fixture
def dash(study_storage: str, tmp_path: Path) -> Iterator[Dashboard]:
    d = Dashboard(study_storage, tmp_path)
    yield d
    d.stop()


@pytest.mark.parametrize("path", ["/api/studies", "/dashboard", "/api/studies/0", "/"])
def test_without_the_token_nothing_is_served(dash: Dashboard, path: str) -> None:
    assert dash.get(path).status == 401
    assert dash.get(path, {"Authorization": "Bearer wrong-token-" + "w" * 20}).status == 401
    assert dash.get(path, {"Cookie": f"hpsearch-dashboard-{dash.port}=forged"}).status == 401
    assert dash.get(f"{path}?token=wrong-token-{'w' * 20}").status == 401
    assert dash.get(path, method="DELETE").status == 401


def test_with_the_token_it_is_served(dash: Dashboard) -> None:
    assert dash.get("/api/studies", {"Authorization": f"Bearer {TOKEN}"}).status == 200


def test_the_token_once_in_the_url_then_a_cookie(dash: Dashboard) -> None:
    login = dash.get(f"/dashboard?token={TOKEN}&x=1")
    assert login.status == 303 and login.getheader("Location") == "/dashboard?x=1"  # the token leaves the URL
    cookie = login.getheader("Set-Cookie") or ""
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    pair = cookie.split(";", 1)[0]
    assert dash.get("/api/studies", {"Cookie": pair}).status == 200
    assert dash.get("/dashboard", {"Cookie": pair}).status == 200


def test_refusals_are_logged_without_what_was_sent(dash: Dashboard) -> None:
    wrong = "wrong-token-" + "z" * 20
    dash.get(f"/api/studies?token={wrong}")
    dash.get("/api/studies", {"Authorization": f"Bearer {wrong}"})
    dash.get(f"/api/studies?token={TOKEN}")
    time.sleep(0.5)
    out = dash.output()
    assert out.count("401 Unauthorized: missing or wrong token") == 2
    assert wrong not in out and TOKEN not in out


def test_read_only_wants_the_token_too(study_storage: str, tmp_path: Path) -> None:
    d = Dashboard(study_storage, tmp_path, "--read-only")
    try:
        assert d.get("/api/studies").status == 401
        assert d.get("/api/studies", {"Authorization": f"Bearer {TOKEN}"}).status == 200
    finally:
        d.stop()


def test_without_a_token_given_one_is_written_for_this_user_only(study_storage: str, tmp_path: Path) -> None:
    env = cli_env(XDG_CONFIG_HOME=str(tmp_path / "config"))
    env.pop("HPSEARCH_TOKEN", None)
    d = Dashboard(study_storage, tmp_path, env=env)
    try:
        file = tmp_path / "config" / "hpsearch" / "token"
        assert file.stat().st_mode & 0o777 == 0o600
        secret = file.read_text().strip()
        assert str(file) in d.output() and secret not in d.output()  # a pipe, not a terminal: no login URL
        assert d.get("/api/studies").status == 401
        assert d.get("/api/studies", {"Authorization": f"Bearer {secret}"}).status == 200
    finally:
        d.stop()
    # A second server reuses it: running workers and open browsers keep working across restarts.
    d = Dashboard(study_storage, tmp_path, env=env)
    try:
        assert d.get("/api/studies", {"Authorization": f"Bearer {secret}"}).status == 200
    finally:
        d.stop()


def test_no_auth_serves_anyone_and_says_so(study_storage: str, tmp_path: Path) -> None:
    d = Dashboard(study_storage, tmp_path, "--no-auth")
    try:
        assert d.get("/api/studies").status == 200
        assert "NO AUTHENTICATION" in d.output() and "--no-auth" in d.output()
    finally:
        d.stop()


@pytest.mark.parametrize(("args", "says"), [
    (("--no-auth", "--auth", "user:password"), "do not go together"),
    (("--host", "0.0.0.0", "--no-auth"), "--read-only"),
])
def test_contradictions_are_one_line(study_storage: str, args: tuple[str, ...], says: str) -> None:
    proc = run_cli("dashboard", "--storage", study_storage, "--port", "0", *args, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr


def test_a_bad_token_in_the_environment_is_one_line(study_storage: str) -> None:
    proc = run_cli("dashboard", "--storage", study_storage, "--port", "0", env=cli_env(HPSEARCH_TOKEN="short"),
                   timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "HPSEARCH_TOKEN must be" in proc.stderr
