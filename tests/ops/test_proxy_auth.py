"""`hpsearch proxy` refuses every call without its token, and the token shows up nowhere.

A real proxy process in front of a real PostgreSQL database, hostile clients on stock Optuna and
on hpsearch, real worker processes with W&B (offline), and the CLI run as a user would.
"""

from __future__ import annotations

import datetime
import functools
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from hpsearch.errors import HpsearchError
from hpsearch.redact import mask
from hpsearch.storage import grpc_proxy
from hpsearch.storage.backend import open_storage
from hpsearch.storage.grpc_proxy import ProxyRefused
from hpsearch.storage.optuna_internals import grpc_proxy_on
from pgcluster import free_port

TOKEN = "proxy-test-token-" + "k" * 24


class Proxy:
    """`hpsearch proxy` as a process; its output (stdout and stderr) goes to a file."""

    def __init__(self, pg: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = tmp_path / f"proxy-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hpsearch", "proxy", "--storage", pg, "--port", str(self.port), *extra],
            env=env or cli_env(HPSEARCH_TOKEN=TOKEN), cwd=ROOT, stdout=open(self.log, "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while "hpsearch proxy for" not in self.output():
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)
        optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=self.port).wait_server_ready(timeout=30)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def proxy(pg_url: str, tmp_path: Path) -> Iterator[Proxy]:
    p = Proxy(pg_url, tmp_path)
    yield p
    p.stop()


def _study(pg: str, tmp_path: Path, **over: object) -> str:
    name = unique("guarded")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name, **over))), "--storage", pg, check=True)
    return name


def _client(port: int, secret: str | None) -> optuna.storages.GrpcStorageProxy:
    """hpsearch's client with a given token (None: none at all)."""
    make = functools.partial(grpc_proxy.make_channel, "127.0.0.1", port, secret, False, None)
    return grpc_proxy_on(make, "127.0.0.1", port)


# ---------------------------------------------------------------- no token, no access


def test_stock_optuna_without_a_token_can_neither_list_read_set_nor_delete(
        proxy: Proxy, pg_url: str, tmp_path: Path) -> None:
    name = _study(pg_url, tmp_path)
    stranger = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=proxy.port)  # another local user
    attempts = {
        "list": stranger.get_all_studies,
        "read the spec": lambda: stranger.get_study_user_attrs(stranger.get_study_id_from_name(name)),
        "set an attr": lambda: stranger.set_study_user_attr(0, "hpsearch:ready", False),
        "delete": lambda: stranger.delete_study(0),
    }
    for what, attempt in attempts.items():
        with pytest.raises(grpc.RpcError) as err:
            attempt()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, what
    # Nothing changed, as PostgreSQL itself says.
    study = optuna.load_study(study_name=name, storage=open_storage(pg_url))
    assert study.user_attrs["hpsearch:ready"] is True
    assert "missing or wrong token" in proxy.output() and TOKEN not in proxy.output()


@pytest.mark.parametrize("secret", [None, "wrong-token-" + "w" * 20, TOKEN[:-1]], ids=["none", "wrong", "one-short"])
def test_a_missing_or_wrong_token_is_refused_for_every_call(
        proxy: Proxy, pg_url: str, tmp_path: Path, secret: str | None) -> None:
    name = _study(pg_url, tmp_path)
    client = _client(proxy.port, secret)
    for attempt in (client.get_all_studies, lambda: client.get_study_id_from_name(name),
                    lambda: client.set_study_user_attr(0, "hpsearch:ready", False), lambda: client.delete_study(0)):
        with pytest.raises(ProxyRefused, match="missing or wrong token"):
            attempt()
    assert name in [s.study_name for s in _client(proxy.port, TOKEN).get_all_studies()]
    assert "refused a call from" in proxy.output()
    assert TOKEN not in proxy.output() and (secret is None or secret not in proxy.output())


@pytest.mark.parametrize("given", ["none", "wrong"])
def test_the_cli_without_the_right_token_is_one_line(
        proxy: Proxy, pg_url: str, tmp_path: Path, given: str) -> None:
    _study(pg_url, tmp_path)
    env = cli_env(XDG_CONFIG_HOME=str(tmp_path / "no-config"))  # and no token file to fall back on
    env.pop("HPSEARCH_TOKEN", None)
    if given == "wrong":
        env["HPSEARCH_TOKEN"] = "not-the-token-" + "n" * 20
    for args in (("list",), ("status", "anything"), ("worker", "--study", "anything")):
        proc = run_cli(*args, "--storage", f"grpc://127.0.0.1:{proxy.port}", env=env)
        assert proc.returncode == 4, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"the proxy at 127.0.0.1:{proxy.port} refused" in proc.stderr
        assert "missing or wrong token" in proc.stderr and "HPSEARCH_TOKEN" in proc.stderr


