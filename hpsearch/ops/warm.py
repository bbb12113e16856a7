"""create-study's side of a warm start: choose the source study's best configurations for the spec.

The ranking is `hpsearch best`'s (mean over seeds, clean configurations before ones with a pruned
or failed seed), so "the top 3" means what a user read there. The chosen configurations are
written into the spec (hpsearch.spec.warm), which is what makes them part of the plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from hpsearch import schema
from hpsearch.errors import HpsearchError, StudyNotFound
from hpsearch.queue import study as study_mod
from hpsearch.report import front
from hpsearch.report.stats import rank
from hpsearch.spec import warm
from hpsearch.spec.model import StudySpec
from hpsearch.storage import bulk


def resolve(spec: StudySpec, storage: optuna.storages.BaseStorage, reuse: bool = True) -> tuple[StudySpec, str | None]:
    """The spec with its warm start's configurations chosen, and a line saying what was chosen.

    `reuse`: a study of this name whose stored warm start has the same source and K keeps the
    configurations it was created with, so running the same create-study again stays a no-op
    after the source study has moved on (--replace chooses afresh)."""
    ws = spec.warm_start
    if not ws or "configs" in ws:
        return spec, None
    stored = _stored_warm_start(spec.name, storage) if reuse else None
    if stored and (stored.get("from"), stored.get("top")) == (ws["from"], ws["top"]) and "configs" in stored:
        return dataclasses.replace(spec, warm_start=dict(stored)), None
    try:
        source = study_mod.load(ws["from"], storage)
    except StudyNotFound as exc:
        raise StudyNotFound(f"warm_start: {exc}") from None
    if len(source.directions) > 1:
        raise HpsearchError(f"warm_start: study {ws['from']!r} has several objectives, so it has no single top "
                            f"{ws['top']}; warm start from a study of one objective")
    source_spec = study_mod.stored_spec(source) if schema.SPEC_ATTR in source.user_attrs else None
    goals = front.goals_of(source, source_spec)  # ranked as best ranks: a bound's breakers last
    trials = bulk.trials(source, keys=[schema.CONFIG_ID, schema.NAME, schema.SEED, schema.RETRY_OF,
                                       schema.FAIL_REASON, schema.IS_REPEAT, *goals.keys()], with_params=True)
    rows = rank(trials, goals)
    if not rows:
        raise HpsearchError(f"warm_start: study {ws['from']!r} has no complete trial to start from")
    chosen: list[dict[str, Any]] = []
    for row in rows:
        params = warm.restrict(row.params, spec.space)
        if params is not None and all(params != c["params"] for c in chosen):
            chosen.append({"params": params, "trial": row.representative, "rank": row.rank})
        if len(chosen) == ws["top"]:
            break
    if not chosen:
        raise HpsearchError(f"warm_start: none of the {len(rows)} configurations of study {ws['from']!r} lies in "
                            f"this spec's space (their parameters: {', '.join(sorted(rows[0].params))})")
    resolved = dataclasses.replace(spec, warm_start={**ws, "configs": chosen})
    ranks = ", ".join(str(c["rank"]) for c in chosen)
    return resolved, (f"warm start: the first {len(chosen)} trials take the configurations ranked {ranks} in "
                      f"study {ws['from']!r}" + ("" if len(chosen) == ws["top"] else
                                                  f" (only {len(chosen)} of its best lie in this space)"))


def _stored_warm_start(name: str, storage: optuna.storages.BaseStorage) -> dict[str, Any] | None:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    stored = (study.user_attrs.get(schema.SPEC_ATTR) or {}).get("warm_start")
    return stored if isinstance(stored, dict) else None
