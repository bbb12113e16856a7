"""The `hpsearch` command: the only place that turns errors into one line and an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hpsearch.errors import HpsearchError
from hpsearch.storage import MaskingFilter, mask

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return deco


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="postgresql://user:pass@host/db, sqlite:///file, grpc://host:port or a journal "
                   "file path (default: $HPSEARCH_STORAGE, else .hpsearch/journal.log)")


def worker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name in the storage")
    _storage_arg(p)
    p.add_argument("--n-trials", type=int, help="stop after this many trials of this worker")
    p.add_argument("--timeout", type=float, help="stop claiming new trials after this many seconds")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda:K")
    p.add_argument("--heartbeat", type=int, default=int(os.environ.get("HPSEARCH_HEARTBEAT", "30")),
                   help="heartbeat interval in seconds; a trial silent for 1.5 intervals is re-queued")
    p.add_argument("--max-failures", type=int, default=5, help="stop after this many failed trials in a row")
    p.add_argument("--seed", type=int, help="sampler seed of this worker (default: random per worker)")
    p.add_argument("--stop-timeout", type=float, default=60.0, help="seconds to hand a trial back on SIGTERM")
    p.add_argument("--checkpoint-every", type=float, default=float(os.environ.get("HPSEARCH_CHECKPOINT_EVERY", "30")),
                   help="seconds between epoch checkpoints (0: every epoch); a resumed trial loses at most this")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.add_argument("--wandb-project", help="W&B project (default: the spec's tracking.project)")
    p.add_argument("--wandb-entity", help="W&B entity")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpsearch", description="Hyperparameter search on Optuna: specs, shared "
                                     "storage, stateless workers, reports.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("create-study", help="validate a spec and create its study (idempotent)")
    p.add_argument("spec", help="YAML study spec")
    _storage_arg(p)
    p.add_argument("--name", help="study name (default: the spec's name)")
    p.add_argument("--sampler", help="override the spec's sampler: grid, random, tpe, qmc")
    p.add_argument("--pruner", help="override the spec's pruner: none, median, percentile, successive_halving, hyperband")
    p.add_argument("--replace", action="store_true", help="delete an existing study of that name and its trials first")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec field, e.g. --set dataset.root=/data --set train.epochs=1 (repeatable)")

    p = sub.add_parser("worker", help="run trials of a study until it is done")
    worker_arguments(p)

    p = sub.add_parser("status", help="counts by state, best so far, throughput")
    p.add_argument("study")
    _storage_arg(p)
    p.add_argument("--watch", action="store_true", help="refresh a live table until the study is done")
    p.add_argument("--interval", type=float, default=2.0, help="refresh interval for --watch")
    p.add_argument("--json", action="store_true", help="print the status as JSON (keys in the README)")

    p = sub.add_parser("best", help="the top configurations with validation and test metrics")
    p.add_argument("study")
    _storage_arg(p)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print the configurations as JSON (keys in the README)")

    p = sub.add_parser("list", help="studies in a storage")
    _storage_arg(p)
    p.add_argument("--json", action="store_true", help="print the studies as JSON (keys in the README)")

    p = sub.add_parser("launch", help="start workers: local processes, or a SLURM/PBS job array")
    p.add_argument("target", choices=["local", "slurm", "pbs"])
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dry-run", action="store_true", help="print the job script instead of submitting it")
    p.add_argument("--heartbeat", type=int, default=int(os.environ.get("HPSEARCH_HEARTBEAT", "30")))
    p.add_argument("--device", default="auto")
    p.add_argument("--gpus-per-worker", type=int, default=1, help="for slurm/pbs")
    p.add_argument("--time", default="24:00:00", help="wall time per array task (slurm/pbs)")
    p.add_argument("--cpus-per-worker", type=int, help="CPUs per array task (default: the template's)")
    p.add_argument("--mem", help="memory per array task, e.g. 32G (default: the template's)")
    p.add_argument("--partition", "--queue", dest="partition", help="SLURM partition or PBS queue")
    p.add_argument("--account", help="SLURM account or PBS project (-A)")

    p = sub.add_parser("dashboard", help="optuna-dashboard on the storage (loopback by default)")
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--read-only", action="store_true", help="refuse every write request (delete, tell, notes)")
    p.add_argument("--auth", help="USER:PASSWORD for basic auth, or a bare token for 'Authorization: Bearer'")

    _extension_parsers(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from hpsearch import __version__

    try:
        optuna = version("optuna")
    except PackageNotFoundError:
        optuna = "not installed"
    return f"hpsearch {__version__} (optuna {optuna}, Python {sys.version.split()[0]})"


def _extension_parsers(sub: Any) -> None:
    """Commands owned by other modules (report, repeat, export, proxy) add themselves here."""
    for module in ("hpsearch.report_cli", "hpsearch.scale_cli"):
        try:
            mod = __import__(module, fromlist=["add_parsers"])
        except ImportError:
            continue
        mod.add_parsers(sub, command, _storage_arg)


def main(argv: Sequence[str] | None = None) -> int:
    _setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except HpsearchError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"hpsearch: error: {mask(line)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hpsearch: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user; HPSEARCH_DEBUG=1 shows it
        if os.environ.get("HPSEARCH_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"hpsearch: error: {type(exc).__name__}: {mask(first)} (HPSEARCH_DEBUG=1 for details)", file=sys.stderr)
        return 1


def _setup_logging() -> None:
    level = logging.DEBUG if os.environ.get("HPSEARCH_DEBUG") else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(MaskingFilter())
    handler.setFormatter(logging.Formatter("hpsearch: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    import warnings

    warnings.filterwarnings("ignore", module="optuna")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*experimental.*")


# ---------------------------------------------------------------- commands


@command("create-study")
def _create_study(args: argparse.Namespace) -> int:
    from hpsearch import study as study_mod
    from hpsearch.spec import load_spec
    from hpsearch.storage import artifact_location, open_storage, resolve_url

    overrides = {"name": args.name, "sampler": args.sampler, "pruner": args.pruner}
    spec = load_spec(args.spec, overrides, args.set)  # validate everything before touching the storage
    url = resolve_url(args.storage)
    storage = open_storage(url, create=True)
    _, message = study_mod.create(spec, storage, replace=args.replace, artifacts=artifact_location(url))
    print(message)
    print(f"run workers with: python worker.py --study {spec.name}" + _storage_hint(args.storage))
    return 0


def _storage_hint(storage: str | None) -> str:
    return f" --storage {mask(storage)}" if storage else ""


@command("worker")
def _worker(args: argparse.Namespace) -> int:
    from hpsearch.worker import Options, run_worker

    tracking = {k: v for k, v in {"project": args.wandb_project, "entity": args.wandb_entity}.items() if v}
    opts = Options(
        study=args.study, storage=args.storage, n_trials=args.n_trials, timeout=args.timeout, device=args.device,
        heartbeat=args.heartbeat, max_failures=args.max_failures, seed=args.seed, stop_timeout=args.stop_timeout,
        checkpoint_every=args.checkpoint_every, quiet=args.quiet, tracking=tracking,
    )
    return run_worker(opts)


@command("status")
def _status(args: argparse.Namespace) -> int:
    from hpsearch import status

    if args.watch and args.json:
        raise HpsearchError("--watch and --json do not go together: --json prints one snapshot")
    if args.watch:
        return status.watch(args.study, args.storage, args.interval)
    status.print_status(args.study, args.storage, as_json=args.json)
    return 0


@command("best")
def _best(args: argparse.Namespace) -> int:
    from hpsearch.report_best import print_best

    print_best(args.study, args.storage, args.top, as_json=args.json)
    return 0


@command("list")
def _list(args: argparse.Namespace) -> int:
    from hpsearch import status

    status.print_list(args.storage, as_json=args.json)
    return 0


@command("launch")
def _launch(args: argparse.Namespace) -> int:
    from hpsearch import launch

    if args.target == "local":
        return launch.local(args.study, args.storage, args.workers, heartbeat=args.heartbeat, device=args.device)
    return launch.cluster(args.target, args)


@command("dashboard")
def _dashboard(args: argparse.Namespace) -> int:
    from hpsearch import dashboard

    return dashboard.serve(args.storage, args.host, args.port, read_only=args.read_only, auth=args.auth)


if __name__ == "__main__":
    sys.exit(main())
