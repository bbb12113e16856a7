"""The trial table: one row per trial (params, metrics, state, bookkeeping), and `hpsearch export`.

The same table feeds the report (grouping, filters), so `export` shows exactly what the report
counted. Parameters are prefixed `params_` (as in optuna's trials_dataframe) so a parameter can
never shadow a metric column; learning curves and confusion matrices are not flattened into it.

Seed runs: a configuration (`config_id`) is trained once per seed; a seed's run is its first trial
plus the retries that re-ran it after a dead or preempted worker (`retry_of`), and its outcome is
that of its newest trial: complete, pruned, failed, or pending (waiting or running). Every trial's
row carries its configuration's counts (`config_seeds`, `config_pruned`, ...), so a table sorted
by value can never hide that a configuration's other seed was pruned.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from hpsearch import schema
from hpsearch import space as space_mod
from hpsearch.errors import HpsearchError
from hpsearch.metrics import key_of

if TYPE_CHECKING:
    import pandas as pd

PARAM_PREFIX = "params_"
FORMATS = ("csv", "parquet", "json")
BINARY_TO_STDOUT = "--format parquet is binary: give --out FILE to write it to a file"
METRICS = schema.METRICS
# Trial user attrs copied as they are (missing -> empty); see hpsearch.schema.
ATTRS = (schema.BEST_EPOCH, schema.EPOCHS_TRAINED, schema.PRUNED_AT_EPOCH, schema.DURATION_S, schema.TRAIN_TIME_S,
         schema.N_PARAMETERS, schema.LATENCY_MS, schema.FLOPS, schema.FEASIBLE,
         *schema.COMPUTE, schema.WORKER, schema.FAIL_REASON, schema.RETRY_OF)
# The configuration's seed runs by outcome (see the module docstring), on every row of the configuration.
CONFIG_COLUMNS = ("config_seeds", "config_complete", "config_pruned", "config_failed", "config_pending",
                  "config_clean")
INT_COLUMNS = ("number", schema.SEED, schema.REPEAT_OF, schema.BEST_EPOCH, schema.EPOCHS_TRAINED,
               schema.PRUNED_AT_EPOCH, schema.RETRY_OF, schema.THREADS, schema.FUSED, schema.N_PARAMETERS,
               schema.FLOPS, *CONFIG_COLUMNS[:-1])
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "fail",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def state_name(trial: FrozenTrial) -> str:
    return STATE_NAMES.get(trial.state, trial.state.name.lower())


def params_of(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's parameters; for a queued trial, the fixed ones it will run with."""
    return dict(trial.params) or dict(trial.system_attrs.get(schema.FIXED_PARAMS, {}))


def config_id(trial: FrozenTrial) -> str:
    """The worker's config id; recomputed from the params for trials that never got one (plain optuna)."""
    cid = trial.user_attrs.get(schema.CONFIG_ID)
    return str(cid) if cid else space_mod.config_id(params_of(trial))


def trial_name(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get(schema.NAME) or space_mod.short_name(params_of(trial)) or f"trial {trial.number}")


# ---------------------------------------------------------------- seed runs


@dataclass
class SeedRuns:
    """A configuration's seed runs by outcome; `clean` when none was pruned or failed."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    pending: int = 0  # waiting or running: no outcome yet

    @property
    def seeds(self) -> int:
        return self.complete + self.pruned + self.failed + self.pending

    @property
    def clean(self) -> bool:
        return self.pruned == 0 and self.failed == 0

    def text(self) -> str:
        """"2 seeds, 1 pruned": what the configuration's mean is (and is not) made of."""
        head = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        return ", ".join([head, *(f"{n} {what}" for what, n in (("pruned", self.pruned), ("failed", self.failed),
                                                                  ("pending", self.pending)) if n)])

    def as_dict(self) -> dict[str, int]:
        return {"seeds": self.seeds, "complete": self.complete, "pruned": self.pruned, "failed": self.failed,
                "pending": self.pending}


def seed_outcome(trial: Any) -> str:
    """complete | pruned | failed | pending, for the newest trial of a seed run."""
    if trial.state == TrialState.COMPLETE:
        # Only finite values are a result (the ranking skips the others too).
        values = trial.values
        return "complete" if values and all(math.isfinite(v) for v in values) else "failed"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    if trial.state in (TrialState.WAITING, TrialState.RUNNING):
        return "pending"
    return "failed"


def _known_config(trial: Any) -> bool:
    # A parameterless ticket (random/TPE) has no configuration until a worker samples it; a trial
    # refused as a duplicate of another (objective.refuse_duplicate) is no seed of its configuration.
    if trial.user_attrs.get(schema.DUPLICATE_OF) is not None:
        return False
    return (bool(trial.user_attrs.get(schema.CONFIG_ID)) or bool(params_of(trial))
            or trial.state == TrialState.COMPLETE)


