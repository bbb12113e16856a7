"""The `hpsearch` command: the only place that turns errors into one line and an exit code."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

# Light imports only up to scrub_argv() in main(): a password given with --storage is visible in
# `ps` until then. hpsearch.storage.backend (optuna) is imported where it is used.
from hpsearch.errors import HpsearchError, StorageUnavailable
from hpsearch.redact import VISIBLE_WARNING, mask, scrub_argv, userinfo_problem
from hpsearch.spec.model import MAX_TRIAL_TIMEOUT

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
MAX_HEARTBEAT = 86400  # a day; beyond it threads' timers overflow and nobody would wait that long
MAX_SEED = 2**32 - 1  # what numpy's and torch's seeding accept


class _Parser(argparse.ArgumentParser):
    """argparse with one line per error (house style) instead of the usage block; exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"hpsearch: error: {mask(message)} (see: {self.prog} --help)\n")


def _number(integer: bool, low: float, high: float | None = None, above: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite int (or float) >= low (> low when `above`) and <= high."""
    what = "an integer" if integer else "a number"
    if high is not None:
        what += f" in {'(' if above else '['}{_text(low)}, {_text(high)}]"
    else:
        what += f" {'>' if above else '>='} {_text(low)}"

    def parse(text: str) -> Any:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = None
        if (value is None or not math.isfinite(value) or value < low or (above and value == low)
                or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"must be {what}, but got {text!r}")
        return value

    parse.describe = what  # type: ignore[attr-defined]
    return parse


def _text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE_INT = _number(True, 1)
POSITIVE = _number(False, 0, above=True)
NON_NEGATIVE = _number(False, 0)
HEARTBEAT = _number(True, 1, MAX_HEARTBEAT)
SEED = _number(True, 0, MAX_SEED)
PORT = _number(True, 0, 65535)

# Settings whose defaults come from the environment: read after parsing (a bad value must be one
# line naming the variable, and only for the commands that use it).
ENV_DEFAULTS = {"heartbeat": ("HPSEARCH_HEARTBEAT", "30", HEARTBEAT),
                "checkpoint_every": ("HPSEARCH_CHECKPOINT_EVERY", "30", NON_NEGATIVE)}


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
    p.add_argument("--fuse", type=_number(True, 1, 64), metavar="K",
                   help="train up to K compatible trials (grid points, seeds, retries) as one fused model; 1: one at "
                        "a time (default: $HPSEARCH_FUSE, else the spec's fuse:, else 8 on CPU and 16 on CUDA; near a study's "
                        "end a group takes only this worker's share of what is left)")
    _storage_arg(p)
    p.add_argument("--n-trials", type=POSITIVE_INT, help="stop after this many trials of this worker")
    p.add_argument("--timeout", type=POSITIVE, help="stop claiming new trials after this many seconds")
    p.add_argument("--trial-timeout", type=_number(False, 0, MAX_TRIAL_TIMEOUT, above=True), metavar="SECONDS",
                   help="a trial's time limit (default: the spec's trial_timeout, else none): past it the trial "
                        "is asked to stop and ends failed with the reason; one that does not stop within a grace "
                        "(10%% of the limit, 5-60 s) is ended by a watchdog and the worker restarts itself clean")
    p.add_argument("--device", default="auto", help="auto (CUDA when present: of several GPUs, the one the fewest workers "
                   "of this machine hold), cpu or cuda:K. Torch's threads: this worker's share of its CPUs among the "
                   "machine's live workers, re-read before each trial (HPSEARCH_THREADS fixes it)")
    p.add_argument("--heartbeat", type=HEARTBEAT, help="heartbeat interval in seconds, 1..86400 (default: "
                   "$HPSEARCH_HEARTBEAT, else 30); a trial silent for 1.5 intervals is re-queued")
    p.add_argument("--max-failures", type=POSITIVE_INT, default=5, help="stop after this many failed trials in a row")
    p.add_argument("--seed", type=SEED, help="sampler seed of this worker (default: random per worker)")
    p.add_argument("--stop-timeout", type=NON_NEGATIVE, default=60.0, help="seconds to hand a trial back on SIGTERM")
    p.add_argument("--checkpoint-every", type=NON_NEGATIVE,
                   help="seconds between epoch checkpoints (0: every epoch; default: $HPSEARCH_CHECKPOINT_EVERY, "
                   "else 30); a resumed trial loses at most this")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.add_argument("--wandb-project", help="W&B project (default: the spec's tracking.project)")
    p.add_argument("--wandb-entity", help="W&B entity")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpsearch", description="Hyperparameter search on Optuna: specs, shared "
                                     "storage, stateless workers, reports.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In this order in --help: a study's life (create, run, watch), then running it at scale.
    _study_parsers(sub)
    _reading_parsers(sub)
    _launch_parser(sub)
    _dashboard_parser(sub)
    _extension_parsers(sub)
    return parser


def _study_parsers(sub: Any) -> None:
    """create-study and worker: a study comes to exist, then workers run its trials."""
    p = sub.add_parser("create-study", help="validate a spec and create its study (idempotent)")
    p.add_argument("spec", help="YAML study spec")
    _storage_arg(p)
    p.add_argument("--name", help="study name (default: the spec's name)")
    p.add_argument("--sampler", help="override the spec's sampler: grid, random, tpe, qmc, gp, cmaes, nsga2, nsga3")
    p.add_argument("--pruner", help="override the spec's pruner: none, median, percentile, successive_halving, hyperband")
    p.add_argument("--replace", action="store_true", help="delete an existing study of that name and its trials first")
    p.add_argument("--warm-start", metavar="STUDY", help="begin with the best configurations of STUDY (same storage), "
                   "restricted to this spec's space; sampled studies only (the spec's warm_start: {from, top})")
    p.add_argument("--top", type=int, metavar="K", help="with --warm-start: how many of its best configurations (default 3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec field, e.g. --set dataset.root=/data --set train.epochs=1 (repeatable)")

    p = sub.add_parser("worker", help="run trials of a study until it is done")
    worker_arguments(p)


def _reading_parsers(sub: Any) -> None:
    """status, best and list: what the storage holds, read without changing it."""
    p = sub.add_parser("status", help="counts by state, best so far, throughput")
    p.add_argument("study")
    _storage_arg(p)
    p.add_argument("--watch", action="store_true", help="refresh a live table until the study is done")
    p.add_argument("--interval", type=float, default=2.0, help="refresh interval for --watch")
    p.add_argument("--json", action="store_true", help="print the status as JSON (keys in the README)")

    p = sub.add_parser("best", help="the top configurations with validation and test metrics")
    p.add_argument("study")
    _storage_arg(p)
    p.add_argument("--top", type=POSITIVE_INT, default=5)
    p.add_argument("--json", action="store_true", help="print the configurations as JSON (keys in the README)")

    p = sub.add_parser("list", help="studies in a storage")
    _storage_arg(p)
    p.add_argument("--json", action="store_true", help="print the studies as JSON (keys in the README)")

    p = sub.add_parser("catalog", help="what a spec can name: models, optimizers, datasets, losses, schedules, "
                       "activations, samplers, pruners")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module first, as a spec's `plugins:` does, and list what it registers too "
                   "(repeatable)")
    p.add_argument("--json", action="store_true", help="print {kind: [names]} as JSON")


def _launch_parser(sub: Any) -> None:
    p = sub.add_parser("launch", help="start workers: local processes, a SLURM/PBS job array or a Kubernetes Job")
    p.add_argument("target", choices=["local", "slurm", "pbs", "k8s"])
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.add_argument("--workers", type=int, default=2, help="worker processes in all (slurm/pbs: each array task "
                   "runs one per GPU, so --workers 8 --gpus-per-task 4 is 2 tasks)")
    p.add_argument("--dry-run", action="store_true", help="print the job script (k8s: the Job) instead of submitting it")
    p.add_argument("--heartbeat", type=HEARTBEAT, help="heartbeat interval of the workers in seconds, 1..86400 "
                   "(default: $HPSEARCH_HEARTBEAT, else 30)")
    p.add_argument("--device", default="auto")
    p.add_argument("--gpus-per-task", "--gpus-per-worker", dest="gpus_per_task", type=_number(True, 0), default=1, metavar="N",
                   help="slurm/pbs: GPUs per array task, which runs one worker per GPU (0: CPU tasks); "
                   "--gpus-per-worker is the old name; k8s: nvidia.com/gpu per pod, which runs one worker")
    p.add_argument("--max-running", type=POSITIVE_INT, metavar="K", help="slurm/pbs/k8s: at most this many array tasks "
                   "or pods at once (SLURM --array=0-N%%K, PBS -W max_run_subjobs=K, the Job's parallelism)")
    p.add_argument("--setup", action="append", default=[], metavar="CMD",
                   help="slurm/pbs: a shell command the job runs before its workers, e.g. 'module load cuda; "
                   "source venv/bin/activate' (repeatable, in order; a failing one stops the task)")
    p.add_argument("--time", default="24:00:00", help="wall time per array task (slurm/pbs): minutes (90), H:MM "
                   "(hours:minutes, for SLURM too), H:MM:SS, D-H, D-H:MM or D-H:MM:SS (default 24:00:00)")
    p.add_argument("--cpus-per-worker", type=POSITIVE_INT, help="CPUs per worker; an array task gets this times its "
                   "workers (default: the template's, which are per worker)")
    p.add_argument("--mem", help="memory per array task, e.g. 32G (default: the template's per-worker memory times "
                   "the task's workers)")
    p.add_argument("--partition", "--queue", dest="partition", help="SLURM partition or PBS queue")
    p.add_argument("--account", help="SLURM account or PBS project (-A)")
    p.add_argument("--image", help="k8s: the workers' image (default: the Job template's, hpsearch:latest as "
                   "docker-compose.yml builds it)")
    p.add_argument("--namespace", help="k8s: the Job's namespace (default: kubectl's)")
    p.add_argument("--secret", help="k8s: the Secret whose key `url` is the storage URL (default: hpsearch-storage)")
    p.add_argument("--stop-timeout", type=NON_NEGATIVE, help="k8s: seconds a worker has to hand its trial back on "
                   "SIGTERM (default 60); the pods' grace period is longer")


def _dashboard_parser(sub: Any) -> None:
    p = sub.add_parser("dashboard", help="optuna-dashboard on the storage (loopback and a token by default)")
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=PORT, default=8080)
    p.add_argument("--read-only", action="store_true", help="refuse every write request (delete, tell, notes) and say so in "
                   "the page (a banner; no delete or edit controls)")
    p.add_argument("--auth", help="USER:PASSWORD for basic auth, a bare token (8+ characters) for 'Authorization: "
                   "Bearer', or @FILE holding either (keeps the secret out of ps and shell history); default: "
                   "$HPSEARCH_DASHBOARD_AUTH. Over plain HTTP the password travels in clear: put TLS (a reverse "
                   "proxy) or an SSH tunnel in front. Without either: hpsearch's token ($HPSEARCH_TOKEN, else "
                   "~/.config/hpsearch/token, created when missing): open http://HOST:PORT/?token=TOKEN once")
    p.add_argument("--no-auth", action="store_true", help="DANGEROUS: no credential at all; every local user can read "
                   "(and unless --read-only, change and delete) the studies. For a machine with one user")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from hpsearch import __version__

    try:
        optuna = version("optuna")
    except PackageNotFoundError:
        optuna = "not installed"
    return f"hpsearch {__version__} (optuna {optuna}, Python {sys.version.split()[0]})"


def _extension_parsers(sub: Any) -> None:
    """Commands owned by other modules (report, repeat, export, proxy) add themselves here. They
    are part of hpsearch: one that does not import is a broken install, said as such (not four
    commands silently missing from --help)."""
    from hpsearch.cli import lifecycle, report
    from hpsearch.ops import proxy

    for mod in (report, lifecycle, proxy):
        mod.add_parsers(sub, command, _storage_arg)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)  # the real values, before they are masked
    # First thing: W&B records sys.argv with every run, and `ps` shows it to every local user.
    hidden = scrub_argv()
    _setup_logging()
    if hidden is False:
        logging.getLogger("hpsearch").warning(VISIBLE_WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_settings(args)
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
        lost = _lost_storage(args, exc)
        if lost:
            print(f"hpsearch: error: {lost}", file=sys.stderr)
            return StorageUnavailable.exit_code
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"hpsearch: error: {type(exc).__name__}: {mask(first)} (HPSEARCH_DEBUG=1 for details)", file=sys.stderr)
        return 1


def _lost_storage(args: argparse.Namespace, exc: BaseException) -> str | None:
    """A database that went away mid-command (an outage past HPSEARCH_DB_WAIT): one line naming it."""
    if not hasattr(args, "storage"):
        return None
    from hpsearch.storage.backend import resolve_url
    from hpsearch.storage.reconnect import lost_storage

    return lost_storage(exc, resolve_url(args.storage), args.command)


def _check_settings(args: argparse.Namespace) -> None:
    """Settings from the environment and the storage URL, checked before the command touches anything."""
    for dest, (env, default, parse) in ENV_DEFAULTS.items():
        if getattr(args, dest, False) is None:
            raw = os.environ.get(env, "") or default
            try:
                setattr(args, dest, parse(raw))
            except argparse.ArgumentTypeError as exc:
                raise HpsearchError(f"{env} {exc}") from None
    if hasattr(args, "storage"):
        from hpsearch.storage.reconnect import env_seconds

        for env, default in (("HPSEARCH_DB_WAIT", 600.0), ("HPSEARCH_CONNECT_WAIT", 120.0)):
            env_seconds(env, default)
        problem = userinfo_problem(args.storage or os.environ.get("HPSEARCH_STORAGE") or "")
        if problem:
            raise HpsearchError(problem)
    if args.command in ("create-study", "worker"):
        from hpsearch.queue.plan import chunk_size

        chunk_size()


def _setup_logging() -> None:
    from hpsearch.storage.backend import MaskingFilter

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
    from hpsearch.ops import warm
    from hpsearch.queue import plan as plan_mod
    from hpsearch.spec.loading import load_spec
    from hpsearch.storage.artifacts import artifact_location
    from hpsearch.storage.backend import open_storage, resolve_url

    overrides: dict[str, Any] = {"name": args.name, "sampler": args.sampler, "pruner": args.pruner}
    if args.top is not None and not args.warm_start:
        raise HpsearchError("--top goes with --warm-start STUDY, but got --top alone")
    if args.warm_start:
        overrides["warm_start"] = {"from": args.warm_start, **({"top": args.top} if args.top is not None else {})}
    spec = load_spec(args.spec, overrides, args.set)  # validate everything before touching the storage
    if spec.objective:
        from hpsearch.registry import load_plugin

        # Where create-study runs: a plugin that does not import here would fail every trial.
        load_plugin(spec.objective, "objective")
    url = resolve_url(args.storage)
    storage = open_storage(url, create=True)
    spec, warm_line = warm.resolve(spec, storage, reuse=not args.replace)  # chosen once, stored in the spec
    if args.replace:
        _remove_predecessors_checkpoints(spec.name, storage, url)
    _, message = plan_mod.create(spec, storage, replace=args.replace, artifacts=artifact_location(url))
    print(message)
    if warm_line:
        print(warm_line)
    print(f"run workers with: hpsearch worker --study {spec.name}" + _storage_hint(args.storage))
    return 0


def _remove_predecessors_checkpoints(name: str, storage: Any, url: str) -> None:
    """--replace deletes the study as `delete` does: its trials' checkpoints go too (they would
    otherwise stay on disk or S3 with nothing left that points at them)."""
    import optuna

    from hpsearch.ops import lifecycle

    try:
        old = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    lifecycle.remove_checkpoints(old, url)


def _storage_hint(storage: str | None) -> str:
    if storage and mask(storage) != storage:
        # A masked URL would not work, and the real one belongs in no command line.
        return " (with the storage URL in HPSEARCH_STORAGE)"
    return f" --storage {storage}" if storage else ""


@command("worker")
def _worker(args: argparse.Namespace) -> int:
    from hpsearch.worker.loop import Options, run_worker

    tracking = {k: v for k, v in {"project": args.wandb_project, "entity": args.wandb_entity}.items() if v}
    opts = Options(
        study=args.study, storage=args.storage, n_trials=args.n_trials, timeout=args.timeout, device=args.device,
        heartbeat=args.heartbeat, max_failures=args.max_failures, seed=args.seed, stop_timeout=args.stop_timeout,
        checkpoint_every=args.checkpoint_every, quiet=args.quiet, tracking=tracking, fuse=args.fuse,
        trial_timeout=args.trial_timeout, restart=True,
    )
    return run_worker(opts)


@command("status")
def _status(args: argparse.Namespace) -> int:
    from hpsearch.ops import status

    if args.watch and args.json:
        raise HpsearchError("--watch and --json do not go together: --json prints one snapshot")
    if args.watch:
        return status.watch(args.study, args.storage, args.interval)
    status.print_status(args.study, args.storage, as_json=args.json)
    return 0


@command("best")
def _best(args: argparse.Namespace) -> int:
    from hpsearch.report.best import print_best

    print_best(args.study, args.storage, args.top, as_json=args.json)
    return 0


@command("list")
def _list(args: argparse.Namespace) -> int:
    from hpsearch.ops import status

    status.print_list(args.storage, as_json=args.json)
    return 0


@command("catalog")
def _catalog(args: argparse.Namespace) -> int:
    import json

    from hpsearch.registry import import_plugin
    from hpsearch.spec.catalog import PLUGGABLE, catalogue

    for module in args.plugin:
        import_plugin(module)
    names = catalogue()
    if args.json:
        print(json.dumps(names, indent=2))
        return 0
    width = max(map(len, names)) + 1
    for kind, known in names.items():
        also = " (or your own: package.module:function)" if kind in PLUGGABLE else ""
        print(f"{kind + ':':<{width}} {', '.join(known)}{also}")
    return 0


@command("launch")
def _launch(args: argparse.Namespace) -> int:
    from hpsearch.ops import deploy, k8s, launch

    k8s.check_target_options(args)
    if args.target == "k8s":
        return k8s.launch(args)
    if args.target == "local":
        given = [o for o, v in (("--setup", args.setup), ("--max-running", args.max_running)) if v]
        if given:
            raise HpsearchError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for slurm/pbs jobs, but "
                                "got launch local (run a setup in this shell first)")
        return launch.local(args.study, args.storage, args.workers, heartbeat=args.heartbeat, device=args.device)
    return deploy.launch(args.target, args)


@command("dashboard")
def _dashboard(args: argparse.Namespace) -> int:
    from hpsearch.ops import dashboard

    return dashboard.serve(args.storage, args.host, args.port, read_only=args.read_only, auth=args.auth,
                           no_auth=args.no_auth)


if __name__ == "__main__":
    sys.exit(main())
