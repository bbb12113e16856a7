"""Stopping a study from anywhere: a study attribute every worker reads before it claims.

`hpsearch stop` sets it; workers finish the trial they run (as W&B's "stop sweep" lets runs
finish: nothing trained is thrown away) and exit 0 instead of claiming another; `hpsearch resume`
clears it. It lives in the storage, so workers on every machine see it, and a worker reads it at
most every STOP_POLL_S seconds, so a busy claim loop adds no database round trip per claim.
"""

from __future__ import annotations

import datetime
import time
import weakref

import optuna

from hpsearch import schema
from hpsearch.storage.optuna_internals import storage_of, study_id

STOP_POLL_S = 5.0
# Per loaded study (not per id: ids repeat across storages in one process): (when read, stopped).
_last: weakref.WeakKeyDictionary[optuna.Study, tuple[float, bool]] = weakref.WeakKeyDictionary()


def stopped_at(study: optuna.Study) -> str | None:
    """When the study was stopped (ISO time), or None when it runs; read from the storage now."""
    return stopped_in(storage_of(study).get_study_user_attrs(study_id(study)))


def stopped_in(attrs: dict[str, object]) -> str | None:
    """When the study whose user attributes these are was stopped, or None (never, or resumed)."""
    value = attrs.get(schema.STOPPED_ATTR)
    return value if isinstance(value, str) and value else None


def stop_requested(study: optuna.Study, poll: float = STOP_POLL_S) -> bool:
    """Whether the study was stopped, as read at most `poll` seconds ago (the first call reads)."""
    now = time.monotonic()
    seen = _last.get(study)
    if seen is None or now - seen[0] >= poll:
        seen = (now, stopped_at(study) is not None)
        _last[study] = seen
    return seen[1]


def set_stopped(study: optuna.Study, stopped: bool) -> bool:
    """Stop (or resume) the study; False when it already was so."""
    if (stopped_at(study) is not None) == stopped:
        return False
    # Optuna cannot delete a user attribute: resuming writes '' over the time.
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds") if stopped else ""
    storage_of(study).set_study_user_attr(study_id(study), schema.STOPPED_ATTR, when)
    return True
