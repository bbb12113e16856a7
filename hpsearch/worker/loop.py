"""The worker: claim -> heartbeat -> train -> tell, until the study is done or a limit is hit.

A worker is stateless: it needs the study name and the storage; the spec comes from the study.
Threads beside the training: a heartbeat for the running trial, and a reaper that fails and
re-queues other workers' trials whose heartbeat stopped (so a dead worker's trial comes back even
when nobody asks for a new trial). SIGTERM/SIGINT hand the running trial back and exit 0.

run_worker goes through four phases: open (the storage, the study, its spec), the checks before
claiming anything (what would otherwise fail every trial it takes), the claim loop, and shutdown.
One trial's life is in hpsearch.worker.trial, what trains it in hpsearch.worker.train, stopping in
hpsearch.worker.stopping.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from hpsearch import objective, schema
from hpsearch.errors import HpsearchError
from hpsearch.queue import claim as claim_mod
from hpsearch.queue import control
from hpsearch.queue import plan as plan_mod
from hpsearch.queue import retries as retries_mod
from hpsearch.queue import study as study_mod
from hpsearch.queue.faults import Reaper, fail_for_good, sweep_orphans
from hpsearch.queue.lock import StudyLock
from hpsearch.search.samplers import build_pruner, build_sampler
from hpsearch.spec.model import StudySpec
from hpsearch.spec.parse import check_registries
from hpsearch.storage.backend import mask, open_storage, resolve_url
from hpsearch.storage.optuna_internals import storage_of, study_id, trial_id
from hpsearch.worker import share as share_mod
from hpsearch.worker import stopping
from hpsearch.worker import trial as trial_mod
from hpsearch.worker.context import TrialContext
from hpsearch.worker.options import Options

# User objectives of earlier releases import should_stop from here (hpsearch.should_stop is public).
should_stop = objective.should_stop

__all__ = ["Options", "Summary", "pick_device", "run_worker", "should_stop"]

BROKEN = 1  # exit code: too many trials failed in a row on this worker


@dataclass
class Summary:
    states: Counter[str] = field(default_factory=Counter)
    reason: str = ""
    started: float = field(default_factory=time.monotonic)

    def line(self, wid: str) -> str:
        n = sum(self.states.values())
        parts = ", ".join(f"{v} {k}" for k, v in sorted(self.states.items())) or "none"
        secs = int(time.monotonic() - self.started)
        return f"worker {wid}: {n} trials ({parts}) in {secs // 60}m{secs % 60:02d}s; {self.reason}"


@dataclass
class Worker:
    """What a running worker holds: its study and spec, its trials' context, its stop state, the lock
    and the reaper. Nothing of it is the module's: two workers in one process share none of it."""

    opts: Options
    url: str
    wid: str
    out: Callable[[str], None]
    storage: optuna.storages.BaseStorage
    study: optuna.Study
    spec: StudySpec
    ctx: TrialContext | None = None  # made by the checks before claiming (the device, the checkpoint store)
    stop: stopping.Stopping = field(default_factory=stopping.Stopping)
    fuse: Any = None  # hpsearch.worker.fused.Fusion, or None: one trial at a time
    deadline: float | None = None  # the study's wall-clock budget ends (unix time)
    my_deadline: float | None = None  # this worker's --timeout ends (monotonic)
    chunk: int = 1
    share: share_mod.Share | None = None  # this worker's registration on the machine: threads, GPU
    threads: int = 0  # torch threads now (re-read before each claim)
    threads_why: str = ""
    lock: StudyLock | None = None
    reaper: Reaper | None = None
    summary: Summary = field(default_factory=Summary)
    failures_in_row: int = 0
    idle_rounds: int = 0

    @property
    def done(self) -> int:
        return sum(self.summary.states.values())


def _say(msg: str) -> None:
    print(msg, flush=True)


