"""A rendered Kubernetes pod, run as plain processes: its init container, then its worker.

There is no cluster here. Each "pod" runs the rendered containers' command + args, as the kubelet
would, with the environment the manifest gives them: the Secret's value where a secretKeyRef
points, the pod's volume as a local folder, a read-only working directory (the image's /app
belongs to root), and SIGTERM to the container's first process only, as the kubelet sends it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from test_k8s import policy_action

from conftest import tiny_spec, unique
from hpsearch.ops import k8s
from hpsearch.queue import plan as plan_mod
from hpsearch.spec.parse import spec_from_dict
from hpsearch.storage.backend import open_storage

pytestmark = pytest.mark.postgres

SECRET_PASSWORD = "Pod-s3cret-pw"  # the test server trusts local connections, so any password works


def _secret_url(pg_session_db: str) -> str:
    return pg_session_db.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET_PASSWORD}@")


def _create(url: str, **over: Any) -> str:
    name = unique("pod")
    plan_mod.create(spec_from_dict(tiny_spec(name, **over)), open_storage(url, create=True))
    return name


def _rendered(name: str, **options: Any) -> dict[str, Any]:
    text = k8s.render(k8s.Pods(name, **{"workers": 1, "cpus": 1, "heartbeat": 5, **options}))
    assert SECRET_PASSWORD not in text
    return yaml.safe_load(text)


class Pod:
    """One pod of the Job, on this machine: (argv, env) of its init container and of its worker."""

    def __init__(self, manifest: dict[str, Any], secret: dict[str, str], root: Path) -> None:
        spec = manifest["spec"]["template"]["spec"]
        self.grace = spec["terminationGracePeriodSeconds"]
        self.root = root
        (root / "volume").mkdir(parents=True)
        (root / "home").mkdir()
        self.workdir = root / "app"
        self.workdir.mkdir()
        self.workdir.chmod(0o555)  # the image's WORKDIR is root's: a worker must not need to write there
        (self.wait,) = spec["initContainers"]
        (self.worker,) = spec["containers"]
        self.secret = secret

    def argv(self, c: dict[str, Any]) -> list[str]:
        argv = [*c.get("command", []), *c.get("args", [])]
        assert not any("$(" in a for a in c.get("args", [])), argv  # no kubelet $(VAR) expansion to imitate
        return argv

    def env(self, c: dict[str, Any]) -> dict[str, str]:
        # What the image provides (hpsearch on PATH, a home), plus what the manifest sets.
        env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin", "HOME": str(self.root / "home"),
               "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HPSEARCH_FUSE": "1"}
        mounts = {m["mountPath"]: self.root / "volume" for m in c.get("volumeMounts", [])}
        for e in c.get("env", []):
            if "value" in e:
                value = e["value"]
                for path, local in mounts.items():
                    value = value.replace(path, str(local), 1) if value.startswith(path) else value
                env[e["name"]] = value
                continue
            ref = e["valueFrom"]["secretKeyRef"]  # nothing else is read from the API here
            if ref["key"] in self.secret:
                env[e["name"]] = self.secret[ref["key"]]
            else:
                assert ref.get("optional"), f"the pod would not start: no key {ref['key']!r} in the Secret"
        return env

    def start(self, c: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(c), env=self.env(c), cwd=self.workdir, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT)

    def run_init(self, timeout: float = 120) -> int:
        proc = self.start(self.wait, self.root / "init.log")
        return proc.wait(timeout=timeout)


def _trials(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).trials


def test_two_rendered_pods_run_a_real_study_exactly_once(tmp_path: Path, pg_session_db: str) -> None:
    url = _secret_url(pg_session_db)
    grid = [0.01, 0.03, 0.1]
    name = _create(url, train={**tiny_spec("x")["train"], "epochs": 1}, space={"lr": {"choices": grid}})
    manifest = _rendered(name, workers=2)
    assert manifest["spec"]["completions"] == 2
    pods = [Pod(manifest, {"url": url}, tmp_path / f"pod-{i}") for i in range(2)]
    assert [pod.run_init() for pod in pods] == [0, 0]  # the study exists: the init containers pass at once
    workers = [pod.start(pod.worker, pod.root / "worker.log") for pod in pods]
    codes = [w.wait(timeout=240) for w in workers]
    logs = [(pod.root / "worker.log").read_text() for pod in pods]
    assert codes == [0, 0], logs  # done: each index of the Job completes
    trials = _trials(name, url)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3, logs
    assert sorted(t.params["lr"] for t in trials) == grid  # every grid point once, none twice
    assert all(SECRET_PASSWORD not in log for log in logs)


def test_sigterm_to_a_rendered_pod_hands_its_trial_back_within_the_grace_period(tmp_path: Path,
                                                                                pg_session_db: str) -> None:
    url = _secret_url(pg_session_db)
    # Slow trials (~0.3 s per epoch) so SIGTERM arrives mid-trial, as a preemption would.
    name = _create(url, train={"epochs": 20, "batch_size": 16, "model": "dense", "hidden_size": 512,
                               "hidden_layers": 2}, space={"lr": {"choices": [0.01]}})
    manifest = _rendered(name, stop_timeout=20)
    pod = Pod(manifest, {"url": url}, tmp_path / "pod")
    assert pod.run_init() == 0
    log = pod.root / "worker.log"
    proc = pod.start(pod.worker, log)
    try:
        deadline = time.monotonic() + 120
        while "epoch 2/20" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # to the container's first process: the shell
        sent = time.monotonic()
        code = proc.wait(timeout=pod.grace)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < pod.grace, took
    assert code == k8s.HAND_BACK_EXIT, log.read_text()  # not 0: the Job replaces the pod, not counted done
    assert policy_action(manifest, code) == "Ignore"  # ... nor against its backoff limit
    assert "handed back" in log.read_text()
    trials = _trials(name, url)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # handed back, ready for the replacement
    assert trials[1].user_attrs["retry_of"] == 0


def test_sigterm_before_the_worker_is_up_is_the_same_ignored_exit(tmp_path: Path, pg_session_db: str) -> None:
    manifest = _rendered("any-study")
    pod = Pod(manifest, {"url": _secret_url(pg_session_db)}, tmp_path / "pod")
    proc = pod.start(pod.worker, pod.root / "worker.log")
    time.sleep(0.3)  # the worker is still importing: no handler of its own yet
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=pod.grace)
    assert code == k8s.HAND_BACK_EXIT and policy_action(manifest, code) == "Ignore"


def test_the_pods_wait_for_the_study_and_give_up_on_a_bad_storage_at_once(tmp_path: Path,
                                                                         pg_session_db: str) -> None:
    url = _secret_url(pg_session_db)
    name = unique("later")
    manifest = _rendered(name)
    waiting = Pod(manifest, {"url": url}, tmp_path / "pod")
    proc = waiting.start(waiting.wait, waiting.root / "init.log")
    time.sleep(2)
    assert proc.poll() is None  # no such study yet: still waiting
    plan_mod.create(spec_from_dict(tiny_spec(name)), open_storage(url, create=True))  # create-study's Job
    assert proc.wait(timeout=60) == 0
    assert "does not exist" in (waiting.root / "init.log").read_text()  # why it waited, in its log

    broken = Pod(manifest, {"url": "postgresql://postgres:p@ss@127.0.0.1/x"}, tmp_path / "broken")
    code = broken.run_init(timeout=60)
    assert code == 2 and policy_action(manifest, code) == "FailJob"  # every pod would fail the same way
