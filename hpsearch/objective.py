"""The objective a user implements, and what runs a trial's objective.

A study's own objective is named in its spec as `objective: package.module:function` and is
called once per trial as

    def objective(trial: optuna.Trial, spec: dict) -> float

with the trial's search space already suggested (read `trial.params`, or suggest more) and the
resolved spec as a plain dict (`spec["train"]` holds the fixed settings). It returns the value of
the spec's `metric`, a finite number, or with several `metrics:` a tuple of them in the spec's
order. A constraint (`constraints:`) bounds one of those, or an attribute the objective set with
`trial.set_user_attr(name, value)`. While it runs:

- `should_stop()` turns True when the worker is asked to stop (SIGTERM, Ctrl-C, a cluster's
  pre-emption warning) or the trial passes its `trial_timeout`; raise `Preempted` then and the
  trial is handed back and resumed elsewhere (or, past its time limit, ends failed);
- raise `Divergent` when training blew up (a NaN loss): the trial fails marked divergent, as a
  returned NaN or infinity does; any other exception fails it with the exception as its reason.

Without `objective:`, the built-in trainer (hpsearch.training.trainer) trains the trial: `run`
below is the one place that picks between the two. This module imports neither torch nor
optuna, so a user objective's process pays for neither unless the objective does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpsearch import schema
from hpsearch.redact import mask

if TYPE_CHECKING:
    import optuna

    from hpsearch.spec.model import StudySpec

Objective = Callable[["optuna.Trial", dict[str, Any]], float]  # what `objective:` names


class Preempted(Exception):  # noqa: N818 - an event, not an error
    """The worker was asked to stop (SIGTERM/SIGINT): the trial is handed back and resumed elsewhere.

    User objectives raise it when `should_stop()` turns True.
    """


class Divergent(Exception):  # noqa: N818 - named for the trial it marks
    """The loss became NaN or infinite: recorded as a failed, divergent trial."""


class Duplicate(Exception):  # noqa: N818 - named for the trial it marks
    """The sampler proposed a configuration and seed that an earlier trial of the study runs or ran."""


def refuse_duplicate(trial: optuna.Trial, spec: StudySpec, config_id: str, seed: int) -> None:
    """Raise Duplicate when a sampled trial repeats another trial's configuration and seed.

    Samplers that breed configurations (NSGA-II/III's crossover keeps a parent's values; CMA-ES or
    TPE on a stepped range) can propose one again, and two workers sampling at once can draw the
    same one. Training it again adds nothing but a second copy of the same seed, which `best` would
    count as a second seed. The trial ends FAIL with the reason (the sampler then simply samples
    on), never retried, and not counted as a worker's failure. Grid points and repeat seeds are
    unique by plan: a grid study is not checked.

    Asked twice, once the trial's own configuration is recorded: before training and again before
    its result is told. The trial is a duplicate when the other one has finished (complete or
    pruned), or runs and has a lower number. Two workers that drew the same configuration at the
    same moment may both pass the first look (neither saw the other's record yet); the second look
    keeps the lower-numbered one and fails the other, so one result is told, not two.
    """
    if spec.sampler.get("name") == "grid":
        return
    from optuna.trial import TrialState


    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                  TrialState.RUNNING)):
        attrs = other.user_attrs
        if (other.number != trial.number and attrs.get(schema.CONFIG_ID) == config_id
                and int(attrs.get(schema.SEED, spec.seed)) == seed
                and (other.state != TrialState.RUNNING or other.number < trial.number)):
            # Said on the trial itself: `best` and `export` count it as no seed of the configuration.
            trial.set_user_attr(schema.DUPLICATE_OF, other.number)
            raise Duplicate(f"duplicate: the sampler proposed the configuration and seed of trial {other.number} "
                            f"again ({config_id}, seed {seed}); not trained twice")


class BadResult(Exception):  # noqa: N818 - named for what the trial records: its result was bad
    """The objective's result is not a finite number; its message is the trial's fail_reason."""

    def __init__(self, message: str, divergent: bool) -> None:
        super().__init__(message)
        self.divergent = divergent


# ---------------------------------------------------------------- stopping


def _never() -> bool:
    return False


_stop_check: list[Callable[[], bool]] = [_never]  # the worker's, once it installs one


def should_stop() -> bool:
    """True once the worker was asked to stop (preemption, Ctrl-C) or the running trial is past its
    time limit (`trial_timeout`); raise Preempted then. Outside a worker: always False."""
    return bool(_stop_check[0]())


def stop_when(check: Callable[[], bool]) -> None:
    """What should_stop() asks: the worker installs its stop flag and time limit here."""
    _stop_check[0] = check


def is_divergent(exc: BaseException) -> bool:
    """The built-in trainer's non-finite loss (Divergent) and a non-finite result (BadResult) alike."""
    return isinstance(exc, Divergent) or getattr(exc, "divergent", False) is True


# ---------------------------------------------------------------- the result


def checked(value: Any, metric: str) -> float:
    """`value` as a float, or BadResult: only a finite number is a result.

    Optuna stores NaN as a FAIL without a reason and +-inf as COMPLETE (so -inf would be the best
    value of a minimised metric): a non-finite number ends the trial as a diverged loss does, and
    anything else (a string, None, a tuple where one value is expected) is a bug in the objective.
    """
    if value is None or isinstance(value, (str, bytes, bool, tuple, list, dict, set)) or not hasattr(
            value, "__float__"):
        raise BadResult(_message(metric, value), divergent=False)
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError, OverflowError):  # e.g. a tensor of several values
        raise BadResult(_message(metric, value), divergent=False) from None
    if not math.isfinite(number):
        raise BadResult(f"the objective's result must be a finite number, but got {metric}={number} "
                        "(diverged?)", divergent=True)
    return number


