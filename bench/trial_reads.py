"""A trial's path from claim to COMPLETE: how often the storage reads it, and who calls whom.

    .venv/bin/python bench/trial_reads.py [--storage URL]   (default: a journal in a temporary folder)

One in-process worker runs studies/digits-quick.yaml (TPE, median pruner, 2 seeds, 20 tickets),
one trial at a time, one thread, W&B off. Counted on the storage class itself (below Optuna's
cache, so each count is a read that reached the storage):
- get_trial calls per trial, with the three places that make them;
- _get_trials calls per trial (Optuna's cache sync: what the sampler and the pruner read);
and, with a profile hook, every call from the trainer's modules (training/, objective, models,
space) into queue/ or worker/, by function: these are only the callables the worker hands the
trainer (its recorder, its should_stop check), never an import (tests/test_layers.py holds that).
On PostgreSQL pass --storage postgresql://USER@HOST/DB (a database of its own: the study is replaced).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update(WANDB_MODE="disabled", HPSEARCH_FUSE="1", HPSEARCH_THREADS="1")

import optuna  # noqa: E402

from hpsearch.queue import plan  # noqa: E402
from hpsearch.spec.loading import load_spec  # noqa: E402
from hpsearch.storage.backend import open_storage  # noqa: E402
from hpsearch.worker import loop  # noqa: E402
from hpsearch.worker.options import Options  # noqa: E402

READS = ("get_trial", "_get_trials", "get_all_trials", "get_best_trial")
TRAINER = ("hpsearch.training", "hpsearch.objective", "hpsearch.models", "hpsearch.space")
UP = ("hpsearch.queue", "hpsearch.worker")


def count_reads(storage_class: type, counts: collections.Counter, callers: collections.Counter) -> None:
    """Wrap the read methods where the storage class (or a base) defines them."""
    for cls in storage_class.__mro__:
        for name in READS:
            method = cls.__dict__.get(name)
            if method is None or getattr(method, "_counted", False):
                continue

            def counted(self: Any, *args: Any, _m: Any = method, _n: str = name, **kwargs: Any) -> Any:
                counts[_n] += 1
                if _n == "get_trial":
                    frames = traceback.extract_stack()[-4:-1]
                    callers[" < ".join(f"{f.name} ({Path(f.filename).name})" for f in reversed(frames))] += 1
                return _m(self, *args, **kwargs)

            counted._counted = True  # type: ignore[attr-defined]
            setattr(cls, name, counted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    url = args.storage or f"journal:{Path(tmp.name) / 'journal.log'}"
    spec = load_spec(ROOT / "studies" / "digits-quick.yaml", overrides={"name": "trial-reads"})
    plan.create(spec, open_storage(url, create=True), replace=True)
    counts: collections.Counter = collections.Counter()
    callers: collections.Counter = collections.Counter()
    count_reads(type(open_storage(url)), counts, callers)
    up: collections.Counter = collections.Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_back is not None:
            callee, caller = frame.f_globals.get("__name__", ""), frame.f_back.f_globals.get("__name__", "")
            if callee.startswith(UP) and caller.startswith(TRAINER):
                up[f"{caller} -> {callee}.{frame.f_code.co_name}"] += 1

    sys.setprofile(profile)
    try:
        loop.run_worker(Options(study="trial-reads", storage=url, device="cpu", quiet=True, checkpoint_every=0))
    finally:
        sys.setprofile(None)
    trials = optuna.load_study(study_name="trial-reads", storage=open_storage(url)).get_trials(deepcopy=False)
    n = len([t for t in trials if t.state.is_finished()])
    print(f"storage {url.split('@')[-1]}: {n} trials ended")
    for name in READS:
        if counts[name]:
            print(f"  {name}: {counts[name] / n:.2f} per trial")
    for where, k in callers.most_common():
        print(f"    get_trial {k / n:.2f} per trial from {where}")
    print(f"  calls from the trainer's modules into queue/ or worker/: {sum(up.values()) / n:.1f} per trial")
    for where, k in up.most_common():
        print(f"    {k / n:.1f} {where}")


if __name__ == "__main__":
    main()
