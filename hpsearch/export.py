"""The trial table: one row per trial (params, metrics, state, bookkeeping), and `hpsearch export`.

The same table feeds the report (grouping, filters), so `export` shows exactly what the report
counted. Parameters are prefixed `params_` (as in optuna's trials_dataframe) so a parameter can
never shadow a metric column; learning curves and confusion matrices are not flattened into it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from hpsearch import space as space_mod
from hpsearch import study as study_mod
from hpsearch.errors import HpsearchError

if TYPE_CHECKING:
    import pandas as pd

PARAM_PREFIX = "params_"
FORMATS = ("csv", "parquet", "json")
METRICS = ("val_acc", "val_loss", "test_acc", "test_loss")
# Trial user attrs copied as they are (missing -> empty); see the storage contract in study.py.
ATTRS = ("best_epoch", "epochs_trained", "pruned_at_epoch", "duration_s", "train_time_s", "device", "worker",
         "fail_reason", "retry_of")
INT_COLUMNS = ("number", "seed", "repeat_of", "best_epoch", "epochs_trained", "pruned_at_epoch", "retry_of")
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "fail",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def state_name(trial: FrozenTrial) -> str:
    return STATE_NAMES.get(trial.state, trial.state.name.lower())


def params_of(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's parameters; for a queued trial, the fixed ones it will run with."""
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))


def config_id(trial: FrozenTrial) -> str:
    """The worker's config id; recomputed from the params for trials that never got one (plain optuna)."""
    cid = trial.user_attrs.get(study_mod.CONFIG_ID)
    return str(cid) if cid else space_mod.config_id(params_of(trial))


def trial_name(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get("name") or space_mod.short_name(params_of(trial)) or f"trial {trial.number}")


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    record: dict[str, Any] = {
        "number": trial.number,
        "state": state_name(trial),
        "value": trial.value,
        "name": trial_name(trial),
        "config_id": config_id(trial),
        "seed": attrs.get(study_mod.SEED),
        "is_repeat": bool(attrs.get(study_mod.IS_REPEAT, False)),
        "repeat_of": attrs.get(study_mod.REPEAT_OF),
        "divergent": bool(attrs.get("divergent", False)),
    }
    for key in (*METRICS, *ATTRS):
        record[key] = attrs.get(key)
    record["datetime_start"] = trial.datetime_start
    record["datetime_complete"] = trial.datetime_complete
    for name, value in params_of(trial).items():
        record[PARAM_PREFIX + name] = value
    return record


def trials_frame(trials: Sequence[FrozenTrial]) -> pd.DataFrame:
    """One row per trial, ordered by trial number; conditional params absent -> missing value."""
    import pandas as pd

    records = [trial_record(t) for t in sorted(trials, key=lambda t: t.number)]
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=list(trial_record_columns()))
    for col in INT_COLUMNS:
        # Missing values would turn whole columns of epochs and seeds into floats (4.0) otherwise.
        values = frame[col].dropna()
        if all(isinstance(v, int) or (isinstance(v, float) and v.is_integer()) for v in values):
            frame[col] = frame[col].astype("Int64")
    return frame


def trial_record_columns() -> list[str]:
    return ["number", "state", "value", "name", "config_id", "seed", "is_repeat", "repeat_of", "divergent",
            *METRICS, *ATTRS, "datetime_start", "datetime_complete"]


def param_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if str(c).startswith(PARAM_PREFIX)]


# ---------------------------------------------------------------- writing


def export(trials: Sequence[FrozenTrial], fmt: str, out: str | Path) -> int:
    """Write the trial table as csv/parquet/json to `out` ('-' = stdout); returns the row count."""
    if fmt not in FORMATS:
        raise HpsearchError(f"--format must be one of {', '.join(FORMATS)}, but got {fmt!r}")
    frame = trials_frame(trials)
    to_stdout = str(out) == "-"
    if to_stdout and fmt == "parquet":
        raise HpsearchError("--format parquet is binary: give --out FILE instead of '-'")
    if fmt == "csv":
        text = frame.to_csv(index=False)
    elif fmt == "json":
        # Records with ISO dates and null for missing values: what jq and pandas.read_json expect.
        text = frame.to_json(orient="records", date_format="iso", indent=1) + "\n"
    else:
        text = None
    if to_stdout:
        sys.stdout.write(text or "")
        return len(frame)
    path = Path(out)
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
