"""`hpsearch stop`, `resume` and `delete`: added to the CLI by cli/main.py."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from hpsearch.errors import HpsearchError

Command = Callable[[argparse.Namespace], int]


def add_parsers(sub: Any, command: Callable[[str], Callable[[Command], Command]],
                storage_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("stop", help="stop a study: its workers finish their running trial and exit; nothing new "
                       "is claimed (resume with `hpsearch resume`)")
    p.add_argument("study")
    storage_arg(p)
    command("stop")(_stop)

    p = sub.add_parser("resume", help="undo `hpsearch stop`: workers started from now on claim trials again")
    p.add_argument("study")
    storage_arg(p)
    command("resume")(_resume)

    p = sub.add_parser("delete", help="delete a study, its trials and its checkpoints (asks first)")
    p.add_argument("study")
    storage_arg(p)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask (needed when stdin is not a terminal)")
    command("delete")(_delete)


def _load(args: argparse.Namespace) -> tuple[Any, str]:
    from hpsearch.queue import study as study_mod
    from hpsearch.storage.backend import open_storage, resolve_url

    url = resolve_url(args.storage)
    return study_mod.load(args.study, open_storage(url)), url


def _stop(args: argparse.Namespace) -> int:
    from hpsearch.ops import lifecycle

    study, _ = _load(args)
    print(lifecycle.stop(study))
    return 0


def _resume(args: argparse.Namespace) -> int:
    from hpsearch.ops import lifecycle

    study, _ = _load(args)
    print(lifecycle.resume(study))
    return 0


def _delete(args: argparse.Namespace) -> int:
    from hpsearch.ops import lifecycle

    if not args.yes and not sys.stdin.isatty():
        # Checked before the storage is touched: a script must say what it means.
        raise HpsearchError(f"delete must be confirmed with --yes when stdin is not a terminal, but got "
                            f"hpsearch delete {args.study} without it")
    study, url = _load(args)
    held = lifecycle.counts(study)
    if not args.yes:
        running = f", {held.running} running" if held.running else ""
        answer = input(f"delete study {args.study!r} ({held.trials} trials{running}) and its checkpoints? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted")
            return 0  # as `rm -i` does: declining is an answer, not an error
    held, removed = lifecycle.delete(study, url)
    note = f", {removed} checkpoint{'s' if removed != 1 else ''} removed" if removed else ""
    warn = (f"; its {held.running} running trial{'s' if held.running != 1 else ''}' workers stop with an error"
            if held.running else "")
    print(f"deleted study {args.study!r} ({held.trials} trials{note}){warn}")
    return 0
