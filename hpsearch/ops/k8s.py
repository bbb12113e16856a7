"""`hpsearch launch k8s`: a study's workers as a Kubernetes Indexed Job, applied with kubectl or printed.

The Job is deploy/k8s/worker-job.yaml (or HPSEARCH_DEPLOY_DIR's k8s/worker-job.yaml, a site's
edited copy), read as YAML and filled in: its name, completions (--workers) and parallelism
(--max-running), the image, the study and worker options, the Secret's name, the pod's GPUs,
CPUs and memory, and the grace period. One pod runs one worker; the template's CPUs and memory are
one GPU's share, so a pod of G GPUs requests G times them.

The storage URL is never rendered: every container reads it from the Secret (key `url`). A
storage given here (--storage, HPSEARCH_STORAGE) is only read, to check that the study exists.

Preemption: the pod's grace period is above the worker's --stop-timeout plus the wait its hard
exit gives the hand-back (hpsearch.worker.stopping), and the template's failure policy ignores the
exit of a pod that handed its trial back (HAND_BACK_EXIT) and every disruption.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpsearch.errors import HpsearchError
from hpsearch.redact import mask

TEMPLATE = "k8s/worker-job.yaml"
WORKER, WAIT = "worker", "wait-for-study"  # the template's containers
GPU = "nvidia.com/gpu"
# What the template's shell exits with once its worker handed the trial back on SIGTERM (128 + 15;
# also a worker killed by SIGTERM before its handler was in place): the failure policy ignores it.
HAND_BACK_EXIT = 143
GRACE_MARGIN = 20  # seconds beyond --stop-timeout and the hand-back's wait: interpreter exit, a slow node

_QUANTITY = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>[KMGTPE]i|[kMGTPE])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
# Options of the other targets, refused here (and ours there): a flag that does nothing misleads.
_CLUSTER_ONLY = ("setup", "partition", "account")
_K8S_ONLY = ("image", "namespace", "secret", "stop_timeout")


@dataclass
class Pods:
    """What the rendered Job says; the storage URL is not part of it."""

    study: str
    workers: int
    gpus: int = 1  # per pod (one worker)
    max_running: int | None = None
    image: str | None = None  # None: the template's
    namespace: str | None = None
    secret: str | None = None  # None: the template's
    heartbeat: int = 30
    device: str = "auto"
    stop_timeout: float = 60.0
    cpus: int | None = None  # per pod; None: the template's share times the GPUs
    mem: str | None = None
    note: str = ""

    @property
    def parallelism(self) -> int:
        return min(self.workers, self.max_running or self.workers)


def grace_seconds(stop_timeout: float) -> int:
    from hpsearch.worker.stopping import HAND_BACK_WAIT

    return math.ceil(stop_timeout + HAND_BACK_WAIT + GRACE_MARGIN)


def job_name(study: str) -> str:
    """hps-STUDY-YYYYmmdd-HHMMSS, a DNS label: each launch is a Job of its own, as each sbatch is."""
    slug = re.sub(r"[^a-z0-9]+", "-", study.lower()).strip("-")[:30].strip("-") or "study"
    return f"hps-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------- rendering


def template_path() -> Path:
    base = Path(os.environ.get("HPSEARCH_DEPLOY_DIR") or Path(__file__).resolve().parents[2] / "deploy")
    path = base / TEMPLATE
    if not path.is_file():
        raise HpsearchError(f"Job template {path} not found; set HPSEARCH_DEPLOY_DIR to a directory holding {TEMPLATE}")
    return path


def manifest(pods: Pods) -> dict[str, Any]:
    """The Job, as a dict: the template with this launch's values."""
    check_pods(pods)
    job = yaml.safe_load(template_path().read_text())
    meta = job.setdefault("metadata", {})
    meta["name"] = job_name(pods.study)
    if pods.namespace:
        meta["namespace"] = pods.namespace
    meta.setdefault("labels", {})["hpsearch/study"] = _label(pods.study)
    meta.setdefault("annotations", {})["hpsearch/study"] = pods.study  # the name as it is
    spec = job["spec"]
    spec["completions"], spec["parallelism"] = pods.workers, pods.parallelism
    pod = spec["template"]["spec"]
    spec["template"].setdefault("metadata", {}).setdefault("labels", {})["hpsearch/study"] = _label(pods.study)
    pod["terminationGracePeriodSeconds"] = grace_seconds(pods.stop_timeout)
    worker, wait = _container(pod, "containers", WORKER), _container(pod, "initContainers", WAIT)
    worker["args"] = ["hpsearch", "worker", "--study", pods.study, "--heartbeat", str(pods.heartbeat),
                      "--device", pods.device, "--stop-timeout", f"{pods.stop_timeout:g}"]
    wait["args"] = [pods.study]
    secret = _secret_of(worker)
    for c in (worker, wait):
        if pods.image:
            c["image"] = pods.image
        if pods.secret:
            _rename_secret(c, secret, pods.secret)
    _resources(worker, pods)
    return job


