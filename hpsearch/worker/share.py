"""A worker's share of its machine: CPU threads and a GPU, whoever started the workers.

Workers are started by hand in a few terminals, as compose replicas, inside an array task or by a
user's script; none of these tells a worker how many others share its cores. Left alone, every
worker runs torch with a thread per core and their OpenMP threads wait on each other (two workers
on two cores ran 3-5x slower than two one-thread workers). So each worker registers itself in a
directory the workers of one machine share (HPSEARCH_GPU_LOCKS; a volume in compose): a slot
file saying which CPUs it may run on, its cgroup, its GPU and its study, locked for the worker's
life. The kernel drops the lock however the worker dies (kill -9 included), so a slot whose lock
can be taken belongs to a dead worker and is removed by whoever sees it first.

From the live slots a worker derives:
- threads: its CPUs (affinity) divided among the live workers whose CPUs overlap its own, capped
  by its cgroup's CPU quota or the scheduler's allocation (SLURM_CPUS_PER_TASK, PBS's NCPUS)
  divided among the workers in the same cgroup; at least 1. HPSEARCH_THREADS wins when set.
- a GPU: the one held by the fewest live workers (the first such), chosen under a directory lock
  so two workers starting together never pick the same one.
- how many workers of its study run on this machine (the fused groups' fair share).
A worker reads them again before each claim, so a worker that starts or dies changes the others'
share at their next trial.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from hpsearch.errors import HpsearchError

log = logging.getLogger("hpsearch.share")
DEFAULT_DIR = "/tmp/hpsearch-gpu-locks"
SUFFIX = ".slot"
_PICK = ".pick"  # held while a worker chooses its GPU and writes its slot
_STALE_TMP_S = 60.0  # a slot being written (not yet renamed) older than this is a dead worker's


@dataclass
class Slot:
    """What a live worker says of itself, in its slot file."""

    wid: str
    cpus: list[int]
    cgroup: str
    quota: float | None
    study: str
    gpu: str | None = None  # the GPU it trains on, as the machine names it (CUDA_VISIBLE_DEVICES' entry)
    started: float = field(default_factory=time.time)


# ---------------------------------------------------------------- what this process may use


def affinity() -> list[int]:
    """The CPUs this process may run on (taskset, cpuset, a scheduler's binding)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def cgroup_key(proc: str = "/proc/self") -> str:
    """Which CPU cgroup this process is in: its cgroup namespace and path. Workers in one container
    (or one SLURM step) share it, and with it the container's CPU quota."""
    try:
        ns = os.stat(f"{proc}/ns/cgroup").st_ino
    except OSError:
        ns = 0
    path = "/"
    try:
        for line in Path(f"{proc}/cgroup").read_text().splitlines():
            _, controllers, where = line.split(":", 2)
            if controllers == "" or "cpu" in controllers.split(","):
                path = where
                if controllers:  # v1's cpu controller is the one that holds the quota
                    break
    except (OSError, ValueError):
        pass
    return f"{socket.gethostname()}:{ns}:{path}"


def cgroup_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs' worth of the cgroup's quota (docker --cpus, Kubernetes limits), or None when unlimited."""
    try:  # cgroup v2
        quota, period = Path(root, "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):  # cgroup v1
        try:
            quota_us = int(Path(root, sub, "cpu.cfs_quota_us").read_text())
            period_us = int(Path(root, sub, "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def scheduler_cpus(env: dict[str, str] | None = None) -> int | None:
    """CPUs a batch scheduler allocated to this task, where it says so in the environment."""
    env = dict(os.environ) if env is None else env
    names = ["SLURM_CPUS_PER_TASK"]
    if env.get("PBS_JOBID"):
        names += ["PBS_NCPUS", "NCPUS"]  # PBS Pro (MetaCentrum) and Torque's ncpus
    for name in names:
        raw = env.get(name, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return None


def explicit_threads(env: dict[str, str] | None = None) -> int | None:
    """HPSEARCH_THREADS, validated: it wins over the share when set."""
    raw = (os.environ if env is None else env).get("HPSEARCH_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise HpsearchError(f"HPSEARCH_THREADS must be an integer >= 1, but got {raw!r}")
    return int(raw)


def study_key(url: str, study: str) -> str:
    """A study's identity in the slots: a digest, so other users of the machine read no names."""
    return hashlib.sha256(f"{url}\0{study}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the share


@dataclass
class Share:
    """This worker's registration on the machine; threads() and gpu are its share."""

    root: Path | None
    mine: Slot
    budget_cap: float | None  # the cgroup quota or the scheduler's allocation, in CPUs
    gpu: int | None = None  # the chosen GPU's index among this process's visible devices
    _fh: IO[str] | None = None
    _path: Path | None = None

    def peers(self) -> list[Slot]:
        """Every live worker's slot on this machine, this one's included."""
        if self.root is None or self._path is None:
            return [self.mine]
        return live_slots(self.root, self._path)

    def threads(self, peers: list[Slot] | None = None) -> tuple[int, str]:
        """(torch threads, why): HPSEARCH_THREADS, else this worker's share of its CPUs."""
        explicit = explicit_threads()
        if explicit is not None:
            return explicit, "HPSEARCH_THREADS"
        peers = self.peers() if peers is None else peers
        return fair_threads(self.mine, self.budget_cap, peers)

    def study_workers(self, peers: list[Slot] | None = None) -> list[str]:
        """Worker ids of the live workers of this worker's study on this machine (this one's included)."""
        peers = self.peers() if peers is None else peers
        return [s.wid for s in peers if s.study == self.mine.study]

    def leave(self) -> None:
        """Remove this worker's slot (a worker that dies without leaving is cleaned by the others)."""
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
        if self._fh is not None:
            self._fh.close()
        self._fh = self._path = None


def fair_threads(mine: Slot, cap: float | None, peers: list[Slot]) -> tuple[int, str]:
    """The CPUs this worker may run on, divided among the live workers that may run on any of
    them, and its cgroup's quota (or the scheduler's allocation) divided among the workers in
    the same cgroup; the smaller of the two, at least 1."""
    cpus = set(mine.cpus)
    overlap = max(1, sum(1 for s in peers if cpus & set(s.cpus)))
    threads = len(cpus) // overlap
    why = f"{len(cpus)} CPU{'s' if len(cpus) > 1 else ''} shared by {overlap} worker{'s' if overlap > 1 else ''}"
    if cap is not None:
        same = max(1, sum(1 for s in peers if s.cgroup == mine.cgroup))
        by_cap = math.floor(cap + 1e-9) // same
        if by_cap < threads:
            threads = by_cap
            why = f"a quota of {cap:g} CPUs shared by {same} worker{'s' if same > 1 else ''}"
    return max(1, threads), why


def join(url: str, study: str, wid: str, n_gpus: int = 0, lock_dir: str | None = None) -> Share:
    """Register this worker on the machine; with several GPUs visible, take the least held one."""
    mine = Slot(wid=wid, cpus=affinity(), cgroup=cgroup_key(), quota=cgroup_quota(), study=study_key(url, study))
    alloc = scheduler_cpus()
    cap = min(c for c in (mine.quota, alloc) if c is not None) if (mine.quota or alloc) else None
    root = Path(lock_dir or os.environ.get("HPSEARCH_GPU_LOCKS") or DEFAULT_DIR)
    try:
        _make_dir(root)
    except OSError as exc:
        if n_gpus > 1:  # without the directory two workers would train on the same GPU
            raise HpsearchError(f"HPSEARCH_GPU_LOCKS must be a directory this worker can write, but got "
                                f"{str(root)!r} ({exc.strerror})") from None
        log.warning("cannot register in %s (%s): this worker does not see the others on this machine; "
                    "set HPSEARCH_GPU_LOCKS to a writable directory or HPSEARCH_THREADS", root, exc.strerror)
        return Share(None, mine, cap, 0 if n_gpus == 1 else None)
    gpu = None
    with _locked(root / _PICK):
        peers = live_slots(root)
        if n_gpus >= 1:
            names = visible_gpu_names(n_gpus)
            gpu = least_held(names, peers)
            mine.gpu = names[gpu]
            if n_gpus > 1 and any(s.gpu == mine.gpu for s in peers):
                log.warning("all %d GPUs are taken by other workers on this machine; sharing cuda:%d "
                            "(the least held)", n_gpus, gpu)
        fh, path = _write_slot(root, mine)
    return Share(root, mine, cap, gpu, fh, path)


def visible_gpu_names(n_gpus: int) -> list[str]:
    """This process's GPUs as the machine names them: a worker that sees only GPU 3 (as cuda:0)
    and one that sees them all count the same GPU 3."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [g.strip() for g in env.split(",") if g.strip()] if env is not None else []
    return names[:n_gpus] if len(names) >= n_gpus else [str(i) for i in range(n_gpus)]


def least_held(names: list[str], peers: list[Slot]) -> int:
    """Index of the GPU the fewest live workers hold; the first among equals."""
    held = [sum(1 for s in peers if s.gpu == name) for name in names]
    return held.index(min(held))


def live_slots(root: Path, own: Path | None = None) -> list[Slot]:
    """The slots whose workers live (their lock is held); dead workers' slots are removed."""
    slots = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    for name in names:
        path = root / name
        if name.startswith(".tmp-"):
            _drop_stale_tmp(path)
            continue
        if not name.endswith(SUFFIX):
            continue
        if own is not None and path == own:
            slot = _read(path)
        else:
            slot = _read_if_live(path)
        if slot is not None:
            slots.append(slot)
    return slots


# ---------------------------------------------------------------- files


def _make_dir(root: Path) -> None:
    if root.is_dir():
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        return
    root.mkdir(parents=True, exist_ok=True)
    # Workers of every user on the machine share its cores, so every user may register (sticky, as /tmp).
    with contextlib.suppress(OSError):
        root.chmod(0o1777)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_slot(root: Path, slot: Slot) -> tuple[IO[str], Path]:
    """Write and lock the slot under a temporary name, then rename it into place: a reader never
    sees a slot that is not locked by its live worker."""
    token = secrets.token_hex(6)
    tmp = root / f".tmp-{token}"
    fh = open(tmp, "w+")  # noqa: SIM115 - held, with its lock, for the worker's life
    fcntl.flock(fh, fcntl.LOCK_EX)
    fh.write(json.dumps(asdict(slot)))
    fh.flush()
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o644)
    path = root / f"{token}{SUFFIX}"
    os.rename(tmp, path)
    return fh, path


def _read(path: Path) -> Slot | None:
    try:
        raw = json.loads(path.read_text())
        return Slot(**{k: raw[k] for k in Slot.__dataclass_fields__ if k in raw})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _read_if_live(path: Path) -> Slot | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # removed meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # its worker holds it: alive
            return _read(path)
        with contextlib.suppress(OSError):  # nobody holds it: its worker died
            path.unlink()
        return None
    finally:
        os.close(fd)


def _drop_stale_tmp(path: Path) -> None:
    """A slot a worker died writing (between open and rename) is removed once it is old and unlocked."""
    with contextlib.suppress(OSError):
        if time.time() - path.stat().st_mtime > _STALE_TMP_S:
            _read_if_live(path)
