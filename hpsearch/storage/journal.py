"""The embedded journal file, made to survive a crash mid-write and a full disk, and its queue backend.

Optuna's JournalFileBackend appends one JSON line per operation. A write cut short (the process
killed mid-write, the disk full, `truncate`) leaves a last line without its newline. Optuna's
reader already ignores such a line, but the next append is glued onto it, and from then on every
reader fails ("Expecting ',' delimiter"). Here:

- before each append, under the journal's own lock, a last line without its newline is cut off.
  No reader ever applied it (a line counts only once its newline is written), so it is an
  operation that never happened; complete lines are never touched;
- an append that fails (ENOSPC, EIO, a read-only remount) removes what it wrote of its unfinished
  line and raises one clear HpsearchError instead of leaving a torn tail.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend

from hpsearch.errors import StorageUnavailable
from hpsearch.storage import optuna_internals
from hpsearch.storage.lockfile import LockFileBackend

log = logging.getLogger("hpsearch.journal")
_TAIL_CHUNK = 64 * 1024


class JournalError(StorageUnavailable):
    """The journal file cannot be written (disk full, read-only, I/O error)."""


class FlockJournalLock(optuna_internals.journal_lock_base()):  # type: ignore[misc]
    """The journal's append lock as a kernel file lock beside it (`JOURNAL.flock`).

    Optuna's default is a symlink that its holder removes: a writer killed while holding it
    (kill -9, OOM killer, a node lost) leaves the symlink, and every other worker stalls behind
    it for Optuna's 30 s grace, reaped trials included. The kernel drops an flock with its holder,
    however it dies. Each acquire opens its own descriptor: threads of one process exclude each
    other as separate processes do.
    """

    def __init__(self, journal_path: str) -> None:
        self.path = journal_path + ".flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the lock


class SafeJournalFileBackend(JournalFileBackend):
    """JournalFileBackend whose appends repair a torn tail first and never leave one behind,
    under a lock the kernel releases when its holder dies."""

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path, lock_obj=FlockJournalLock(file_path))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in logs).encode("utf-8")
        lock = optuna_internals.journal_lock(self)
        try:
            lock.acquire()
        except OSError as exc:  # the lock is a symlink or file beside the journal: it needs space too
            raise self._error(exc, "cannot take the journal's lock") from None
        try:
            self._append_locked(data)
        finally:
            lock.release()

    @property
    def path(self) -> str:
        return str(optuna_internals.journal_file_path(self))

    def _append_locked(self, data: bytes) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        except OSError as exc:
            raise self._error(exc, "cannot open") from None
        try:
            end = _repair_tail(fd, self.path)
            written = 0
            try:
                while written < len(data):
                    written += os.write(fd, data[written:])
            except OSError as exc:
                # Keep the complete lines this append wrote (a reader may already have applied
                # them); cut only its unfinished last line, which no reader applies.
                keep = data.rfind(b"\n", 0, written) + 1
                try:
                    os.ftruncate(fd, end + keep)
                except OSError:
                    pass  # the next append repairs the tail under the lock
                raise self._error(exc, "append failed") from None
            try:
                os.fsync(fd)
            except OSError as exc:
                # The lines are complete and readers may have applied them: they stay. Say that
                # they may not be durable.
                raise self._error(exc, "written but not synced to disk") from None
        finally:
            os.close(fd)

    def _error(self, exc: OSError, what: str) -> JournalError:
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return JournalError(f"journal {self.path}: disk full ({reason}); the journal is intact: "
                                "free some space and run the command again")
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return JournalError(f"journal {self.path}: must be writable, but {what} ({reason})")
        return JournalError(f"journal {self.path}: {what} ({reason})")


def _repair_tail(fd: int, path: str) -> int:
    """Cut a last line that has no newline (a torn write) and return the file's size after that.

    Only called under the journal's lock, where no other writer is mid-line: bytes after the
    last newline can only be left by a writer that died or failed.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = _last_newline_end(fd, size)
    try:
        os.ftruncate(fd, end)
    except OSError as exc:
        raise JournalError(f"journal {path}: must be writable to drop a torn last line, but "
                           f"truncating failed ([Errno {exc.errno}] {exc.strerror})") from None
    log.warning("journal %s: dropped a torn last line (%d bytes, an operation whose write was cut "
                "short); all complete operations are kept", path, size - end)
    return end


def _last_newline_end(fd: int, size: int) -> int:
    """Offset just past the last b"\\n" before `size` (0 when there is none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        chunk = os.pread(fd, pos - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        pos = start
    return 0


class JournalBackend(LockFileBackend):
    """The journal file as a queue: Optuna's JournalStorage, whose log orders every write, so its
    compare-and-set claims are exactly once; the study lock is a file beside the journal."""

    name = "journal"

    def __init__(self, storage: optuna.storages.JournalStorage) -> None:
        log_backend = optuna_internals.journal_backend(storage)
        path = optuna_internals.journal_file_path(log_backend)
        super().__init__(storage, None if path is None else Path(path + ".hpsearch.lock"))
        self._append_lock = optuna_internals.journal_lock(log_backend)  # what every append takes

    def writable(self, limit: float) -> bool:
        """On the journal file a stopped or slow process holding the append lock blocks every writer,
        heartbeats included: can this process take it within `limit` seconds?"""
        lock = self._append_lock
        if lock is None or not hasattr(lock, "acquire"):
            return True
        t0 = time.monotonic()
        if not lock.acquire():
            return False
        lock.release()
        return time.monotonic() - t0 <= limit
