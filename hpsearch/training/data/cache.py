"""The tensor cache the workers of one machine share: a dataset already split and normalised.

Every worker used to load its dataset itself: for MNIST, seconds of importing torchvision,
reading the files and splitting and normalising in numpy, paid again by each process. The first
worker now saves the finished CPU tensors with torch.save; the next ones torch.load them with
mmap=True, so they import no torchvision, compute nothing, and share one copy of the pages
through the page cache.

- The key is a sha256 of the cache format, the code that builds the tensors, the numpy release,
  the dataset config, the resolved data root and the relative path, size and mtime of every
  source file: a changed file, option or loader never returns stale data.
- Files live in $HPSEARCH_DATA_CACHE, else <data root>/.hpsearch-cache, else
  ~/.cache/hpsearch/tensors; `HPSEARCH_DATA_CACHE=off` turns the cache off.
- An entry is written under a temporary name and renamed into place: a reader never sees half a
  file, two writers never mix theirs, and a file mapped by a reader is never changed under it (the
  rename leaves the reader's inode alone). The mapping is private (copy-on-write), so even an
  in-place write to a tensor stays in its process.
- The cap, HPSEARCH_DATA_CACHE_MAX_GB (8), bounds one entry and each directory: a larger dataset
  is not cached, and the least recently used entries go first when a directory grows past it.
- Anything wrong (no writable directory, a truncated or foreign file, a full disk) is a miss,
  logged at debug level, never an error: the worker loads the dataset as it always did.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mmap
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpsearch.training.data.registry import DATASET_SOURCES, data_root

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when what an entry holds changes
ENV_DIR = "HPSEARCH_DATA_CACHE"
ENV_MAX_GB = "HPSEARCH_DATA_CACHE_MAX_GB"
DEFAULT_MAX_GB = 8.0
MAX_SOURCE_FILES = 10_000  # beyond this, checking the sources would cost what the cache saves
STALE_TEMP_S = 3600.0  # a temporary file this old belongs to a writer that died (kill -9)
LOCK_WAIT_S = 600.0  # after this, build the dataset alongside a builder that seems stuck


@dataclass(frozen=True)
class Slot:
    """Where one dataset's entry is, or would be written: the key and the directories to try."""

    key: str
    dirs: tuple[Path, ...]

    @property
    def filename(self) -> str:
        return f"{self.key}.pt"


def slot(cfg: Mapping[str, Any], code: Iterable[Path]) -> Slot | None:
    """The slot of a dataset config, or None when it is not cached: the cache is off, the loader
    declares no sources (embedded data, plugins), or its sources cannot be checked (a file the
    loader will report missing, more than MAX_SOURCE_FILES files).

    `code` is the source files that turn the loader's arrays into tensors; they are part of the key.
    """
    dirs = directories(cfg)
    sources = DATASET_SOURCES.get(str(cfg.get("name")))
    if not dirs or sources is None:
        return None
    root = data_root(cfg)
    try:
        paths = sources(cfg)
        files = _fingerprint(paths, root)
        code_hash = hashlib.sha256(b"".join(Path(p).read_bytes() for p in code)).hexdigest()
    except Exception as exc:  # noqa: BLE001 - the loader itself reports a missing file, in its own words
        log.debug("tensor cache: not used for %s (%s)", cfg.get("name"), exc)
        return None
    if files is None:
        log.debug("tensor cache: not used for %s (more than %d source files)", cfg.get("name"), MAX_SOURCE_FILES)
        return None
    blob = json.dumps({"format": CACHE_FORMAT, "code": code_hash, "numpy": np.__version__,
                       "cfg": dict(cfg), "root": str(root.resolve()), "files": files},
                      sort_keys=True, default=str)
    return Slot(hashlib.sha256(blob.encode()).hexdigest(), dirs)


def directories(cfg: Mapping[str, Any]) -> tuple[Path, ...]:
    """Where entries are looked up, in order; written to the first that takes a file."""
    env = os.environ.get(ENV_DIR, "").strip()
    if env.lower() == "off":
        return ()
    first = Path(os.path.expandvars(env)).expanduser() if env else data_root(cfg) / ".hpsearch-cache"
    fallback = Path("~/.cache/hpsearch/tensors").expanduser()
    return (first,) if first == fallback else (first, fallback)


def _fingerprint(paths: Sequence[Path], root: Path) -> list[tuple[str, int, int]] | None:
    """(path, size, mtime_ns) of every file under `paths`; None past MAX_SOURCE_FILES."""
    out: list[tuple[str, int, int]] = []
    for top in paths:
        found = [top] if top.is_file() else _files_under(top, MAX_SOURCE_FILES - len(out))
        if found is None:
            return None
        if not found:
            out.append((_relative(top, root), -1, -1))  # missing: the loader may download it
        for p in found:
            st = p.stat()
            out.append((_relative(p, root), st.st_size, st.st_mtime_ns))
    return out