def gpus_to_share(name: str) -> int:
    """How many GPUs `--device name` lets this worker choose among (auto on a CUDA machine: all)."""
    if name != "auto":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pick_device(name: str, gpu: int | None = None) -> Any:
    """The torch device of `--device name`; `gpu` is the GPU the machine share chose for auto."""
    import torch

    if name == "auto":
        return torch.device("cpu") if gpu is None else torch.device(f"cuda:{gpu}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HpsearchError(f"--device {name}: CUDA is not available on this machine")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # meta, mps... would burn every trial
        raise HpsearchError(f"--device must be auto, cpu or cuda:K, but got {name!r}")
    return device


def run_worker(opts: Options) -> int:
    w = _open(opts)
    try:
        _check_before_claiming(w)
        _start(w)
        try:
            if _claim_loop(w) == BROKEN:
                return _shutdown(w, BROKEN)  # said before the reaper stops, as the reason is this worker's own
        except KeyError:
            _check_study(w.study)
            raise
        finally:
            w.reaper.stop()  # type: ignore[union-attr]
        return _shutdown(w, 0)
    finally:
        w.share.leave()  # type: ignore[union-attr]


# ---------------------------------------------------------------- open


def _open(opts: Options) -> Worker:
    """Connect, load the study once, read its spec, attach this worker's sampler and pruner."""
    url = resolve_url(opts.storage)
    storage = open_storage(url, heartbeat=opts.heartbeat)
    study = study_mod.load(opts.study, storage)
    spec = _spec_once_created(study, None if opts.quiet else _say)
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
    # The sampler and pruner come from the spec, which comes from the study: they are attached to
    # the loaded study (Study keeps them as plain attributes) instead of loading it a second time.
    study.sampler = build_sampler(spec.sampler, seed)  # a different seed per worker
    study.pruner = build_pruner(spec.pruner, int(spec.train.get("epochs", 0) or 0) or None)
    out = (lambda msg: None) if opts.quiet else _say
    wid = study_mod.worker_id()
    w = Worker(opts, url, wid, out, storage, study, spec)
    # Registered before anything slow (data, checks), so workers started together see each other.
    n_gpus = gpus_to_share(opts.device) if spec.objective is None else 0
    share_mod.explicit_threads()  # a bad HPSEARCH_THREADS is one line before anything else
    w.share = share_mod.join(mask(url), opts.study, wid, n_gpus)
    _take_share(w)
    return w


# A study is created in two steps (its row, then its spec with the first trials): a worker started
# between them (an init container polling `status`, an array task beside create-study) waits.
SPEC_WAIT = 30.0


def _spec_once_created(study: optuna.Study, out: Any, wait: float = SPEC_WAIT) -> StudySpec:
    """The study's spec; a study with neither a spec nor a trial yet is being created: wait for it."""
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            return study_mod.stored_spec(study)
        except HpsearchError:
            if time.monotonic() > deadline or study_mod.has_trials(study):
                raise  # a plain Optuna study, or one whose creation never finished
            if not said and out is not None:
                out(f"study {study.study_name!r} has no hpsearch spec yet (create-study still running?); "
                    f"waiting up to {wait:g} s")
                said = True
            time.sleep(0.5)


# ---------------------------------------------------------------- checks before claiming


def _check_before_claiming(w: Worker) -> None:
    """What would otherwise fail every trial this worker takes is one line now, before any claim."""
    opts, spec = w.opts, w.spec
    plan_mod.ensure_ready(w.study, spec)  # a half-created study is finished, never taken for done
    retries_mod.max_retries()  # a bad HPSEARCH_MAX_RETRIES is one line now, not a warning per reap later
    attrs = w.study.user_attrs  # read once: the study's start, its checkpoints' place, its class counts
    created = float(attrs.get(schema.CREATED_ATTR, time.time()))
    w.deadline = created + spec.wall_clock if spec.wall_clock else None
    w.my_deadline = time.monotonic() + opts.timeout if opts.timeout else None
    _carried_over(w)

    assert w.share is not None
    w.ctx = _context(spec, opts, w.url, w.stop, attrs.get(schema.ARTIFACTS_ATTR), w.share.gpu,
                     attrs.get(schema.INSTANCE_ATTR))
    w.ctx.class_counts_stored = schema.CLASS_COUNTS_ATTR in attrs
    w.ctx.threads = w.threads
    # The spec was read structurally: its plugins are imported here, before any claim, and its names
    # checked against the registries they fill (a model a plugin no longer registers is one line now).
    check_registries(spec, f"study {opts.study}")
    if spec.objective is not None:
        # A plugin that does not import would fail every trial it is given: stop before claiming.
        from hpsearch.registry import load_plugin

        load_plugin(spec.objective, "objective")  # user objectives run one trial at a time
    else:
        # Load the data before claiming anything: missing files are one clear error, not a
        # queue of failed trials (and the worker reuses it for every trial it runs).
        from hpsearch.training.data import loading as data_mod

        data_mod.load(spec.dataset, w.ctx.device)
        w.fuse = _fusion(spec, opts, w.ctx.device, w.out)


def _carried_over(w: Worker) -> None:
    """A worker restarted clean (hpsearch.worker.loop._restart) goes on counting its trials and its --timeout."""
    raw = os.environ.pop(_CARRY, None)
    if not raw:
        return
    try:
        carry = json.loads(raw)
        w.summary.states["before restart"] = int(carry.get("done", 0))
        if carry.get("timeout_left") is not None and w.my_deadline is not None:
            w.my_deadline = time.monotonic() + max(0.0, float(carry["timeout_left"]))
    except (ValueError, TypeError, AttributeError):
        return


def _context(spec: StudySpec, opts: Options, url: str, stop: stopping.Stopping, recorded: str | None = None,
             gpu: int | None = None, tag: str | None = None) -> TrialContext:
    from hpsearch.storage.artifacts import artifact_store

    device = "cpu"
    if spec.objective is None:  # user objectives import torch only if they want to
        device = pick_device(opts.device, gpu)
    # The study records where its checkpoints live, so a retry started elsewhere still finds them.
    return TrialContext(device=device, artifacts=artifact_store(url, recorded, study=opts.study, tag=tag), stop=stop)


def _take_share(w: Worker) -> None:
    """This worker's share of the machine, read again before each claim: torch's threads (the
    others that started or died since change it) and this machine's workers of the study."""
    assert w.share is not None
    peers = w.share.peers()
    threads, why = w.share.threads(peers)
    if threads == w.threads:
        return
    if w.threads:
        w.out(f"threads: {w.threads} -> {threads} ({why})")
    w.threads = threads
    set_threads(threads)
    if w.ctx is not None:
        w.ctx.threads = threads
    w.threads_why = why


def set_threads(n: int) -> None:
    """Torch's intra-op threads; for a user objective that imports torch later, OpenMP's and MKL's."""
    import sys

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _fusion(spec: StudySpec, opts: Options, device: Any, out: Any) -> Any:
    """The built-in trainer's fusion (hpsearch.worker.fused.Fusion), or None when it trains one trial at a time."""
    from hpsearch.worker import fused

    k = fused.group_size(spec, opts.fuse, device)
    if k <= 1:
        return None
    out(f"fusing up to {k} compatible trials per model (fixed-parameter trials: grid points, seeds, retries)")
    return fused.Fusion(spec, device, k)


def _start(w: Worker) -> None:
    """The issue chunk, the study lock and the reaper beside the loop, the signal handlers; the banner."""
    w.chunk = plan_mod.chunk_size()
    w.lock = StudyLock(w.study)
    w.reaper = Reaper(w.study, default_interval=w.opts.heartbeat, log=w.out)
    if w.lock.available:  # through the gRPC proxy, its keeper reaps for everyone
        w.reaper.start()
    w.stop.install_signals(w.opts.stop_timeout, w.out)
    objective.stop_when(w.stop.asked_to_stop)  # what a user objective's should_stop() asks in this process
    w.summary = Summary()
    assert w.ctx is not None
    w.out(f"worker {w.wid} on study {w.opts.study!r} ({w.spec.sampler['name']}, storage {mask(w.url)}, "
          f"device {w.ctx.device}, {w.threads} thread{'s' if w.threads > 1 else ''}: {w.threads_why})")


# ---------------------------------------------------------------- the claim loop


def _claim_loop(w: Worker) -> int:
    """Claim and run trials until a limit, the end of the study, or too many failures (BROKEN)."""
    while True:
        reason = _limit_reached(w)
        if reason:
            w.summary.reason = reason
            return 0
        _take_share(w)
        t_claim = time.perf_counter()
        trial = claim_mod.claim(w.study)
        w.ctx.claim_s = time.perf_counter() - t_claim  # type: ignore[union-attr]
        if trial is None:
            if _nothing_to_claim(w):
                w.summary.reason = "study done"
                return 0
            continue
        w.idle_rounds = 0
        _count(w, _run(w, trial))
        why = w.stop.restart_reason
        if why is not None:  # an out-of-memory error: its leak would fail every later trial
            _restart(w, why)
        if w.failures_in_row >= w.opts.max_failures:
            w.summary.reason = (f"stopping: {w.failures_in_row} trials failed in a row on this worker "
                                f"(a broken node or a bug?); see {schema.FAIL_REASON} of the trials")
            return BROKEN


def _limit_reached(w: Worker) -> str | None:
    """Why this worker stops before claiming another trial, or None."""
    opts = w.opts
    if w.stop.requested.is_set():
        return "stopped by signal"
    if opts.n_trials is not None and w.done >= opts.n_trials:
        return f"--n-trials {opts.n_trials} reached"
    if w.my_deadline and time.monotonic() > w.my_deadline:
        return f"--timeout {opts.timeout:g}s reached"
    if w.deadline and time.time() > w.deadline:
        return "the study's wall-clock budget is spent"
    if control.stop_requested(w.study):  # read at most every few seconds, not per claim
        return f"the study was stopped (hpsearch stop); to go on: hpsearch resume {opts.study}"
    return None


def _nothing_to_claim(w: Worker) -> bool:
    """The queue was empty: issue more of the plan, or wait for trials others still run. True when the study is done."""
    assert w.lock is not None and w.reaper is not None
    if w.lock.available:
        # On PostgreSQL every write that moves a trial between states is one transaction
        # (a failed trial and its retry, an issued chunk and its count), so any reading
        # is consistent; on the journal the lock file makes it so, and the sweep restores
        # a retry that a process killed mid-hand-back did not write.
        with w.lock:
            if plan_mod.top_up(w.study, w.spec, w.chunk) > 0:
                return False
            if sweep_orphans(w.study) > 0:
                return False
            waiting, running = study_mod.active_counts(w.study)
        unissued = 0
    else:  # through the gRPC proxy: its keeper issues the rest of the plan
        waiting, running = study_mod.active_counts(w.study)
        unissued = plan_mod.unissued(w.study)
    if waiting == 0 and running == 0 and unissued == 0:
        # Nothing waits or runs in *this* study id: also what a study deleted or replaced under the
        # worker looks like (writes to its vanished trials can pass unnoticed), so say which it is.
        _check_study(w.study)
        return True
    # Others still run trials that may come back to the queue: wait, reap, retry.
    # The wait grows while idle, so a crowd of idle workers does not flood the storage.
    w.idle_rounds += 1
    w.stop.requested.wait(min(8.0, 1.0 + 0.5 * w.idle_rounds) * (0.5 + random.random()))
    w.reaper.poke()
    return False


def _run(w: Worker, trial: optuna.Trial) -> list[str]:
    """Run a claimed trial alone, or fused with compatible waiting trials; how each ended."""
    group = [trial]
    if w.fuse is not None:
        left = w.opts.n_trials - w.done if w.opts.n_trials is not None else w.fuse.k
        k = min(w.fuse.k, left)
        if k > 1:  # near the study's end, no more than this worker's share of what is left
            # This machine's workers of the study read again now, not before the claim: one that
            # joined while the claim waited (on the database, or behind a loaded CPU) counts.
            assert w.share is not None
            k = claim_mod.fair_share(w.study, k, w.share.study_workers())
        group = claim_mod.claim_group(w.study, trial, k, w.fuse.key)
    ctx = w.ctx
    assert ctx is not None
    ctx.fused = len(group)
    limit = w.opts.trial_timeout or w.spec.trial_timeout
    w.stop.start_clock(limit, lambda lim: _overrun(w, lim))
    try:
        if len(group) > 1:
            return w.fuse.run_group(w.study, group, w.spec, ctx, w.opts, w.out)  # type: ignore[no-any-return]
        return [trial_mod.run_one(w.study, trial, w.spec, ctx, w.opts, w.out)]
    finally:
        w.stop.stop_clock()


def _overrun(w: Worker, limit: float) -> None:
    """The watchdog: the running trial is past its limit and its grace without stopping (code that
    ignores should_stop, a hang in a C call). It ends failed, for good, and this worker restarts
    clean: whatever the stuck code holds (threads, memory, a lock) goes with the process."""
    grace = stopping.overrun_grace(limit)
    reason = (f"time limit: still running {limit:g}s after its start (trial_timeout) and did not stop within "
              f"{grace:g}s; its worker restarted")
    for study, trial in w.stop.held():
        if fail_for_good(study, trial_id(trial), reason):
            w.out(f"[trial {trial.number}] failed: {reason}")
            w.summary.states["failed"] += 1
    _restart(w, f"a trial overran its time limit ({limit:g}s)")


RESTART_EXIT = 75  # an in-process run_worker that must start clean exits with this for its launcher (EX_TEMPFAIL)
_CARRY = "_HPSEARCH_WORKER_CARRY"  # what a restarted worker carries over: its trial count and its --timeout


def _restart(w: Worker, why: str) -> None:
    """Start this worker again as a fresh process (the same command line), or exit for its launcher."""
    w.out(f"worker {w.wid}: {why}; restarting clean after {w.done} trials")
    left = w.my_deadline - time.monotonic() if w.my_deadline else None
    os.environ[_CARRY] = json.dumps({"done": w.done, "timeout_left": left})
    try:
        w.share.leave()  # type: ignore[union-attr]
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    if w.opts.restart:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    os._exit(RESTART_EXIT)


def _count(w: Worker, states: list[str]) -> None:
    for state in states:
        w.summary.states[state] += 1
        if state == "failed":
            w.failures_in_row += 1
        elif state != "preempted":
            w.failures_in_row = 0


# ---------------------------------------------------------------- shutdown


def _shutdown(w: Worker, code: int) -> int:
    _say(w.summary.line(w.wid))
    stopping.ignore_signals()
    return code


def _check_study(study: optuna.Study) -> None:
    """One clear line, not "KeyError: 'Record does not exist.'", when the study went away."""
    try:
        same = storage_of(study).get_study_id_from_name(study.study_name) == study_id(study)
    except KeyError:
        same = False
    if not same:
        raise HpsearchError(f"study {study.study_name!r} was deleted or replaced (create-study --replace) "
                            "while this worker ran; stopping")
