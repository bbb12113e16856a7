"""Weights & Biases, one run per trial, that can never fail or stall the trial it watches.

A run is named after the trial's configuration, grouped by study, and carries the full resolved
configuration as its config, so W&B's own parallel-coordinates and importance panels work across
a study. Its id is kept in the trial's user attrs (`wandb_run_id`); a trial re-queued after a dead
or preempted worker carries the id along and continues the same run (`resume="allow"`).

Without an API key, or when W&B cannot be reached, runs are written offline (`wandb sync` uploads
them later). Every wandb call is guarded: an error turns tracking off for that trial (or, if W&B
cannot start at all, for the worker) with one warning, and the trial carries on.
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import optuna

from hpsearch import schema
from hpsearch.metrics import key_of
from hpsearch.redact import mask
from hpsearch.training.tracking_metrics import confusion_chart, gradient_norms

if TYPE_CHECKING:
    from hpsearch.spec.model import StudySpec

log = logging.getLogger("hpsearch.tracking")

DEFAULT_PROJECT = "hpsearch"
INIT_TIMEOUT = 30.0  # seconds wandb.init may take before we write offline instead
FINISH_TIMEOUT = 60.0  # seconds run.finish may spend uploading; the rest stays on disk for `wandb sync`
PREEMPTED_EXIT = 143  # 128 + SIGTERM: W&B shows the run as stopped, not finished; the retry resumes it
_MODES = {"online", "offline", "disabled", "shared"}
_EPOCH_KEYS = ("train/*", "val/*", "grad_norm/*", "lr", "epoch_time")


@dataclass
class _Process:
    """What one worker process learned about W&B; it outlives single trials."""

    forced_mode: str | None = None  # "offline" once an online start failed
    disabled: bool = False  # W&B could not start even offline: no tracking in this worker
    announced: bool = False
    warned: set[str] = field(default_factory=set)


_PROCESS = _Process()


def _warn_once(key: str, message: str) -> None:
    if key not in _PROCESS.warned:
        _PROCESS.warned.add(key)
        log.warning("%s", mask(message))


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return mask(f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300])


# ---------------------------------------------------------------- settings


@dataclass
class RunSettings:
    project: str
    entity: str | None
    mode: str
    dir: str | None
    tags: list[str]
    init_timeout: float
    finish_timeout: float
    gradients: bool


def resolve_settings(spec: StudySpec, opts: dict[str, Any] | None) -> RunSettings:
    """Command line (--wandb-project/--wandb-entity) over the spec's `tracking:` over defaults."""
    cfg = dict(spec.tracking or {})
    opts = opts or {}
    return RunSettings(
        project=str(opts.get("project") or cfg.get("project") or DEFAULT_PROJECT),
        entity=opts.get("entity") or cfg.get("entity") or os.environ.get("WANDB_ENTITY") or None,
        mode=choose_mode(cfg.get("mode")),
        dir=cfg.get("dir") or None,
        tags=[str(t) for t in cfg.get("tags", []) or []],
        init_timeout=float(cfg.get("init_timeout", INIT_TIMEOUT)),
        finish_timeout=float(cfg.get("finish_timeout", FINISH_TIMEOUT)),
        gradients=bool(cfg.get("gradients", True)),
    )


def choose_mode(spec_mode: str | None) -> str:
    """WANDB_MODE (set per cluster or job) over the spec's mode; else online only with a key."""
    for mode in (os.environ.get("WANDB_MODE"), spec_mode):
        if mode:
            mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
            if mode in _MODES:
                return mode
    return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    """A key in the environment or a `wandb login` entry in ~/.netrc; never asks the network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


# ---------------------------------------------------------------- the interface the worker uses


def start_run(trial: optuna.Trial, spec: StudySpec, opts: dict[str, Any] | None = None) -> WandbTracker | None:
    """Start (or resume) the trial's run; None when tracking is off or W&B cannot start."""
    cfg = spec.tracking
    if not cfg or os.environ.get("HPSEARCH_TRACKING", "on") == "off" or _PROCESS.disabled:
        return None
    if cfg.get("backend", "wandb") != "wandb":
        _warn_once("backend", f"tracking backend {cfg.get('backend')!r} is not supported (only wandb); tracking is off")
        return None
    try:
        settings = resolve_settings(spec, opts)
    except (TypeError, ValueError) as exc:
        _warn_once("settings", f"tracking settings of the spec are invalid ({_reason(exc)}); tracking is off")
        return None
    if settings.mode == "disabled":
        return None
    tracker = WandbTracker(trial, spec, settings)
    return tracker if tracker.start() else None