def _files_under(top: Path, limit: int) -> list[Path] | None:
    """The files under a folder in a stable order, or None as soon as there are more than `limit`."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames):
            found.append(Path(dirpath) / name)
            if len(found) > limit:
                return None
    return found


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)  # a file outside the root (an absolute dataset.path): its own name


def read(s: Slot, names: Sequence[str]) -> dict[str, Any] | None:
    """The entry in the first directory that holds a sound one, its tensors memory-mapped."""
    for d in s.dirs:
        path = d / s.filename
        if not path.is_file():
            continue
        try:
            # Private, not shared: a write into a mapped tensor must never reach the file.
            with torch.serialization.set_default_mmap_options(mmap.MAP_PRIVATE):
                entry = torch.load(path, mmap=True, weights_only=True)
            _check(entry, s.key, names)
        except Exception as exc:  # noqa: BLE001 - truncated, foreign or unreadable: rebuilt and replaced
            log.debug("tensor cache: ignoring %s (%s: %s)", path, type(exc).__name__, exc)
            continue
        with contextlib.suppress(OSError):
            os.utime(path)  # marks it used: eviction removes the least recently used entries first
        log.debug("tensor cache: hit %s", path)
        return entry
    return None


def _check(entry: Any, key: str, names: Sequence[str]) -> None:
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT or entry.get("key") != key:
        raise ValueError("not an entry of this format and key")
    tensors = entry.get("tensors")
    if not isinstance(tensors, dict) or any(not isinstance(tensors.get(n), torch.Tensor) for n in names):
        raise ValueError(f"an entry must hold the tensors {', '.join(names)}")


def write(s: Slot, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path | None:
    """Save an entry (CPU tensors and plain metadata) into the first directory that takes it."""
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    if nbytes > max_bytes():
        log.debug("tensor cache: not saving %.1f GB (above %s=%s GB)", nbytes / 2**30, ENV_MAX_GB, max_bytes() / 2**30)
        return None
    entry = {"format": CACHE_FORMAT, "key": s.key, **meta,
             "tensors": {k: t.detach().cpu().contiguous() for k, t in tensors.items()}}
    for d in s.dirs:
        tmp = d / f"{s.key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            d.mkdir(parents=True, exist_ok=True)
            clean(d)
            if shutil.disk_usage(d).free < 2 * nbytes:  # leave room for everything else on the disk
                log.debug("tensor cache: not enough free space in %s", d)
                continue
            torch.save(entry, tmp)
            os.replace(tmp, d / s.filename)
        except Exception as exc:  # noqa: BLE001 - unwritable, full or gone: the next directory, or none
            log.debug("tensor cache: cannot write in %s (%s: %s)", d, type(exc).__name__, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            continue
        log.debug("tensor cache: saved %s", d / s.filename)
        evict(d, keep=s.filename)
        return d / s.filename
    return None


def max_bytes() -> float:
    raw = os.environ.get(ENV_MAX_GB, "").strip()
    try:
        gb = float(raw) if raw else DEFAULT_MAX_GB
    except ValueError:
        log.warning("%s must be a number of GB, but got %r; using %s", ENV_MAX_GB, raw, DEFAULT_MAX_GB)
        gb = DEFAULT_MAX_GB
    return gb * 2**30


def clean(d: Path, older_than_s: float = STALE_TEMP_S) -> None:
    """Remove the temporary files of writers that died before their rename."""
    now = time.time()
    for p in d.glob("*.tmp"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > older_than_s:
                p.unlink()


def evict(d: Path, keep: str, limit: float | None = None) -> None:
    """Remove the least recently used entries until the directory is within the cap: old keys
    (a changed file or option) are never read again. A worker still mapping one keeps its pages."""
    limit = max_bytes() if limit is None else limit
    entries = []
    for p in d.glob("*.pt"):
        with contextlib.suppress(OSError):
            st = p.stat()
            entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        if p.name != keep:
            with contextlib.suppress(OSError):
                p.unlink()
                p.with_suffix(".lock").unlink(missing_ok=True)
            total -= size


@contextlib.contextmanager
def exclusive(s: Slot, wait_s: float | None = None) -> Iterator[None]:
    """One builder per entry: workers that start together wait for the first one's file instead
    of all loading the dataset at once on the same cores. Without a lockable directory, no wait."""
    for d in s.dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            fh = open(d / f"{s.key}.lock", "a")  # noqa: SIM115 - held for the whole block below
        except OSError:
            continue
        with fh:
            wait_s = LOCK_WAIT_S if wait_s is None else wait_s
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when fh closes, or the process dies
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        log.debug("tensor cache: %s still locked after %.0f s; building anyway", fh.name, wait_s)
                        break
                    time.sleep(0.1)
                except OSError:  # a file system without locks
                    break
            yield
        return
    yield
