"""The study lock: one cross-process lock per study, around the queue's critical sections.

The study's backend holds it (hpsearch.storage.locks.StudyLock) and says what it is made of: on
PostgreSQL the critical sections are single transactions that take the study's advisory lock
themselves, so entering it there only serialises this process's threads (unless `purpose` names
a lock of its own, as `hpsearch repeat` does); on the journal file and SQLite it is a file beside
the storage; through the gRPC proxy there is none (the proxy's keeper does what needs it).
"""

from __future__ import annotations

from typing import Any

import optuna

from hpsearch.storage import backends


class StudyLock:
    """The study's lock (for `purpose`'s own block, when given); reentrant, shared by this process's threads."""

    def __init__(self, study: optuna.Study, purpose: str = "") -> None:
        self.study = study
        self.purpose = purpose
        backend = backends.of(study)
        self._lock = backend.lock(study, purpose)
        # False through the gRPC proxy: there, the proxy's keeper issues the plan and reaps.
        self.available = backend.workers_keep_queue

    @classmethod
    def of(cls, study: optuna.Study) -> StudyLock:
        return cls(study)

    def __enter__(self) -> StudyLock:
        self._lock.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)