def render(pods: Pods) -> str:
    job = manifest(pods)
    header = [
        f"# rendered by `hpsearch launch k8s` on {time.strftime('%Y-%m-%d %H:%M')}",
        f"# storage: the Secret {_secret_of(_container(job['spec']['template']['spec'], 'containers', WORKER))!r}, "
        "key `url` (never in this file)",
        f"# {pods.workers} worker(s), {pods.parallelism} at once; "
        + (f"{pods.gpus} GPU(s) each" if pods.gpus else "CPU only")
        + f"; grace {grace_seconds(pods.stop_timeout)} s for a --stop-timeout of {pods.stop_timeout:g} s",
        *(f"# {line}" for line in pods.note.splitlines()),
    ]
    body = yaml.dump(job, Dumper=_Dumper, sort_keys=False, width=120)
    return mask("\n".join(header) + "\n" + body)  # belt and braces: no URL password leaves this function


def check_pods(pods: Pods) -> None:
    if pods.workers < 1:
        raise HpsearchError(f"--workers must be >= 1, but got workers={pods.workers}")
    if pods.max_running is not None and pods.max_running < 1:
        raise HpsearchError(f"--max-running must be >= 1, but got max_running={pods.max_running}")
    if pods.gpus < 0:
        raise HpsearchError(f"--gpus-per-worker must be >= 0, but got gpus={pods.gpus}")
    if pods.mem is not None and not _QUANTITY.fullmatch(pods.mem):
        raise HpsearchError(f"--mem must be a Kubernetes quantity like 16Gi or 16G, but got mem={pods.mem!r}")
    if pods.namespace is not None and not _DNS_LABEL.fullmatch(pods.namespace):
        raise HpsearchError("--namespace must be a DNS label (lowercase letters, digits and '-', at most 63), "
                            f"but got namespace={pods.namespace!r}")
    if pods.secret is not None and not _DNS_NAME.fullmatch(pods.secret):
        raise HpsearchError("--secret must be a Secret's name (lowercase letters, digits, '-' and '.'), "
                            f"but got secret={pods.secret!r}")
    if pods.image is not None and not pods.image.strip():
        raise HpsearchError(f"--image must name an image, but got image={pods.image!r}")


def _label(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:63].strip("-_.") or "study"