def seed_runs(trials: Sequence[Any]) -> dict[str, SeedRuns]:
    """config_id -> its seed runs by outcome (a retry continues its original's run, it is no new seed)."""
    newest: dict[tuple[str, int], Any] = {}
    for t in trials:
        if not _known_config(t):
            continue
        root = t.user_attrs.get(schema.RETRY_OF)
        key = (config_id(t), int(root) if isinstance(root, int) else t.number)
        if key not in newest or t.number > newest[key].number:
            newest[key] = t
    runs: dict[str, SeedRuns] = defaultdict(SeedRuns)
    for (cid, _), t in newest.items():
        outcome = seed_outcome(t)
        setattr(runs[cid], outcome, getattr(runs[cid], outcome) + 1)
    return dict(runs)


# ---------------------------------------------------------------- the table


def trial_record(trial: FrozenTrial, runs: SeedRuns | None = None, names: Sequence[str] = ()) -> dict[str, Any]:
    """One trial's row; with several objectives (`names`: the study's metric names) each is a column
    of its name, and `value` is the first."""
    attrs = trial.user_attrs
    values = list(trial.values or [])
    record: dict[str, Any] = {
        "number": trial.number,
        "state": state_name(trial),
        "value": values[0] if values else None,
        schema.NAME: trial_name(trial),
        schema.CONFIG_ID: config_id(trial),
        schema.SEED: attrs.get(schema.SEED),
        schema.IS_REPEAT: bool(attrs.get(schema.IS_REPEAT, False)),
        schema.REPEAT_OF: attrs.get(schema.REPEAT_OF),
        schema.DIVERGENT: bool(attrs.get(schema.DIVERGENT, False)),
    }
    for key in (*METRICS, *ATTRS):
        record[key] = attrs.get(key)
    if len(names) > 1:
        for i, name in enumerate(names):
            record[name] = values[i] if i < len(values) else attrs.get(key_of(name))
    record["datetime_start"] = trial.datetime_start
    record["datetime_complete"] = trial.datetime_complete
    counts = runs.as_dict() if runs is not None else {}
    for col in CONFIG_COLUMNS[:-1]:
        record[col] = counts.get(col.removeprefix("config_"))
    record["config_clean"] = runs.clean if runs is not None else None
    for name, value in params_of(trial).items():
        record[PARAM_PREFIX + name] = value
    return record


def trials_frame(trials: Sequence[FrozenTrial], names: Sequence[str] = ()) -> pd.DataFrame:
    """One row per trial, ordered by trial number; conditional params absent -> missing value.
    `names`: the study's objectives (a column each when there are several)."""
    import pandas as pd

    runs = seed_runs(trials)
    records = [trial_record(t, runs.get(config_id(t)) if _known_config(t) else None, names)
               for t in sorted(trials, key=lambda t: t.number)]
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=list(dict.fromkeys([*trial_record_columns(), *(names if len(names) > 1 else [])])))
    for col in INT_COLUMNS:
        # Missing values would turn whole columns of epochs and seeds into floats (4.0) otherwise.
        values = frame[col].dropna()
        if all(isinstance(v, int) or (isinstance(v, float) and v.is_integer()) for v in values):
            frame[col] = frame[col].astype("Int64")
    return frame


def trial_record_columns() -> list[str]:
    return ["number", "state", "value", schema.NAME, schema.CONFIG_ID, schema.SEED, schema.IS_REPEAT, schema.REPEAT_OF,
            schema.DIVERGENT, *METRICS, *ATTRS, "datetime_start", "datetime_complete", *CONFIG_COLUMNS]


# ---------------------------------------------------------------- writing


def export(trials: Sequence[FrozenTrial], fmt: str, out: str | Path | None = None,
           names: Sequence[str] | None = None) -> int:
    """Write the trial table as csv/parquet/json to the file `out`, or to stdout (None or '-');
    `names`: the study's metric names, a column per objective when there are several.

    Only the data goes to stdout, so `hpsearch export NAME --format csv > trials.csv` is a clean
    file; the caller reports on stderr. Returns the row count.
    """
    if fmt not in FORMATS:
        raise HpsearchError(f"--format must be one of {', '.join(FORMATS)}, but got {fmt!r}")
    to_stdout = out is None or str(out) == "-"
    if to_stdout and fmt == "parquet":
        raise HpsearchError(BINARY_TO_STDOUT)
    frame = trials_frame(trials, names or ())
    if fmt == "csv":
        text = frame.to_csv(index=False)
    elif fmt == "json":
        # Records with ISO dates and null for missing values: what jq and pandas.read_json expect.
        text = frame.to_json(orient="records", date_format="iso", indent=1) + "\n"
    else:
        text = None
    if to_stdout:
        sys.stdout.write(text or "")
        sys.stdout.flush()
        return len(frame)
    path = Path(out)  # type: ignore[arg-type]
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    if text is not None:
        path.write_text(text)
    else:
        _parquet_safe(frame).to_parquet(path, index=False)
    return len(frame)


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet columns have one type: a categorical param mixing e.g. 0 and 'none' becomes text."""
    frame = frame.copy()
    for col in frame.columns:
        if frame[col].dtype != object:
            continue
        kinds = {type(v) for v in frame[col] if v is not None and v == v}
        if len(kinds) > 1 and not kinds <= {int, float}:
            frame[col] = [None if v is None or v != v else str(v) for v in frame[col]]
    return frame
