"""`hpsearch repeat`: more seeds for the best configurations, queued as ordinary waiting trials.

The top K configurations (per group) are ranked exactly as the report's table ranks them: by the
mean validation metric over their complete seeds. Each gets S new seeds that no trial of that
configuration has used (whatever its state: a queued or failed seed is not drawn again), and the
trials are marked `is_repeat` so samplers do not take them as new samples.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from hpsearch.errors import HpsearchError
from hpsearch.queue import plan as plan_mod
from hpsearch.report.export import config_id
from hpsearch.report.stats import (
    ConfigSummary,
    best_per_group,
    bounds_of,
    check_group_by,
    summarize,
)
from hpsearch.schema import SEED
from hpsearch.spec.model import StudySpec
from hpsearch.storage import bulk as fastread


@dataclass(frozen=True)
class Queued:
    config: ConfigSummary
    seeds: list[int]


def used_seeds(trials: list[FrozenTrial], default: int) -> dict[str, set[int]]:
    """Seeds each configuration has used, in any state (a trial without a seed ran the spec's seed)."""
    used: dict[str, set[int]] = defaultdict(set)
    for t in trials:
        used[config_id(t)].add(int(t.user_attrs.get(SEED, default)))
    return used


def new_seeds(used: set[int], count: int) -> list[int]:
    """`count` seeds above every used one: never a collision, and deterministic for the same history."""
    start = max(used, default=-1) + 1
    return list(range(start, start + count))


def queue_repeats(study: optuna.Study, spec: StudySpec, top: int, seeds: int,
                  group_by: str | None = None) -> list[Queued]:
    if seeds < 1:
        raise HpsearchError(f"--seeds must be >= 1, but got {seeds=}")
    from hpsearch.queue.lock import StudyLock

    # Under the study lock, so two `repeat`s at once cannot hand out the same seeds.
    with StudyLock(study, purpose="repeat"):
        return _queue(study, spec, top, seeds, group_by)


def _queue(study: optuna.Study, spec: StudySpec, top: int, seeds: int, group_by: str | None) -> list[Queued]:
    trials = fastread.full_trials(study)
    check_group_by(group_by, trials, spec.space)
    maximize = spec.direction == "maximize"
    ranked = summarize(trials, maximize, bounds=bounds_of(spec.metric))
    if not ranked:
        raise HpsearchError(f"study {study.study_name!r} has no complete trial yet: nothing to repeat")
    by_number = {t.number: t for t in trials}
    used = used_seeds(trials, spec.seed)
    queued = []
    for _, configs in best_per_group(ranked, group_by, top):
        for c in configs:
            source = by_number[c.representative]
            chosen = new_seeds(used[c.config_id], seeds)
            used[c.config_id].update(chosen)
            plan_mod.enqueue_repeats(study, source, spec, dict(source.params), chosen,  # type: ignore[arg-type]
                                      mark_repeat=True)
            queued.append(Queued(c, chosen))
    return queued


def describe(queued: list[Queued], metric: str, group_by: str | None) -> list[str]:
    lines = []
    for q in queued:
        group = f"[{group_by}={q.config.group}] " if group_by else ""
        lines.append(f"{group}#{q.config.rank} {q.config.name}: {metric} {q.config.value.text()} over "
                     f"{q.config.value.n} complete seed(s) ({q.config.runs.text()}); queued seeds "
                     f"{', '.join(map(str, q.seeds))} "
                     f"(repeat of trial {q.config.representative})")
    total = sum(len(q.seeds) for q in queued)
    lines.append(f"queued {total} repeat trial(s) for {len(queued)} configuration(s); workers run them like any "
                 "other trial")
    return lines
