"""Ending a study's life from the CLI: stop (workers finish their trial and exit), resume, delete.

Stopping is a study attribute (hpsearch.queue.control) so every worker, on any machine, sees it.
Deleting removes the study, its trials and the checkpoints its trials left in the artifact store
(a retry would have resumed from them; with the study gone nothing will, and they only fill a disk
or a bucket).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch import schema
from hpsearch.errors import HpsearchError
from hpsearch.queue import control
from hpsearch.queue import study as study_mod
from hpsearch.storage.optuna_internals import storage_of
from hpsearch.storage.reconnect import reason

log = logging.getLogger("hpsearch")


@dataclass
class Counts:
    trials: int
    running: int
    waiting: int


def counts(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    return Counts(len(trials), running, waiting)


def stop(study: optuna.Study) -> str:
    """Ask every worker of the study to claim nothing more; the line to print."""
    name = study.study_name
    if not control.set_stopped(study, True):
        return f"study {name!r} was already stopped (since {control.stopped_at(study)}); resume it with: " \
               f"hpsearch resume {name}"
    waiting, running = study_mod.active_counts(study)
    return (f"study {name!r} stopped: workers claim nothing more and exit once their running trial ends "
            f"({running} running now; they notice within {control.STOP_POLL_S:g} s); {waiting} waiting "
            f"stay queued; go on with: hpsearch resume {name}")


def resume(study: optuna.Study) -> str:
    name = study.study_name
    if not control.set_stopped(study, False):
        return f"study {name!r} was not stopped; nothing to resume"
    return f"study {name!r} resumed: start workers with: hpsearch worker --study {name}"


def delete(study: optuna.Study, url: str) -> tuple[Counts, int]:
    """Delete the study, its trials and their checkpoints; (what it held, checkpoints removed)."""
    held = counts(study)
    removed = remove_checkpoints(study, url)
    optuna.delete_study(study_name=study.study_name, storage=storage_of(study))
    return held, removed


def remove_checkpoints(study: optuna.Study, url: str) -> int:
    """Remove the checkpoints the study's trials left (delete, and create-study --replace); how many."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    from hpsearch.storage.artifacts import artifact_store

    ids = [t.user_attrs.get(schema.CHECKPOINT) for t in study.get_trials(deepcopy=False)]
    ids = [i for i in ids if isinstance(i, str) and i]
    try:
        store: Any = artifact_store(url, study.user_attrs.get(schema.ARTIFACTS_ATTR), study=study.study_name,
                                    tag=study.user_attrs.get(schema.INSTANCE_ATTR))
    except HpsearchError:
        if not ids:  # S3 without boto3, and nothing there to remove: no reason to stop the delete
            return 0
        raise
    removed = 0
    for artifact_id in ids:
        try:
            store.remove(artifact_id)
            removed += 1
        except ArtifactNotFound:
            pass
        except Exception as exc:  # noqa: BLE001 - a checkpoint left behind must not keep the study alive
            log.warning("checkpoint %s not removed (%s); the study is deleted all the same", artifact_id,
                        reason(exc))
            return removed
    # Those no trial names: a worker killed between writing a checkpoint and naming it on its trial
    # (or before removing the one it replaced). Found by the study's creation tag in their names.
    if hasattr(store, "sweep"):
        try:
            removed += store.sweep()
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("checkpoints of study %r not swept (%s); the study is deleted all the same",
                        study.study_name, reason(exc))
    if hasattr(store, "drop_if_empty"):  # a directory: the study's folder goes with its last checkpoint
        store.drop_if_empty()
    return removed

