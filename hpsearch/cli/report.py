"""`hpsearch repeat`, `report` and `export`: added to the CLI by cli.py when this module exists.

Heavy libraries (scipy, matplotlib, plotly, pandas) are imported by the commands, not here, so
`hpsearch --help` and the worker stay fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Command = Callable[[argparse.Namespace], int]


def add_parsers(sub: Any, command: Callable[[str], Callable[[Command], Command]],
                storage_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("repeat", help="queue more seeds of the best, the set-aside or named configurations")
    p.add_argument("study")
    storage_arg(p)
    p.add_argument("--top", type=int, metavar="K", help="configurations to repeat (per group); with --set-aside, "
                   "the top K the set-aside table is taken from (default 5, as `best` and `report`)")
    p.add_argument("--set-aside", action="store_true",
                   help="repeat the configurations the set-aside table lists (a pruned or failed seed, but in the "
                        "top K on their surviving seeds): more seeds settle them")
    p.add_argument("--config", action="append", default=[], metavar="ID",
                   help="repeat this configuration: its config_id (or a unique prefix of 6+ characters) or its "
                        "name, as `best` prints them (repeatable)")
    p.add_argument("--seeds", type=int, required=True, metavar="S", help="new seeds per configuration")
    p.add_argument("--group-by", metavar="PARAM", help="take the top K of each value of this parameter")
    command("repeat")(_repeat)

    p = sub.add_parser("report", help="write DIR/report.md and DIR/report.html with tables and figures")
    p.add_argument("study")
    storage_arg(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--where", action="append", default=[], metavar="EXPR",
                   help='a filtered view, e.g. "test_acc < 0.15" or "val_acc > 0.95 and optimizer == adam" '
                        "(repeatable)")
    p.add_argument("--group-by", metavar="PARAM", help="best configurations per value of this parameter")
    p.add_argument("--top", type=int, default=5, help="configurations per group in the table (default 5)")
    p.add_argument("--level", type=float, default=0.9, help="confidence level of the intervals (default 0.9)")
    p.add_argument("--window", type=int, default=3,
                   help="under-trained: epochs looked back over (default 3)")
    p.add_argument("--min-gain", type=float, default=0.01,
                   help="under-trained: improvement over the window that counts (absolute for accuracy, "
                        "relative for a loss; default 0.01)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON instead of the summary line "
                   "(keys in the README)")
    command("report")(_report)

    p = sub.add_parser("export", help="one row per trial (params, metrics, state) as csv, parquet or json")
    p.add_argument("study")
    storage_arg(p)
    p.add_argument("--format", required=True, choices=["csv", "parquet", "json"])
    p.add_argument("--out", metavar="FILE", help="write this file (default: the data to stdout, messages to stderr; "
                   "parquet needs --out)")
    command("export")(_export)


def _open(name: str, storage: str | None) -> Any:
    from hpsearch.queue import study as study_mod
    from hpsearch.storage.backend import open_storage

    return study_mod.load(name, open_storage(storage))


def _repeat(args: argparse.Namespace) -> int:
    from hpsearch.ops.repeats import describe, queue_repeats
    from hpsearch.queue import study as study_mod
    from hpsearch.storage.backend import mask

    study = _open(args.study, args.storage)
    spec = study_mod.stored_spec(study)
    queued = queue_repeats(study, spec, args.top, args.seeds, args.group_by, set_aside_only=args.set_aside,
                           configs=tuple(args.config))
    for line in describe(queued, spec.metric, args.group_by):
        print(line)
    hint = f" --storage {mask(args.storage)}" if args.storage else ""
    print(f"run workers with: hpsearch worker --study {args.study}{hint}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from hpsearch.report.build import ReportOptions, summary_line, write_report

    study = _open(args.study, args.storage)
    opts = ReportOptions(where=args.where, group_by=args.group_by, top=args.top, level=args.level,
                         window=args.window, min_gain=args.min_gain)
    md, page, snap = write_report(study, args.out, opts)
    if args.json:
        import json

        print(json.dumps(_written(md, page, snap)))
    else:
        print(summary_line(md, page, snap))
    return 0


def _written(md: Any, page: Any, snap: Any) -> dict[str, Any]:
    """`report --json`: where the report went and what it was made of (keys in the README)."""
    states = snap.frame["state"].value_counts().to_dict() if len(snap.frame) else {}
    return {"study": snap.name, "markdown": str(md.resolve()), "html": str(page.resolve()),
            "figures": str(snap.figures.resolve()), "trials": len(snap.trials), "configurations": len(snap.configs),
            "taken": snap.taken, "running": int(states.get("running", 0)), "waiting": int(states.get("waiting", 0))}


def _export(args: argparse.Namespace) -> int:
    import sys

    from hpsearch.errors import HpsearchError
    from hpsearch.report.export import BINARY_TO_STDOUT, export
    from hpsearch.storage import bulk

    if args.format == "parquet" and args.out in (None, "-"):
        raise HpsearchError(BINARY_TO_STDOUT)  # before reading a possibly large study
    study = _open(args.study, args.storage)
    n = export(bulk.full_trials(study), args.format, args.out, names=study.metric_names)
    if args.out not in (None, "-"):
        # On stderr: stdout carries the data and nothing else, whatever --out says.
        print(f"wrote {n} trials to {args.out}", file=sys.stderr)
    return 0
