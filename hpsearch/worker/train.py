"""What trains a claimed trial: the study's own objective (a plugin), or the built-in trainer."""

from __future__ import annotations

import os
from typing import Any

import optuna

from hpsearch import schema
from hpsearch.queue import study as study_mod
from hpsearch.spec.model import StudySpec
from hpsearch.worker.options import Options
from hpsearch.worker.record import record_class_counts
from hpsearch.worker.result import checked
from hpsearch.worker.stopping import should_stop


def objective(trial: optuna.Trial, spec: StudySpec, ctx: dict[str, Any], opts: Options, progress: Any) -> float:
    """The trial's value: what the user objective returns, or what the built-in trainer measured."""
    if spec.objective is not None:
        return _user_objective(trial, spec)
    from hpsearch.training import objective as trainer

    c = trainer_context(trial, spec, ctx, opts, progress)
    tracker = c.tracker
    try:
        # Checked here, so a bad result ends the W&B run as failed, not complete.
        value = checked(trainer.run(trial, spec, c), spec.metric)
    except BaseException as exc:
        if tracker is not None:
            tracker.finish_error(exc)
        raise
    if tracker is not None:
        tracker.finish("complete")
    return value


def _user_objective(trial: optuna.Trial, spec: StudySpec) -> float:
    from hpsearch.registry import load_plugin
    from hpsearch.spec import space as space_mod

    fn = load_plugin(spec.objective, "objective")
    # The space is suggested here, so grid points, conditions and samplers work the same
    # for user objectives; they read trial.params (or suggest more of their own).
    params = space_mod.suggest(trial, spec.space)
    seed = trial.user_attrs.get(schema.SEED, spec.seed)
    # "seed" inside the config is the training setting (the config is what the trainer resolved).
    study_mod.set_user_attrs(trial, {schema.CONFIG_ID: space_mod.config_id(params),
                                     schema.NAME: space_mod.short_name(params),
                                     schema.CONFIG: {**spec.train, **params, "seed": seed}})
    return checked(fn(trial, spec.to_dict()), spec.metric)


def trainer_context(trial: optuna.Trial, spec: StudySpec, ctx: dict[str, Any], opts: Options, progress: Any) -> Any:
    """What the built-in trainer gets for one trial (its own W&B run, when tracking is on)."""
    from hpsearch.training import objective as trainer

    tracker = None
    if spec.tracking and os.environ.get("HPSEARCH_TRACKING", "on") != "off":
        from hpsearch.training.tracking import start_run

        tracker = start_run(trial, spec, opts.tracking)
    return trainer.Context(device=ctx["device"], artifact_store=ctx["artifacts"], should_stop=should_stop,
                           progress=progress, tracker=tracker, checkpoint_every=opts.checkpoint_every,
                           extra={"on_data": lambda d: record_class_counts(trial.study, d, ctx)})
