"""The one user-facing exception type; cli.py turns it into one line and an exit code."""

from __future__ import annotations


class HpsearchError(Exception):
    """A problem the user can fix (bad spec, unknown name, unreachable storage, ...)."""

    exit_code = 2


class StudyNotFound(HpsearchError):
    exit_code = 3


class StorageUnavailable(HpsearchError):
    exit_code = 4