class WandbTracker:
    """One trial's run. Every public method swallows W&B errors: tracking is never the trial's problem."""

    def __init__(self, trial: optuna.Trial, spec: StudySpec, settings: RunSettings) -> None:
        self.trial = trial
        self.spec = spec
        self.settings = settings
        self.run: Any = None
        self.mode = settings.mode
        self._named = False  # the configuration (name, config) is known and sent
        self._step = 0
        self._closed = False

    # --- start -----------------------------------------------------------------------------

    def start(self) -> bool:
        try:
            import wandb
        except Exception as exc:  # noqa: BLE001 - a broken wandb install must not fail trials
            _PROCESS.disabled = True
            _warn_once("import", f"cannot import wandb ({_reason(exc)}); W&B tracking is off for this worker")
            return False
        attrs = self._attrs()
        run_id = str(attrs.get(schema.RUN_ID) or uuid.uuid4().hex[:12])
        if schema.RUN_ID not in attrs:
            # Before init: a retry of this trial must find the id even if this worker dies early.
            try:
                self.trial.set_user_attr(schema.RUN_ID, run_id)
            except Exception as exc:  # noqa: BLE001 - the storage's trouble surfaces in the worker
                _warn_once("run id", f"could not keep the W&B run id with the trial ({_reason(exc)})")
        try:
            self.run = self._init(wandb, run_id, attrs)
        except Exception as exc:  # noqa: BLE001 - wandb raises many types; all mean "no run"
            _PROCESS.disabled = True
            _warn_once("init", f"W&B could not start a run ({_reason(exc)}); tracking is off for this worker")
            return False
        self._guard("define metrics", self._define_metrics)
        self._announce()
        return True

    def _init(self, wandb: Any, run_id: str, attrs: dict[str, Any]) -> Any:
        mode = _PROCESS.forced_mode or self.mode
        try:
            return self._init_mode(wandb, run_id, attrs, mode)
        except Exception as exc:
            if mode != "online":
                raise
            _warn_once("online", f"W&B is unreachable ({_reason(exc)}); this worker writes its runs offline "
                       "(upload them later with `wandb sync`)")
            _PROCESS.forced_mode = "offline"
            # The failed start leaves the run id registered in wandb's service; reset it.
            _call_quietly(wandb.teardown)
            return self._init_mode(wandb, run_id, attrs, "offline")

    def _init_mode(self, wandb: Any, run_id: str, attrs: dict[str, Any], mode: str) -> Any:
        s = self.settings
        if s.dir:
            Path(s.dir).mkdir(parents=True, exist_ok=True)
        name, config = self._identity(attrs)
        self._named = schema.CONFIG in attrs
        with _argv_masked():
            run = wandb.init(
                project=s.project, entity=s.entity, group=self.trial.study.study_name, job_type="trial",
                name=name, id=run_id, resume="allow", config=config, tags=["hpsearch", *s.tags], dir=s.dir,
                # create_new: a worker training fused trials (hpsearch.worker.fused) has one run open per
                # member at once; finish_previous would end the other members' runs.
                mode=mode, reinit="create_new",
                # console off: the worker's output interleaves trials; silent: one line per worker, not per trial.
                # No job artifact: it would record the command line again, at finish time.
                settings=wandb.Settings(init_timeout=s.init_timeout, finish_timeout=s.finish_timeout,
                                        console="off", silent=True, disable_job_creation=True),
            )
        self.mode = mode
        return run

    def _define_metrics(self) -> None:
        # Epoch is the x axis, so a resumed run continues the same curves.
        self.run.define_metric("epoch")
        for key in _EPOCH_KEYS:
            self.run.define_metric(key, step_metric="epoch")

    def _announce(self) -> None:
        if _PROCESS.announced or self.run is None:
            return
        _PROCESS.announced = True
        root = Path(self.run.dir).parent.parent
        if self.mode == "offline":
            print(f"W&B: runs are written offline under {root}; upload them with: wandb sync {root}/offline-run-*",
                  flush=True)
        else:
            print(f"W&B: project {self.settings.project}, group {self.trial.study.study_name} ({self.mode})",
                  flush=True)

    # --- per epoch, at the end -------------------------------------------------------------

    def log_epoch(self, rec: dict[str, Any], model: Any = None) -> None:
        self._guard("log an epoch", self._log_epoch, rec, model)

    def _log_epoch(self, rec: dict[str, Any], model: Any) -> None:
        if self.run is None:
            return
        if not self._named:
            self._send_identity()
        epoch = int(rec["epoch"])
        row: dict[str, Any] = {
            "epoch": epoch,
            "train/loss": rec.get("train_loss"), "train/acc": rec.get("train_acc"),
            "val/loss": rec.get("val_loss"), "val/acc": rec.get("val_acc"),
            "lr": rec.get("lr"), "epoch_time": rec.get("epoch_time"),
        }
        if model is not None and self.settings.gradients:
            row.update(gradient_norms(model))
        # A resumed online run refuses steps it has already seen; never go backwards.
        self._step = max(epoch, int(getattr(self.run, "step", 0) or 0), self._step + 1)
        self.run.log({k: v for k, v in row.items() if v is not None}, step=self._step)

    def log_test(self, test: dict[str, Any], class_names: list[str] | None = None) -> None:
        self._guard("log the test result", self._log_test, test, class_names)

    def _log_test(self, test: dict[str, Any], class_names: list[str] | None) -> None:
        if self.run is None:
            return
        row: dict[str, Any] = {"test/acc": test.get("acc"), "test/loss": test.get("loss")}
        matrix = test.get("confusion")
        if matrix:
            names = [str(c) for c in (class_names or range(len(matrix)))]
            row["test/confusion_matrix"] = confusion_chart(matrix, names)
            self.run.summary["test/confusion"] = matrix
        # Same step as the last epoch: the test result belongs to the trained model, not to a new epoch.
        self.run.log({k: v for k, v in row.items() if v is not None}, step=self._step or None)

    def finish(self, state: str = "complete") -> None:
        self._close(state, "complete" if state == "complete" else state.split()[0], exit_code=0)

    def finish_error(self, exc: BaseException) -> None:
        """Pruned -> finished as pruned; preempted/interrupted -> left to resume; else failed with reason."""
        try:
            attrs = self._attrs()
        except Exception:  # noqa: BLE001
            attrs = {}
        if isinstance(exc, optuna.TrialPruned):
            epoch = attrs.get(schema.PRUNED_AT_EPOCH)
            self._close(f"pruned at epoch {epoch}" if epoch is not None else "pruned", "pruned", exit_code=0)
        elif _is_preempted(exc):
            epoch = int(attrs.get(schema.CHECKPOINT_EPOCH, 0) or 0)
            self._close(f"preempted; resumes from epoch {epoch}", "preempted", exit_code=PREEMPTED_EXIT,
                        preempting=True)
        else:
            self._close(f"failed: {_reason(exc)}", "failed", exit_code=1)

    def _close(self, state: str, kind: str, exit_code: int, preempting: bool = False) -> None:
        if self._closed or self.run is None:
            return
        self._closed = True
        run = self.run
        self._guard("record the final state", self._summarize, state, kind)
        if preempting and self.run is not None:
            self._guard("mark the run preempting", run.mark_preempting)
        if self.run is not None:  # (a failed step above has already closed it)
            self._guard("finish the run", run.finish, exit_code=exit_code)
        self.run = None

    def _summarize(self, state: str, kind: str) -> None:
        attrs = self._attrs()
        if not self._named and schema.CONFIG in attrs:
            self._send_identity(attrs)
        summary: dict[str, Any] = {
            "state": state, "optuna/state": kind, "optuna/trial_number": self.trial.number,
            "optuna/study": self.trial.study.study_name,
        }
        for key in (schema.VAL_ACC, schema.VAL_LOSS, schema.BEST_EPOCH, schema.PRUNED_AT_EPOCH, schema.FAIL_REASON):
            if attrs.get(key) is not None:
                summary[f"best/{key}" if key.startswith("val_") else key] = attrs[key]
        # Every objective the sampler saw, under its metric's name; `objective` (the first) is what W&B's
        # importance panel targets. A constrained study's runs say whether they met the bounds.
        for metric in self.spec.metrics:
            value = attrs.get(key_of(metric))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                summary[f"objective/{metric}"] = value
                summary.setdefault("objective", value)
        if attrs.get(schema.FEASIBLE) is not None:
            summary["feasible"] = attrs[schema.FEASIBLE]
            summary.update({f"constraint/{k}": v for k, v in (attrs.get(schema.CONSTRAINTS) or {}).items()})
        self.run.summary.update(summary)
        if kind != "complete":
            self.run.tags = (*self.run.tags, kind)

    # --- helpers ---------------------------------------------------------------------------

    def _attrs(self) -> dict[str, Any]:
        return dict(self.trial.user_attrs)

    def _identity(self, attrs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(run name, run config) from the trial: the resolved configuration once objective set it."""
        config = dict(attrs.get(schema.CONFIG) or {})
        if self.spec.objective is None and config:
            # Only the settings this trial's model, optimizer and schedule read: an Adam run's
            # `momentum` or a dense model's `filters` would be constant, meaningless axes in W&B's
            # parallel coordinates and importance panels. The trial's user attrs keep them all.
            # Imported here: it imports torch, which a user objective's worker never needs.
            from hpsearch.training.used import used_config

            config = used_config(config)
        name = str(attrs.get(schema.NAME) or f"trial-{self.trial.number}")
        if self.spec.repeats > 1 and "seed" in config:
            name = f"{name}_seed_{config['seed']}"  # repeats share a configuration; keep runs apart
        config.update({"trial_number": self.trial.number, "study": self.trial.study.study_name})
        # How it was computed (threads, device, fused group, releases): why a rerun may differ.
        for key in (schema.CONFIG_ID, schema.RETRY_OF, schema.REPEAT_OF, *schema.COMPUTE):
            if attrs.get(key) is not None:
                config[key] = attrs[key]
        return name, config

    def _send_identity(self, attrs: dict[str, Any] | None = None) -> None:
        attrs = attrs if attrs is not None else self._attrs()
        if schema.CONFIG not in attrs:
            return
        name, config = self._identity(attrs)
        self.run.name = name
        self.run.config.update(config, allow_val_change=True)
        self._named = True

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking errors never reach the trial
            _warn_once(f"call:{what}", f"W&B: could not {what} ({_reason(exc)}); tracking stops for this trial")
            run, self.run = self.run, None
            if run is not None and what != "finish the run":
                _call_quietly(run.finish, exit_code=1)
            return None


@contextlib.contextmanager
def _argv_masked() -> Iterator[None]:
    """W&B copies sys.argv into the run's metadata (wandb-metadata.json, synced with the run).

    `hpsearch worker` has already masked it (cli.main); this covers workers embedded in a script
    whose own command line holds a storage URL.
    """
    saved = sys.argv[:]
    sys.argv[:] = [mask(a) for a in saved]
    try:
        yield
    finally:
        sys.argv[:] = saved


def _call_quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - cleanup after an error already reported once
        pass


def _is_preempted(exc: BaseException) -> bool:
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return True  # the worker hands such a trial back too
    from hpsearch.objective import Preempted

    return isinstance(exc, Preempted)
