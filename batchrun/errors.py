"""The one exception tree of batchrun; every user-facing error carries its exit code.

    BatchrunError                 exit code on the class, message a user can act on
    ├── UsageError          (2)   bad option, config, job file or input; nothing was sent
    │   ├── InputError      (2)   the input file cannot be read as asked
    │   ├── LockedError     (2)   another run holds this output
    │   └── MissingKey      (2)   no API key for a remote endpoint (`plan` goes on without one)
    ├── JobStopped          (3)   a job-wide failure or budget stopped the run; progress kept
    ├── StillRunning       (75)   Batch API batches are still running; run again later to collect
    └── Interrupted       (130)   SIGINT/SIGTERM; progress kept

Row-level failures are not exceptions: they become an ``Outcome`` with ``status = "error"``.
"""

from __future__ import annotations

import errno
import os
from typing import Protocol

EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
EXIT_PENDING = 75  # EX_TEMPFAIL: try again later
EXIT_INTERRUPTED = 130


class RunReport(Protocol):
    """What a run that stopped had done, as a person reads it (a `run.summary.Summary`)."""

    def render(self) -> str:
        """The one-screen report."""
        ...


class BatchrunError(Exception):
    """Base of every error batchrun reports to a user."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.summary: RunReport | None = None  # what a run that stopped had done, when it ran


class UsageError(BatchrunError):
    """Bad usage, config or input: nothing was sent."""

    exit_code = EXIT_USAGE


class InputError(UsageError):
    """The input file is missing, unreadable or lacks a needed column."""


class LockedError(UsageError):
    """Another batchrun process is writing the same output."""


class MissingKey(UsageError):
    """No API key was found for a remote endpoint; the message names the variable to set."""


class JobStopped(BatchrunError):
    """A job-wide failure (bad key, no credits, quota, unknown model, budget) stopped the run."""

    exit_code = EXIT_STOPPED


class StillRunning(BatchrunError):
    """Rows wait in Batch API batches that are still running: run the same command later."""

    exit_code = EXIT_PENDING


class Interrupted(BatchrunError):
    """The run was interrupted by a signal; finished rows are kept in the journal."""

    exit_code = EXIT_INTERRUPTED


# What to do about an operating error, by its errno: the one line names the path and this.
_FIXES = {
    errno.EACCES: "check its permissions, or choose another folder",
    errno.EPERM: "check its permissions, or choose another folder",
    errno.EROFS: "choose a folder on a writable file system",
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is used up: free some space",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder: name a file",
}


def operating_error(exc: OSError, doing: str, cls: type[BatchrunError] = UsageError,
                    then: str = "") -> BatchrunError:
    """An OSError met while `doing` something (permissions, a read-only or full disk), as one
    line naming the path, the cause and the fix; `then` says what happens to the run's work."""
    where = f" {exc.filename}" if exc.filename else ""
    cause = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    fix = _FIXES.get(exc.errno or 0, "check the path")
    return cls(f"cannot {doing}{where}: {cause}; {fix}" + (f"; {then}" if then else ""))