def test_the_token_may_come_from_the_url_the_environment_or_a_file(
        proxy: Proxy, pg_url: str, tmp_path: Path) -> None:
    name = _study(pg_url, tmp_path)
    file = tmp_path / "token"
    file.write_text(TOKEN + "\n")
    file.chmod(0o600)
    plain = f"grpc://127.0.0.1:{proxy.port}"
    env = cli_env(XDG_CONFIG_HOME=str(tmp_path / "no-config"))
    env.pop("HPSEARCH_TOKEN", None)
    for storage, extra in ((f"grpc://:{TOKEN}@127.0.0.1:{proxy.port}", {}), (plain, {"HPSEARCH_TOKEN": TOKEN}),
                           (plain, {"HPSEARCH_TOKEN": f"@{file}"})):
        proc = run_cli("list", "--storage", storage, env={**env, **extra})
        assert proc.returncode == 0 and name in proc.stdout, proc.stderr
        assert TOKEN not in proc.stdout + proc.stderr


def test_help_says_which_flags_are_dangerous() -> None:
    text = " ".join(run_cli("proxy", "--help").stdout.split())
    assert "$HPSEARCH_TOKEN" in text and "--tls-cert" in text
    assert "DANGEROUS: no token" in text and "DANGEROUS: allow a non-loopback" in text


def test_a_token_url_is_masked_wherever_it_is_printed() -> None:
    assert TOKEN not in mask(f"storage grpc://:{TOKEN}@10.0.0.1:13000 refused")
    assert TOKEN not in mask(f"grpcs://user:{TOKEN}@host:13000")
    assert TOKEN not in mask(f"grpc://{TOKEN}@host:13000")  # where a user name goes: hidden too
    with pytest.raises(HpsearchError, match="after a colon") as err:
        grpc_proxy.parse(f"grpc://{TOKEN}@host:13000")
    assert TOKEN not in str(err.value)


# ---------------------------------------------------------------- with the token, a whole study


def _cmdlines() -> str:
    text = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            text.append((proc_dir / "cmdline").read_bytes().decode("utf-8", "replace"))
        except OSError:
            continue
    return "\n".join(text)


def test_a_worker_with_the_token_runs_a_study_and_the_token_is_nowhere(pg_url: str, tmp_path: Path) -> None:
    config = tmp_path / "config"
    env = cli_env(XDG_CONFIG_HOME=str(config), WANDB_DIR=str(tmp_path / "wandb"))
    env.pop("HPSEARCH_TOKEN", None)
    name = _study(pg_url, tmp_path, tracking={"project": "hpsearch-tests"})
    proxy = Proxy(pg_url, tmp_path, env=env)  # no token given: it writes one, for this user only
    try:
        token_file = config / "hpsearch" / "token"
        assert token_file.stat().st_mode & 0o777 == 0o600 and token_file.parent.stat().st_mode & 0o077 == 0
        secret = token_file.read_text().strip()
        assert len(secret) >= 32 and secret not in proxy.output()
        # One worker finds the token in the file; the other is given it in the URL on its command line.
        (tmp_path / "wandb").mkdir()
        workers = [start_worker(name, f"grpc://127.0.0.1:{proxy.port}", "--quiet", env=env, log=tmp_path / "w0.log"),
                   start_worker(name, f"grpc://:{secret}@127.0.0.1:{proxy.port}", "--quiet", env=env,
                                log=tmp_path / "w1.log")]
        study = optuna.load_study(study_name=name, storage=open_storage(pg_url))
        deadline = time.monotonic() + 120
        while not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), \
                (tmp_path / "w0.log").read_text() + (tmp_path / "w1.log").read_text()
            time.sleep(0.2)
        running = _cmdlines()  # the server and both workers are up
        codes = [w.wait(timeout=300) for w in workers]
        logs = (tmp_path / "w0.log").read_text() + (tmp_path / "w1.log").read_text()
        assert codes == [0, 0], logs[-3000:]
        trials = study.get_trials(deepcopy=False)
        assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 4}
        # hpsearch's reading commands through the proxy, with the token from the file.
        exported = tmp_path / "export.json"
        run_cli("export", name, "--storage", f"grpc://127.0.0.1:{proxy.port}", "--format", "json",
                "--out", str(exported), env=env, check=True)
        status = run_cli("status", name, "--storage", f"grpc://:{secret}@127.0.0.1:{proxy.port}", env=env, check=True)
    finally:
        proxy.stop()
    assert secret not in running, "the token is in some process's command line"
    assert secret not in logs + proxy.output() + status.stdout + status.stderr
    assert secret not in exported.read_text()
    wandb_files = [p for p in (tmp_path / "wandb").rglob("*") if p.is_file()]
    assert wandb_files, "W&B wrote no offline run"
    assert not [p for p in wandb_files if secret.encode() in p.read_bytes()]
    assert not [t.number for t in trials if secret in repr(t.user_attrs) + repr(t.system_attrs)]


