"""`hpsearch repeat`: more seeds for chosen configurations, queued as ordinary waiting trials.

What to repeat, one of: the top K configurations (per group), ranked exactly as the report's table
ranks them (feasible before infeasible, then by the mean validation metric over their complete
seeds, or by Pareto front with several objectives); the configurations the
set-aside table lists (a pruned or failed seed, but their surviving seeds alone would put them in
the top K: exactly the ones more seeds would settle); or configurations named by id or name, as
`best` prints them. Each gets S new seeds that no trial of that
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
from hpsearch.report.objectives import Goals
from hpsearch.report.stats import (
    ConfigSummary,
    best_per_group,
    check_group_by,
    params_text,
    rank,
    set_aside,
)
from hpsearch.schema import SEED
from hpsearch.spec.model import StudySpec
from hpsearch.storage import bulk

SET_ASIDE_TOP = 5  # `--set-aside` without --top: the set-aside table of `best` and `report` by default


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


@dataclass(frozen=True)
class Selection:
    """Which configurations to repeat: the top K (per group), the set-aside ones, or named ones."""

    top: int | None = None
    group_by: str | None = None
    set_aside: bool = False
    configs: tuple[str, ...] = ()

    def check(self) -> None:
        if self.top is not None and self.top < 1:
            raise HpsearchError(f"--top must be >= 1, but got top={self.top}")
        if self.configs and (self.set_aside or self.top is not None or self.group_by):
            raise HpsearchError("--config must name the configurations alone, but got it with "
                                "--top/--set-aside/--group-by")
        if not self.configs and self.top is None and not self.set_aside:
            raise HpsearchError("repeat must be told what to repeat (--top K, --set-aside or --config ID), "
                                "but got none of them")


def queue_repeats(study: optuna.Study, spec: StudySpec, top: int | None, seeds: int,
                  group_by: str | None = None, set_aside_only: bool = False,
                  configs: tuple[str, ...] = ()) -> list[Queued]:
    selection = Selection(top, group_by, set_aside_only, tuple(configs))
    selection.check()
    if seeds < 1:
        raise HpsearchError(f"--seeds must be >= 1, but got {seeds=}")
    from hpsearch.queue.lock import StudyLock

    # Under the study lock, so two `repeat`s at once cannot hand out the same seeds.
    with StudyLock(study, purpose="repeat"):
        return _queue(study, spec, selection, seeds)


def _select(ranked: list[ConfigSummary], sel: Selection, study_name: str) -> list[ConfigSummary]:
    if sel.configs:
        return [_named(ranked, name, study_name) for name in dict.fromkeys(sel.configs)]
    top = sel.top if sel.top is not None else SET_ASIDE_TOP
    groups = set_aside(ranked, sel.group_by, top) if sel.set_aside else best_per_group(ranked, sel.group_by, top)
    chosen = [c for _, cs in groups for c in cs]
    if sel.set_aside and not chosen:
        raise HpsearchError(f"--set-aside must find a configuration set aside in the top {top}, but got none: "
                            f"every configuration there ran its seeds clean (`hpsearch best {study_name}` shows them)")
    return chosen


def _as_set(text: str) -> frozenset[str]:
    return frozenset(part.strip().replace(" ", "") for part in text.split(",") if part.strip())


def _named(ranked: list[ConfigSummary], name: str, study_name: str) -> ConfigSummary:
    """A configuration by its id (or a unique prefix of at least 6 characters), its name, or its
    parameters as `best` prints them (in any order)."""
    exact = [c for c in ranked if name in (c.config_id, c.name)]
    if not exact and "=" in name:
        exact = [c for c in ranked if _as_set(params_text(c.params)) == _as_set(name)]
    found = exact or ([c for c in ranked if c.config_id.startswith(name)] if len(name) >= 6 else [])
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise HpsearchError(f"--config must name one configuration, but got {name=}, which matches "
                            f"{len(found)}: {', '.join(c.config_id for c in found[:5])}")
    from hpsearch.registry import unknown_name_message

    known = [c.config_id for c in ranked] + [c.name for c in ranked]
    raise HpsearchError("--config: " + unknown_name_message("configuration", name, known).replace(
        "is not registered", f"is not a configuration of {study_name!r} with a complete seed"))


def _queue(study: optuna.Study, spec: StudySpec, sel: Selection, seeds: int) -> list[Queued]:
    trials = bulk.full_trials(study)
    check_group_by(sel.group_by, trials, spec.space)
    ranked = rank(trials, Goals.of(spec))  # as best ranks: feasible first, by Pareto front with several objectives
    if not ranked:
        raise HpsearchError(f"study {study.study_name!r} has no complete trial yet: nothing to repeat")
    chosen = _select(ranked, sel, study.study_name)
    by_number = {t.number: t for t in trials}
    used = used_seeds(trials, spec.seed)
    queued = []
    for c in chosen:
        source = by_number[c.representative]
        fresh = new_seeds(used[c.config_id], seeds)
        used[c.config_id].update(fresh)
        plan_mod.enqueue_repeats(study, source, spec, dict(source.params), fresh,  # type: ignore[arg-type]
                                  mark_repeat=True)
        queued.append(Queued(c, fresh))
    return queued


def describe(queued: list[Queued], metric: str, group_by: str | None) -> list[str]:
    lines = []
    for q in queued:
        group = f"[{group_by}={q.config.group}] " if group_by else ""
        lines.append(f"{group}#{q.config.rank} {q.config.name}: {metric} {q.config.value.text()} over "
                     f"{q.config.value.n} complete seed(s) ({q.config.seeds_text()}); queued seeds "
                     f"{', '.join(map(str, q.seeds))} "
                     f"(repeat of trial {q.config.representative})")
    total = sum(len(q.seeds) for q in queued)
    lines.append(f"queued {total} repeat trial(s) for {len(queued)} configuration(s); workers run them like any "
                 "other trial")
    return lines
