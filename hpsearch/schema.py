"""The schema of every attribute hpsearch stores on a study or a trial: its key, type and meaning.

Code reads and writes these keys through the constants below, never as string literals, so a
key is spelled once and a reader (report, export, status, W&B, the dashboard) finds every field
here. The keys are part of the stored data: a study created by an earlier release keeps working
only while they stay as they are, so they are never renamed.

Study user attributes carry the `hpsearch:` prefix (they sit beside the user's own); trial user
attributes are plain (they are what the dashboard, `export` and W&B show). The trial system
attributes are Optuna's own, written so that Optuna's retry callback reads hpsearch's lineage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Attr:
    key: str
    on: Literal["study", "trial", "trial system"]
    type: Any
    meaning: str


SCHEMA: dict[str, Attr] = {}


def _attr(key: str, on: Literal["study", "trial", "trial system"], type_: Any, meaning: str) -> str:
    assert (on, key) not in {(a.on, a.key) for a in SCHEMA.values()}, key
    SCHEMA[f"{on}:{key}"] = Attr(key, on, type_, meaning)
    return key


# --- study user attributes ---------------------------------------------------------------------
SPEC_ATTR = _attr("hpsearch:spec", "study", dict, "the validated spec as a plain dict; workers read only this")
HASH_ATTR = _attr("hpsearch:spec_hash", "study", str, "hash of the spec: create-study is idempotent on it")
READY_ATTR = _attr("hpsearch:ready", "study", bool, "set last by create-study: the plan's first chunk is in")
CREATED_ATTR = _attr("hpsearch:created", "study", float, "unix time create-study stored the study")
PLANNED_ATTR = _attr("hpsearch:planned", "study", int, "planned trials (grid points x repeat seeds, or the budget)")
ISSUED_ATTR = _attr("hpsearch:issued", "study", int, "how many planned trials have been enqueued so far")
CLASS_COUNTS_ATTR = _attr("hpsearch:class_counts", "study", dict,
                          "per-split class histograms and class names (the report's baselines)")
ARTIFACTS_ATTR = _attr("hpsearch:artifacts", "study", str,
                       "absolute location of checkpoints, so a retry started elsewhere resumes")
INSTANCE_ATTR = _attr("hpsearch:instance", "study", str,
                      "random token of this creation of the study: its checkpoints' names carry it, so "
                      "delete finds them all, also one a worker killed mid-write left unnamed by any trial")
STOPPED_ATTR = _attr("hpsearch:stopped", "study", str,
                     "ISO time `hpsearch stop` asked workers to claim nothing more ('' after resume)")

# --- trial user attributes: identity and lineage ------------------------------------------------
PLAN_INDEX = _attr("plan_index", "trial", int, "position in the study's plan (grid point x seed)")
SEED = _attr("seed", "trial", int, "the training seed of this run")
CONFIG_ID = _attr("config_id", "trial", str, "hash of the searched parameters: the configuration's identity")
NAME = _attr("name", "trial", str, "short human name of the configuration")
CONFIG = _attr("config", "trial", dict, "the exact resolved training configuration")
RETRY_OF = _attr("retry_of", "trial", int, "number of the original trial this one retries")
RETRY_HISTORY = _attr("retry_history", "trial", list, "numbers of the trials this one retries, oldest first")
RETRY_REASON = _attr("retry_reason", "trial", str, "why the trial it retries ended (stale, preempted, ...)")
REPEAT_OF = _attr("repeat_of", "trial", int, "number of the trial whose configuration this one repeats")
WARM_START = _attr("warm_start_of", "trial", str, "the study, trial and rank of the configuration a warm start began with")
IS_REPEAT = _attr("is_repeat", "trial", bool, "queued by `hpsearch repeat`: runs unpruned")
REPEATS_ENQUEUED = _attr("repeats_enqueued", "trial", bool, "its configuration's repeat seeds are queued")
CRASHES = _attr("hpsearch:crashes", "trial", int, "times this configuration x seed lost its worker")
RETRY_EXHAUSTED = _attr("retry_exhausted", "trial", bool, "a failure not retried again: it crashed workers too often")
DUPLICATE_OF = _attr("duplicate_of", "trial", int,
                     "the trial whose sampled configuration and seed this one drew again: not trained, no seed of it")

# --- trial user attributes: the worker running it -----------------------------------------------
WORKER = _attr("worker", "trial", str, "host:pid:token of the worker that ran it")
DEVICE = _attr("device", "trial", str, "torch device it trained on")
BEAT = _attr("hpsearch:beat", "trial", float, "last heartbeat (unix time) where the storage has no heartbeat table")
BEAT_INTERVAL = _attr("hpsearch:heartbeat_interval", "trial", float, "its worker's heartbeat interval (s)")
DURATION_S = _attr("duration_s", "trial", float, "wall time from claim to the end")
SERVICE_S = _attr("service_s", "trial", float, "storage time on its critical path (claim, reports, attrs)")
FAIL_REASON = _attr("fail_reason", "trial", str, "why it failed (the first line a user reads)")
DIVERGENT = _attr("divergent", "trial", bool, "its loss became non-finite")
TRACEBACK = _attr("traceback", "trial", str, "the last 4,000 characters of the failure's traceback")
RUN_ID = _attr("wandb_run_id", "trial", str, "its Weights & Biases run, resumed by a retry")
# How it was computed: a rerun is bitwise equal only with the same threads and device (README).
THREADS = _attr("threads", "trial", int, "torch's intra-op threads while it trained")
FUSED = _attr("fused_group", "trial", int, "trials trained as one fused model with it (1: alone)")
TORCH_VERSION = _attr("torch_version", "trial", str, "the torch release it trained with")
HPSEARCH_VERSION = _attr("hpsearch_version", "trial", str, "the hpsearch release that ran it")
COMPUTE = (DEVICE, THREADS, FUSED, TORCH_VERSION, HPSEARCH_VERSION)

# --- trial user attributes: training (the built-in trainer) -------------------------------------
N_PARAMETERS = _attr("n_parameters", "trial", int, "trainable parameters of the model")
CURVE = _attr("curve", "trial", list, "per-epoch records: epoch, train/val loss and accuracy, lr, epoch_time")
EPOCHS_TRAINED = _attr("epochs_trained", "trial", int, "epochs trained by this run (after a resume: since it)")
BEST_EPOCH = _attr("best_epoch", "trial", int, "epoch of the best validation metric")
PRUNED_AT_EPOCH = _attr("pruned_at_epoch", "trial", int, "epoch the pruner stopped it")
EARLY_STOPPED_AT_EPOCH = _attr("early_stopped_at_epoch", "trial", int, "epoch patience stopped it")
RESUMED_FROM_EPOCH = _attr("resumed_from_epoch", "trial", int, "epoch of the checkpoint it resumed from")
CHECKPOINT = _attr("checkpoint", "trial", str, "artifact id of its last epoch checkpoint")
CHECKPOINT_EPOCH = _attr("checkpoint_epoch", "trial", int, "epoch of that checkpoint")
VAL_ACC = _attr("val_acc", "trial", float, "validation accuracy at the best epoch")
VAL_LOSS = _attr("val_loss", "trial", float, "validation loss at the best epoch")
TEST_ACC = _attr("test_acc", "trial", float, "test accuracy with the best epoch's weights (never used to choose)")
TEST_LOSS = _attr("test_loss", "trial", float, "test loss with the best epoch's weights")
CONFUSION_MATRIX = _attr("confusion_matrix", "trial", list, "test confusion matrix (rows: true class)")
TRAIN_TIME_S = _attr("train_time_s", "trial", float, "seconds from the first epoch to the test evaluation")
LATENCY_MS = _attr("latency_ms", "trial", float,
                   "median time of one forward pass of a batch of batch_size examples on its device, in ms")
FLOPS = _attr("flops", "trial", int, "floating-point operations of one example's forward pass (torch's FLOP counter)")

# --- trial user attributes: constraints (`constraints:` in the spec) ----------------------------
CONSTRAINTS = _attr("constraints", "trial", dict,
                    "each bound (METRIC.max, METRIC.min) as Optuna takes it: how far the metric is past it, "
                    "relative to the bound (<= 0: met)")
FEASIBLE = _attr("feasible", "trial", bool, "every constraint of the spec is met")

# --- trial system attributes (Optuna's own names, read by its retry callback) -------------------
FIXED_PARAMS = _attr("fixed_params", "trial system", dict, "the parameters an enqueued trial must take")
FAILED_TRIAL = _attr("failed_trial", "trial system", int, "number of the first trial of a retry chain")
SYSTEM_RETRY_HISTORY = _attr("retry_history", "trial system", list, "the same as the user attribute, for Optuna")
OPTUNA_CONSTRAINT = _attr("constraints:METRIC.BOUND", "trial system", float,
                          "the same constraint value, written by Optuna's Trial.set_constraint (its samplers read it)")

METRICS = (VAL_ACC, VAL_LOSS, TEST_ACC, TEST_LOSS)


def trial_keys() -> set[str]:
    """Every trial user attribute key hpsearch writes."""
    return {a.key for a in SCHEMA.values() if a.on == "trial"}