def _container(pod: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    found = next((c for c in pod.get(kind) or [] if c.get("name") == name), None)
    if found is None:
        raise HpsearchError(f"the Job template must have a container {name!r} in {kind}, but it has "
                            f"{[c.get('name') for c in pod.get(kind) or []]}")
    return found


def _secret_refs(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["valueFrom"]["secretKeyRef"] for e in container.get("env") or []
            if "secretKeyRef" in (e.get("valueFrom") or {})]


def _secret_of(worker: dict[str, Any]) -> str:
    """The Secret whose `url` the worker reads its storage from."""
    for e in worker.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if e.get("name") == "HPSEARCH_STORAGE" and ref:
            return str(ref["name"])
    raise HpsearchError("the Job template's worker must read HPSEARCH_STORAGE from a Secret (valueFrom.secretKeyRef), "
                        "but it does not")


def _rename_secret(container: dict[str, Any], old: str, new: str) -> None:
    for ref in _secret_refs(container):
        if ref.get("name") == old:
            ref["name"] = new


def _resources(worker: dict[str, Any], pods: Pods) -> None:
    res = worker.setdefault("resources", {})
    requests, limits = res.setdefault("requests", {}), res.setdefault("limits", {})
    share = max(1, pods.gpus)  # the template's CPUs and memory are one GPU's
    cpu = str(pods.cpus) if pods.cpus else _times(requests.get("cpu"), share, "cpu")
    mem = pods.mem or _times(requests.get("memory"), share, "memory")
    if cpu is not None:
        requests["cpu"] = cpu
        if cpu.isdigit():
            _set_env(worker, "HPSEARCH_THREADS", cpu)  # no CPU limit: the worker finds no quota to divide
    if mem is not None:
        requests["memory"] = limits["memory"] = mem  # above its share a worker is stopped, not its neighbours
    for table in (requests, limits):
        if pods.gpus:
            table[GPU] = pods.gpus  # an extended resource: requests and limits must be equal
        else:
            table.pop(GPU, None)


def _times(value: Any, n: int, what: str) -> str | None:
    if value is None or n == 1:
        return None if value is None else str(value)
    m = _QUANTITY.fullmatch(str(value))
    if m is None or "." in m["n"]:
        raise HpsearchError(f"the template's {what} must be a whole number (memory with a unit, like 16Gi) to scale "
                            f"it for {n} GPUs, but got {what}={value!r}; pass "
                            + ("--cpus-per-worker" if what == "cpu" else "--mem"))
    return f"{int(m['n']) * n}{m['unit'] or ''}"


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    env = container.setdefault("env", [])
    for e in env:
        if e.get("name") == name:
            e.clear()
            e.update(name=name, value=value)
            return
    env.append({"name": name, "value": value})


class _Dumper(yaml.SafeDumper):
    """Block literals for the template's shell scripts; no anchors (the same dict twice is written twice)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s,
                                                              style="|" if "\n" in s else None))


# ---------------------------------------------------------------- launching


def check_target_options(args: argparse.Namespace) -> None:
    """One line for an option of another target: it would do nothing here."""
    k8s = args.target == "k8s"
    wrong = [o for o in (_CLUSTER_ONLY if k8s else _K8S_ONLY) if getattr(args, o, None) not in (None, [], "")]
    if wrong:
        flags = " and ".join("--" + o.replace("_", "-") for o in wrong)
        raise HpsearchError(f"{flags} {'is' if len(wrong) == 1 else 'are'} for "
                            + ("slurm/pbs jobs" if k8s else "launch k8s") + f", but got launch {args.target}")


def pods_from_args(args: argparse.Namespace) -> Pods:
    stop = getattr(args, "stop_timeout", None)
    return Pods(
        study=args.study, workers=int(args.workers), gpus=int(getattr(args, "gpus_per_task", 1)),
        max_running=getattr(args, "max_running", None), image=getattr(args, "image", None),
        namespace=getattr(args, "namespace", None), secret=getattr(args, "secret", None),
        heartbeat=int(getattr(args, "heartbeat", None) or 30), device=str(getattr(args, "device", "auto")),
        stop_timeout=60.0 if stop is None else float(stop), cpus=getattr(args, "cpus_per_worker", None),
        mem=getattr(args, "mem", None),
    )


def launch(args: argparse.Namespace) -> int:
    check_target_options(args)
    pods = pods_from_args(args)
    check_pods(pods)
    # The pods read their storage from the Secret; one given here (often unreachable from outside
    # the cluster) is read only to check the study, and only when given.
    storage = getattr(args, "storage", None) or os.environ.get("HPSEARCH_STORAGE")
    if storage:
        from hpsearch.ops.deploy import study_note

        try:
            pods.note, remaining = study_note(pods.study, storage)
        except HpsearchError as exc:  # the same exit code, and why a storage was read at all
            raise type(exc)(f"{exc} (launch k8s checks the study in --storage or HPSEARCH_STORAGE when one is "
                            "given; the pods read theirs from the Secret)") from None
        if remaining < pods.workers:
            print(f"hpsearch: note: study {pods.study!r} has {remaining} trials left to run; "
                  f"{pods.workers - remaining} of the {pods.workers} workers will find nothing to do", file=sys.stderr)
    text = render(pods)
    if getattr(args, "dry_run", False):
        sys.stdout.write(text)
        return 0
    return apply(pods, text)


def apply(pods: Pods, text: str) -> int:
    """`kubectl apply` the Job, once kubectl has a context and the Secret exists."""
    exe = shutil.which("kubectl")
    if exe is None:
        raise HpsearchError("kubectl not found on PATH: install it, or print the Job with --dry-run "
                            "(and kubectl apply -f it where kubectl runs)")
    if _kubectl(exe, "config", "current-context").returncode != 0:
        raise HpsearchError("kubectl has no current context (kubectl config use-context NAME), or print the Job "
                            "with --dry-run")
    job = yaml.safe_load(text)
    name, ns = job["metadata"]["name"], ["--namespace", pods.namespace] if pods.namespace else []
    secret = _secret_of(_container(job["spec"]["template"]["spec"], "containers", WORKER))
    got = _kubectl(exe, *ns, "get", "secret", secret, "--output", "name")
    if got.returncode != 0 and "NotFound" in got.stderr:
        raise HpsearchError(f"the Secret {secret!r} must exist before the workers start (their storage URL is its "
                            f"key `url`), but it was not found: kubectl create secret generic {secret} "
                            "--from-env-file=FILE (README: Kubernetes)")
    if got.returncode != 0:  # no right to read Secrets, often: the pods may still use it
        print(f"hpsearch: warning: could not check the Secret {secret!r}: {_first(got)}", file=sys.stderr)
    proc = _kubectl(exe, *ns, "apply", "--filename", "-", stdin=text)
    if proc.returncode != 0:
        raise HpsearchError(f"kubectl apply refused the Job: {_first(proc)}")
    where = f" in namespace {pods.namespace}" if pods.namespace else ""
    gpus = f"{pods.gpus} GPU(s)" if pods.gpus else "no GPU"
    print(f"created Job {name}{where}: {pods.workers} workers, {pods.parallelism} at once, {gpus} each, "
          f"for study {pods.study!r}")
    selector = " ".join([*ns, "--selector", f"batch.kubernetes.io/job-name={name}"])
    print(f"watch it with: kubectl get pods {selector}; hpsearch status {pods.study} --watch")
    return 0


def _kubectl(exe: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, timeout=120)


def _first(proc: subprocess.CompletedProcess[str]) -> str:
    return mask((proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[0])
