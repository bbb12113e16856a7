"""What a claimed trial is trained with: hpsearch.objective.run, and the built-in trainer's context."""

from __future__ import annotations

import os
from typing import Any

import optuna

from hpsearch import objective as objective_mod
from hpsearch.queue.study import set_user_attrs
from hpsearch.spec.model import StudySpec
from hpsearch.worker.context import TrialContext
from hpsearch.worker.options import Options
from hpsearch.worker.record import record_class_counts


def objective(trial: optuna.Trial, spec: StudySpec, ctx: TrialContext, opts: Options, progress: Any) -> float:
    """The trial's value: what the user objective returns, or what the built-in trainer measured."""
    def builtin() -> float:
        from hpsearch.training import trainer

        return trainer.run(trial, spec, trainer_context(trial, spec, ctx, opts, progress))

    return objective_mod.run(trial, spec, builtin, set_user_attrs)


def trainer_context(trial: optuna.Trial, spec: StudySpec, ctx: TrialContext, opts: Options, progress: Any) -> Any:
    """What the built-in trainer gets for one trial (its own W&B run, when tracking is on)."""
    from hpsearch.training import trainer

    tracker = None
    if spec.tracking and os.environ.get("HPSEARCH_TRACKING", "on") != "off":
        from hpsearch.training.tracking import start_run

        tracker = start_run(trial, spec, opts.tracking)
    return trainer.Context(device=ctx.device, artifact_store=ctx.artifacts, should_stop=ctx.stop.asked_to_stop,
                           progress=progress, tracker=tracker, checkpoint_every=opts.checkpoint_every, record=set_user_attrs,
                           extra={"on_data": lambda d: record_class_counts(trial.study, d, ctx)})