def result(value: Any, spec: StudySpec) -> float | list[float]:
    """What Optuna is told: one finite number for one metric, a list of them, in the spec's order,
    for several (BadResult otherwise)."""
    if not spec.multi_objective:
        return checked(value, spec.metric)
    if not isinstance(value, (tuple, list)) or len(value) != len(spec.metrics):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise BadResult(mask(f"the objective's result must be {len(spec.metrics)} finite numbers, one per metric "
                             f"({', '.join(spec.metrics)}), but got {shown} ({type(value).__name__})"),
                        divergent=False)
    return [checked(v, m) for v, m in zip(value, spec.metrics, strict=True)]


def shown(value: float | list[float], spec: StudySpec) -> str:
    """"val_acc=0.9500, n_params=1,234": a result as the worker's line shows it."""
    from hpsearch.metrics import format_value

    values = value if isinstance(value, list) else [value]
    return ", ".join(f"{m}={format_value(m, v)}" for m, v in zip(spec.metrics, values, strict=True))


def constrain(trial: optuna.Trial, spec: StudySpec, value_of: Callable[[str], float | None], record: Record) -> None:
    """The spec's constraints measured on a finished trial: recorded on it (`constraints`, `feasible`)
    and handed to Optuna (Trial.set_constraint, which TPE, GP and NSGA-II/III read; Optuna 5
    deprecates the samplers' constraints_func for it). A bound on a metric the trial did not report
    is BadResult: the trial fails saying so, rather than count as feasible."""
    if not spec.constraints:
        return
    from hpsearch.metrics import constraint_values

    values = constraint_values(spec.constraints, value_of)
    missing = sorted({k.rsplit(".", 1)[0] for k, v in values.items() if v is None})
    if missing:
        raise BadResult(f"constraints: the trial reported no {', '.join(missing)} (return it as one of the metrics, "
                        f"or set it with trial.set_user_attr({missing[0]!r}, value))", divergent=False)
    met = {k: float(v) for k, v in values.items() if v is not None}
    record(trial, {schema.CONSTRAINTS: met, schema.FEASIBLE: all(v <= 0 for v in met.values())})
    for key, v in met.items():
        trial.set_constraint(key, v)


def _message(metric: str, value: Any) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    kind = type(value).__name__
    if isinstance(value, (tuple, list)):
        kind += ": one value is expected"
    return mask(f"the objective's result must be a finite number, but got {metric}={shown} ({kind})")


# ---------------------------------------------------------------- dispatch


def load(spec: StudySpec) -> Objective | None:
    """The study's own objective, imported (one line if it does not import); None: the built-in trainer."""
    if spec.objective is None:
        return None
    from hpsearch.registry import load_plugin

    return load_plugin(spec.objective, "objective")


Record = Callable[["optuna.Trial", dict[str, Any]], None]  # optuna: imported for types only


def record_each(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """The plain recorder: one Optuna call per attribute (the worker lends a one-statement one)."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def run(trial: optuna.Trial, spec: StudySpec, builtin: Callable[[], float], record: Record = record_each) -> float:
    """The trial's value, checked: the study's own objective, else `builtin()`, the built-in trainer
    (hpsearch.training.trainer.run with the device, checkpoints and W&B run the worker lends; this
    module does not import it, so a user objective never loads torch). `record` writes the trial's
    attributes (the worker lends one that writes them in one statement)."""
    fn = load(spec)
    if fn is None:
        return builtin()
    config_id, seed = _suggest_and_record(trial, spec, record)
    value = result(fn(trial, spec.to_dict()), spec)
    refuse_duplicate(trial, spec, config_id, seed)  # again, at its end
    _settle(trial, spec, value, record)
    return value


def _settle(trial: optuna.Trial, spec: StudySpec, value: float | list[float], record: Record) -> None:
    """Several metrics are recorded under their names (where every reader finds each objective, as
    the built-in trainer's are); then the constraints, on them or on attributes the objective set."""
    told = dict(zip(spec.metrics, value if isinstance(value, list) else [value], strict=True))
    if spec.multi_objective:
        record(trial, told)
    if spec.constraints:
        from hpsearch.metrics import is_number

        attrs = trial.user_attrs

        def value_of(metric: str) -> float | None:
            v = told.get(metric, attrs.get(metric))
            return float(v) if is_number(v) else None

        constrain(trial, spec, value_of, record)


def _suggest_and_record(trial: optuna.Trial, spec: StudySpec, record: Record) -> tuple[str, int]:
    """Suggest the spec's space and record the trial's configuration; its (config_id, seed), checked
    against the other trials' (refuse_duplicate).

    The space is suggested here, so grid points, conditions and samplers work the same for user
    objectives; they read trial.params (or suggest more of their own)."""
    from hpsearch import space as space_mod

    params = space_mod.suggest(trial, spec.space)
    seed = trial.user_attrs.get(schema.SEED, spec.seed)
    config_id = space_mod.config_id(params)
    # "seed" inside the config is the training setting (the config is what the trainer resolved).
    record(trial, {schema.CONFIG_ID: config_id, schema.NAME: space_mod.short_name(params),
                   schema.CONFIG: {**spec.train, **params, "seed": seed}})
    refuse_duplicate(trial, spec, config_id, int(seed))
    return config_id, int(seed)
