"""`hpsearch launch k8s` and deploy/k8s: rendered, held to the Kubernetes schema, applied to a stand-in.

There is no cluster here. Every manifest is validated offline against the Kubernetes OpenAPI schema
(kubernetes-validate, strict: an unknown field is an error); kubectl builds the Kustomization where
it is installed and checks the manifests with `apply --dry-run=client` where it also has a context.
tests/ops/test_k8s_run.py runs a rendered pod's command as a plain process.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from conftest import ROOT, cli_env, run_cli, tiny_spec, unique, write_spec
from hpsearch.cli.main import main
from hpsearch.ops import k8s
from hpsearch.worker.stopping import HAND_BACK_WAIT

DEPLOY = ROOT / "deploy" / "k8s"
# The oldest release with every field the Job uses (podFailurePolicy GA; backoffLimitPerIndex and
# podReplacementPolicy on by default), and the newest the validator knows.
VERSIONS = ("1.31", kubernetes_validate.latest_version())
VARIANTS = {
    "defaults": k8s.Pods("mnist-grid", 4),
    "cpu only": k8s.Pods("mnist-grid", 2, gpus=0),
    "everything set": k8s.Pods("Mnist_Grid.v2", 8, gpus=2, max_running=3, image="registry.example/hps:1.0",
                               namespace="ml-team", secret="hps-db", heartbeat=10, stop_timeout=120, cpus=6,
                               mem="48Gi"),
}


def job(pods: k8s.Pods) -> dict[str, Any]:
    return yaml.safe_load(k8s.render(pods))


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def container(manifest: dict[str, Any], name: str = k8s.WORKER) -> dict[str, Any]:
    spec = pod_spec(manifest)
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def deploy_docs(listed_only: bool = False) -> list[dict[str, Any]]:
    """Every object in deploy/k8s: what the Kustomization lists, and the Job template."""
    names = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    names += [] if listed_only else [Path(k8s.TEMPLATE).name]
    return [d for name in names for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def containers_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"].get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def policy_action(manifest: dict[str, Any], exit_code: int, conditions: tuple[str, ...] = ()) -> str:
    """What the Job controller does with a failed pod: the first matching rule's action, else Count."""
    for rule in manifest["spec"]["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        if codes and (exit_code in codes["values"]) == (codes["operator"] == "In"):
            return rule["action"]
        if any(c["type"] in conditions for c in rule.get("onPodConditions", [])):
            return rule["action"]
    return "Count"


# ---------------------------------------------------------------- the Kubernetes schema


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_rendered_job_validates_against_the_kubernetes_schema(variant: str, version: str) -> None:
    manifest = job(VARIANTS[variant])
    assert kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_in_deploy_k8s_validates_against_the_kubernetes_schema(version: str) -> None:
    docs = deploy_docs()
    assert {d["kind"] for d in docs} == {"Job", "StatefulSet", "Service", "Deployment"}
    for doc in docs:
        assert kubernetes_validate.validate(doc, version, strict=True), doc["metadata"]["name"]


def test_the_schema_check_refuses_a_misspelled_or_mistyped_field() -> None:
    manifest = job(VARIANTS["defaults"])
    pod_spec(manifest)["terminationGracePeriod"] = 90  # not a field: ...Seconds
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, VERSIONS[0], strict=True)
    manifest = job(VARIANTS["defaults"])
    manifest["spec"]["completions"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, VERSIONS[0], strict=True)


def _kubectl_context() -> str | None:
    if shutil.which("kubectl") is None:
        return None
    proc = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (optional)")
def test_kubectl_builds_the_kustomization_into_valid_objects() -> None:
    proc = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    built = [d for d in yaml.safe_load_all(proc.stdout) if d]
    names = sorted((d["kind"], d["metadata"]["name"]) for d in built)
    assert names == sorted((d["kind"], d["metadata"]["name"]) for d in deploy_docs(listed_only=True))
    for doc in built:
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