# ---------------------------------------------------------------- exposure


@pytest.mark.parametrize(("extra", "needs"), [
    ((), "--tls-cert"),
    (("--no-auth",), "--no-auth"),
    (("--no-auth", "--insecure"), "--no-auth"),
])
def test_a_non_loopback_address_without_tls_or_insecure_is_refused_in_one_line(
        pg_url: str, extra: tuple[str, ...], needs: str) -> None:
    proc = run_cli("proxy", "--storage", pg_url, "--host", "0.0.0.0", "--port", str(free_port()), *extra,
                   timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and needs in proc.stderr and "Traceback" not in proc.stderr


def test_insecure_on_every_interface_still_wants_the_token_and_says_so(pg_url: str, tmp_path: Path) -> None:
    p = Proxy(pg_url, tmp_path, "--host", "0.0.0.0", "--insecure")
    try:
        assert "in clear" in p.output()
        with pytest.raises(ProxyRefused):
            _client(p.port, None).get_all_studies()
    finally:
        p.stop()


def test_no_auth_on_loopback_serves_without_a_token_and_warns(pg_url: str, tmp_path: Path) -> None:
    p = Proxy(pg_url, tmp_path, "--no-auth")
    try:
        assert "NO AUTHENTICATION" in p.output() and "--no-auth" in p.output()
        optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=p.port).get_all_studies()
    finally:
        p.stop()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def test_tls_with_the_users_certificate_serves_grpcs(pg_url: str, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "proxy", "--storage", pg_url, "--port", str(port),
                             "--host", "0.0.0.0", "--tls-cert", str(cert), "--tls-key", str(key)],
                            env=cli_env(HPSEARCH_TOKEN=TOKEN), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"grpcs://0.0.0.0:{port}" in line, line + (proc.stdout.read() if proc.poll() is not None else "")
        name = _study(pg_url, tmp_path)
        env = cli_env(HPSEARCH_TOKEN=TOKEN, HPSEARCH_TLS_CA=str(cert))
        listed = run_cli("list", "--storage", f"grpcs://localhost:{port}", env=env)
        assert listed.returncode == 0 and name in listed.stdout, listed.stderr
        wrong = run_cli("list", "--storage", f"grpcs://localhost:{port}",
                        env={**env, "HPSEARCH_TOKEN": "not-the-token-" + "n" * 20})
        assert wrong.returncode == 4 and "missing or wrong token" in wrong.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(("args", "says"), [
    (("--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"), "--tls-cert must be a readable PEM"),
    (("--tls-cert", "/etc/hostname"), "go together"),
    (("--token-file", "/nonexistent-token"), "cannot read the token file"),
])
def test_bad_tls_and_token_files_are_one_line(pg_url: str, args: tuple[str, ...], says: str) -> None:
    proc = run_cli("proxy", "--storage", pg_url, "--port", str(free_port()), *args, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr


def test_a_second_proxy_on_a_port_in_use_is_one_line(proxy: Proxy, pg_url: str) -> None:
    # gRPC's default SO_REUSEPORT would let it share the port, taking some of the workers' calls.
    proc = run_cli("proxy", "--storage", pg_url, "--port", str(proxy.port), timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"cannot listen on 127.0.0.1:{proxy.port}" in proc.stderr
