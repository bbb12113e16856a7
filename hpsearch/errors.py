"""The one user-facing exception type; cli.py turns it into one line and an exit code."""

from __future__ import annotations


class HpsearchError(Exception):
    """A problem the user can fix (bad spec, unknown name, unreachable storage, ...)."""

    exit_code = 2


class StudyNotFound(HpsearchError):
    exit_code = 3


class StorageUnavailable(HpsearchError):
    exit_code = 4


class Preempted(Exception):  # noqa: N818 - an event, not an error
    """The worker was asked to stop (SIGTERM/SIGINT): the trial is handed back and resumed elsewhere.

    User objectives raise it when `hpsearch.should_stop()` turns True.
    """