@pytest.mark.skipif(_kubectl_context() is None, reason="kubectl with a current context is needed (optional)")
def test_kubectl_apply_dry_run_accepts_the_job_and_the_kustomization(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(k8s.render(VARIANTS["defaults"]))
    for source in (["--filename", str(path)], ["--kustomize", str(DEPLOY)]):
        proc = subprocess.run(["kubectl", "apply", "--dry-run=client", *source], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- what a pod gets


def test_an_indexed_job_of_one_worker_per_pod_each_with_one_gpu_and_its_share() -> None:
    manifest = job(VARIANTS["defaults"])
    spec = manifest["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    worker = container(manifest)
    res = worker["resources"]
    assert res["requests"][k8s.GPU] == res["limits"][k8s.GPU] == 1
    template = container(yaml.safe_load(k8s.template_path().read_text()))["resources"]["requests"]
    assert (res["requests"]["cpu"], res["requests"]["memory"]) == (template["cpu"], template["memory"])
    assert res["limits"]["memory"] == res["requests"]["memory"] and "cpu" not in res["limits"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["HPSEARCH_THREADS"] == res["requests"]["cpu"]  # no CPU limit: no quota for the worker to read
    assert worker["args"][:4] == ["hpsearch", "worker", "--study", "mnist-grid"]
    assert container(manifest, k8s.WAIT)["args"] == ["mnist-grid"]


def test_a_pod_of_two_gpus_gets_twice_the_share_and_options_override_it() -> None:
    doubled = container(job(k8s.Pods("s", 2, gpus=2)))["resources"]
    assert doubled["requests"][k8s.GPU] == 2 and doubled["requests"]["cpu"] == "8"
    assert doubled["requests"]["memory"] == doubled["limits"]["memory"] == "32Gi"
    chosen = container(job(VARIANTS["everything set"]))
    assert chosen["resources"]["requests"]["cpu"] == "6" and chosen["resources"]["limits"]["memory"] == "48Gi"
    assert chosen["image"] == "registry.example/hps:1.0" == container(job(VARIANTS["everything set"]), k8s.WAIT)["image"]
    cpu = container(job(VARIANTS["cpu only"]))["resources"]
    assert k8s.GPU not in cpu["requests"] and k8s.GPU not in cpu["limits"]


def test_max_running_throttles_the_pods_running_at_once() -> None:
    manifest = job(VARIANTS["everything set"])
    assert (manifest["spec"]["completions"], manifest["spec"]["parallelism"]) == (8, 3)
    assert manifest["metadata"]["namespace"] == "ml-team"
    assert manifest["metadata"]["name"].startswith("hps-mnist-grid-v2-")
    assert manifest["metadata"]["annotations"]["hpsearch/study"] == "Mnist_Grid.v2"


def test_every_container_reads_the_storage_url_from_the_secret() -> None:
    for variant, secret in (("defaults", "hpsearch-storage"), ("everything set", "hps-db")):
        manifest = job(VARIANTS[variant])
        for name in (k8s.WORKER, k8s.WAIT):
            env = {e["name"]: e for e in container(manifest, name)["env"]}
            assert env["HPSEARCH_STORAGE"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "url"}
            assert all("://" not in str(e.get("value", "")) for e in env.values())
    for doc in deploy_docs():
        assert doc["kind"] not in ("Secret", "ConfigMap")  # created by the user, never shipped
        for e in (e for c in containers_of(doc) for e in c.get("env", [])):
            if e["name"] in ("HPSEARCH_STORAGE", "POSTGRES_PASSWORD", "HPSEARCH_TOKEN", "WANDB_API_KEY"):
                assert e["valueFrom"]["secretKeyRef"]["name"] == "hpsearch-storage", (doc["kind"], e)
            assert "://" not in str(e.get("value", "")), e


def test_the_grace_period_exceeds_the_stop_timeout_and_the_hand_back_wait() -> None:
    for stop in (0, 8, 60, 90.5, 600):
        manifest = job(k8s.Pods("s", 1, stop_timeout=stop))
        grace = pod_spec(manifest)["terminationGracePeriodSeconds"]
        args = container(manifest)["args"]
        assert float(args[args.index("--stop-timeout") + 1]) == stop
        # The worker leaves at the stop timeout, after at most HAND_BACK_WAIT more for its hand-back writes.
        assert grace > stop + HAND_BACK_WAIT, (stop, grace)


def test_the_failure_policy_ignores_hand_back_and_preemption_and_counts_crashes() -> None:
    manifest = job(VARIANTS["defaults"])
    assert pod_spec(manifest)["restartPolicy"] == "Never"  # the API refuses a failure policy otherwise
    assert k8s.HAND_BACK_EXIT == 128 + signal.SIGTERM  # what the pod's shell exits with after a hand-back
    assert policy_action(manifest, k8s.HAND_BACK_EXIT) == "Ignore"
    assert policy_action(manifest, 137, ("DisruptionTarget",)) == "Ignore"  # preempted, killed after the grace
    assert policy_action(manifest, 0, ("DisruptionTarget",)) == "Ignore"
    assert policy_action(manifest, 137) == "Count"  # out of memory: a real failure
    assert policy_action(manifest, 1) == "Count"  # too many failed trials in a row on this worker
    assert policy_action(manifest, 4) == "Count"  # the storage unreachable: worth a retry
    assert policy_action(manifest, 2) == policy_action(manifest, 3) == "FailJob"  # bad input, no such study
    for rule in manifest["spec"]["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        assert not codes or codes["operator"] != "In" or 0 not in codes["values"]  # the API refuses 0 with In


def test_the_image_is_the_one_docker_compose_builds_and_is_not_pulled_over() -> None:
    image = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-hpsearch"]["image"]
    manifest = job(VARIANTS["defaults"])
    hpsearch_containers = [container(manifest), container(manifest, k8s.WAIT)]
    hpsearch_containers += [c for doc in deploy_docs() for c in containers_of(doc) if c["image"].startswith("hpsearch")]
    assert len(hpsearch_containers) == 6  # the rendered and the template's worker and wait, dashboard, create-study
    for c in hpsearch_containers:
        # :latest is pulled on every start by default, which fails for an image loaded into the nodes.
        assert c["image"] == image and c["imagePullPolicy"] == "IfNotPresent", c["name"]


def test_the_workers_wait_for_the_study_that_the_create_study_job_creates() -> None:
    create = next(d for d in deploy_docs() if d["metadata"]["name"] == "hpsearch-create-study")
    (c,) = create["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["hpsearch", "create-study"]
    wait = container(job(VARIANTS["defaults"]), k8s.WAIT)
    assert "hpsearch status" in wait["command"][-2]


def test_the_readme_gives_the_three_commands_and_the_secret_keys_it_uses() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Kubernetes"):text.index("\n## ", text.index("## Kubernetes") + 1)]
    block = section[section.index("```sh") + 5:section.index("```", section.index("```sh") + 5)]
    commands = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.split("#")[0].strip()]
    assert len(commands) == 3
    assert commands[0].startswith("kubectl create secret generic hpsearch-storage")
    assert "create-study" in commands[1] or "apply -k deploy/k8s" in commands[1]
    assert commands[2].startswith("hpsearch launch k8s")
    used = {ref["key"] for d in deploy_docs() for ref in _secret_refs(d)}
    assert used == {"url", "postgres-password", "dashboard-token", "wandb-api-key"}
    assert all(f"{key}=" in section for key in used), used


def _secret_refs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["valueFrom"]["secretKeyRef"] for c in containers_of(doc) for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})]


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize("argv, expected", [
    (["--workers", "0"], "--workers must be >= 1, but got workers=0"),
    (["--mem", "16GB"], "--mem must be a Kubernetes quantity like 16Gi or 16G, but got mem='16GB'"),
    (["--namespace", "ML_team"], "--namespace must be a DNS label"),
    (["--secret", "my secret"], "--secret must be a Secret's name"),
    (["--setup", "module load cuda"], "--setup is for slurm/pbs jobs, but got launch k8s"),
])
def test_a_bad_option_is_one_line(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    assert main(["launch", "k8s", "--study", "s", "--dry-run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_the_options_of_k8s_are_refused_by_the_other_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", "slurm", "--study", "s", "--image", "x", "--stop-timeout", "5", "--dry-run"]) == 2
    assert "--image and --stop-timeout are for launch k8s, but got launch slurm" in capsys.readouterr().err


def test_a_good_dry_run_prints_the_job_without_touching_a_storage(capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    assert main(["launch", "k8s", "--study", "s", "--workers", "3", "--dry-run"]) == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert manifest["kind"] == "Job" and manifest["spec"]["completions"] == 3


def test_a_storage_given_here_is_read_to_check_the_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"journal:{tmp_path / 'journal.log'}"
    assert main(["launch", "k8s", "--study", "s", "--storage", missing, "--dry-run"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "the pods read theirs from the Secret" in err


@pytest.mark.postgres
def test_no_password_in_the_dry_run_output_or_the_job(tmp_path: Path, pg_session_db: str) -> None:
    secret = "Sup3r-s3cret-pw"  # the test server trusts local connections, so any password works
    url = pg_session_db.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    name = unique("k8s")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", url, check=True)
    for how in (["--storage", url], []):  # given, or from the environment
        proc = run_cli("launch", "k8s", "--study", name, "--workers", "6", "--dry-run", *how,
                       env=cli_env(HPSEARCH_STORAGE=url))
        assert proc.returncode == 0, proc.stderr
        assert secret not in proc.stdout + proc.stderr
        assert f"# study {name}: grid sampler" in proc.stdout  # the study was read, to check it exists
        assert "4 trials left to run; 2 of the 6 workers will find nothing to do" in proc.stderr
        kubernetes_validate.validate(yaml.safe_load(proc.stdout), VERSIONS[-1], strict=True)


# ---------------------------------------------------------------- applying, with a stand-in kubectl


def _stand_in_kubectl(tmp_path: Path) -> Path:
    """Records every call and what `apply` reads; no context or no Secret when the test says so."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "kubectl"
    path.write_text(f"""#!/bin/bash
echo "$*" >> "{tmp_path}/kubectl.calls"
case "$*" in
  "config current-context") [[ -z "${{NO_CONTEXT:-}}" ]] && echo test-cluster || exit 1 ;;
  *"get secret"*) [[ -z "${{NO_SECRET:-}}" ]] && echo secret/hpsearch-storage \\
      || {{ echo 'Error from server (NotFound): secrets "hpsearch-storage" not found' >&2; exit 1; }} ;;
  *"apply --filename -"*) cat > "{tmp_path}/kubectl.applied"; echo "job.batch/x created" ;;
esac
""")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_launch_applies_the_job_once_kubectl_has_a_context_and_the_secret_exists(tmp_path: Path) -> None:
    path = f"{_stand_in_kubectl(tmp_path)}{os.pathsep}{os.environ['PATH']}"
    argv = ("launch", "k8s", "--study", "s", "--workers", "2", "--namespace", "ml")
    env = {k: v for k, v in cli_env(PATH=path).items() if k != "HPSEARCH_STORAGE"}

    missing = run_cli(*argv, env={**env, "NO_SECRET": "1"})
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "kubectl create secret generic hpsearch-storage --from-env-file=FILE" in missing.stderr
    no_context = run_cli(*argv, env={**env, "NO_CONTEXT": "1"})
    assert no_context.returncode == 2 and "no current context" in no_context.stderr
    assert not (tmp_path / "kubectl.applied").exists()

    proc = run_cli(*argv, env=env)
    assert proc.returncode == 0, proc.stderr
    applied = yaml.safe_load((tmp_path / "kubectl.applied").read_text())
    assert applied["metadata"]["namespace"] == "ml" and applied["spec"]["completions"] == 2
    calls = (tmp_path / "kubectl.calls").read_text().splitlines()
    assert calls[-2:] == ["--namespace ml get secret hpsearch-storage --output name", "--namespace ml apply --filename -"]
    assert f"created Job {applied['metadata']['name']} in namespace ml: 2 workers" in proc.stdout


def test_launch_without_kubectl_says_so() -> None:
    env = {k: v for k, v in cli_env(PATH=str(Path(sys.executable).parent)).items() if k != "HPSEARCH_STORAGE"}
    proc = run_cli("launch", "k8s", "--study", "s", env=env)
    assert proc.returncode == 2 and "kubectl not found" in proc.stderr and "--dry-run" in proc.stderr
