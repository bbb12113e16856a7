"""The one protocol between the queue and a storage: what every backend does, however it does it.

The queue (hpsearch.queue) asks a study's backend, `backends.of(study)`, to claim, beat, lock,
fail and requeue, plan and issue, count and read; it never asks which backend it has. One class
per backend implements this (hpsearch.storage.backends lists them), built once per storage:

- PostgreSQL (hpsearch's own storage): each critical section is one transaction holding the
  study's advisory lock; claims are single statements whose row locks skip each other;
- SQLite (or another database through Optuna's RDBStorage): claims and heartbeats in SQL, the
  critical sections as writes under a lock file beside the database;
- the journal file: the storage's own compare-and-set under a lock file beside the journal;
- the gRPC proxy: the storage's own compare-and-set; the proxy's keeper issues and reaps.

The queue's policy (what a retry looks like, which plan item comes next, which seeds a
configuration still needs) goes in as callbacks, so a backend holds none of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial, TrialState

    from hpsearch.storage.locks import StudyLock

# A plan item's waiting trial, by its index in the plan.
Make = Callable[[int], "FrozenTrial"]


class QueueStorage(Protocol):
    name: str  # the backend's name: postgresql, sqlite, mysql, ..., journal, grpc, other (as storage.backend.kind)
    # The workers issue the plan and reap stale trials themselves (False behind the gRPC proxy, whose keeper does).
    workers_keep_queue: bool
    # Every write takes one lock shared by all processes (a file's): a process stopped while it holds
    # the lock blocks every other writer, heartbeats included, so a reaper counts silence only from
    # when it last saw the storage usable.
    serial_writes: bool

    # ------------------------------------------------------------ claims
    def claim(self, study: optuna.Study) -> int | None:
        """Take the first waiting trial (plan order), exactly once across all workers: its id, or None."""

    def claim_matching(self, study: optuna.Study, first_id: int, matches: Callable[[FrozenTrial], bool], n: int,
                       window: int) -> list[int]:
        """Take up to `n` more of the oldest `window` waiting trials that `matches` accepts (it sees
        their fixed parameters), each exactly once; their ids in plan order, fewer when others got there first."""

    # ------------------------------------------------------------ heartbeats
    def beat(self, study: optuna.Study, trial_id: int) -> None:
        """One heartbeat for a running trial, one attempt (the caller retries on its own)."""

    def beat_ages(self, study: optuna.Study, default_interval: float) -> dict[int, tuple[float, float]]:
        """trial_id -> (seconds since its last heartbeat, its heartbeat interval) of every running
        trial that has beaten; the interval is the one its worker recorded, else `default_interval`."""

    def writable(self, limit: float) -> bool:
        """Can this process write right now, within `limit` seconds (nobody stopped holds the storage's lock)?"""

    # ------------------------------------------------------------ the study lock
    def lock(self, study: optuna.Study, purpose: str = "") -> StudyLock:
        """The study's lock in this process (one per study and purpose): around the queue's critical
        sections where the backend does not make each one atomic itself, and around `purpose`'s own."""

    # ------------------------------------------------------------ critical sections, each exactly once
    def fail_and_requeue(self, study: optuna.Study, trial_id: int, attrs: dict[str, Any],
                         successor: Callable[[FrozenTrial], FrozenTrial | None], stale_limit: float | None,
                         attrs_if_none: dict[str, Any]) -> tuple[FrozenTrial, bool] | None:
        """FAIL a running trial with `attrs` and enqueue `successor(it)` (or, when it declines, add
        `attrs_if_none` to the failed trial). (the trial, whether a successor was enqueued), or None
        when the trial was not RUNNING (or, with `stale_limit`, not that silent) at the moment of the write."""

    def requeue_orphans(self, study: optuna.Study, orphans: Callable[[list[FrozenTrial]], list[FrozenTrial]]) -> int:
        """Enqueue `orphans(every trial)`: the successors a process killed between a failure and its
        successor did not write (never needed where both are one transaction). How many."""

    def plan(self, study: optuna.Study, attrs: dict[str, Any], make: Make, chunk: int) -> str:
        """A new study's attributes (spec first), the start of its plan and its ready flag: 'created';
        'finished' when an interrupted creation of the same spec was completed; else 'exists'."""

    def finish_plan(self, study: optuna.Study, planned: int) -> None:
        """Complete a creation that stopped after the spec (a worker never takes a half-created study for done)."""

    def issue(self, study: optuna.Study, make: Make, chunk: int) -> int:
        """Enqueue the next `chunk` plan items and record how far the plan is issued; how many."""

    def enqueue_if_running(self, study: optuna.Study, trial_id: int,
                           templates: Callable[[FrozenTrial, set[tuple[str, int]]], list[FrozenTrial]]) -> bool:
        """Enqueue templates(trial, the study's (config_id, seed) keys) and mark the trial, once, only
        while it is still RUNNING; False when it is not."""

    # ------------------------------------------------------------ reads and writes
    def active_counts(self, study: optuna.Study) -> tuple[int, int]:
        """(waiting, running) trials of the study."""

    def set_trial_user_attrs(self, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        """Several user attributes of a running trial, in one statement where the backend can."""

    def trials(self, study: optuna.Study, keys: Iterable[str], states: Iterable[TrialState] | None,
               running_keys: Iterable[str], with_params: bool) -> list[Any]:
        """Light trials with only `keys` of their user attrs (plus `running_keys` for running ones)."""

    def full_trials(self, study: optuna.Study, states: Iterable[TrialState] | None) -> list[FrozenTrial]:
        """Every trial (of `states`) as a FrozenTrial, in bulk, sorted by number."""

    def prepare(self) -> None:
        """What creating a study sets up once in the storage (PostgreSQL: an index for claims and counts)."""
