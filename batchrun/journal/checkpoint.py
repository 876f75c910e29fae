"""Checkpoints: the journal's WAL copied into its database on a thread of its own, and kept small."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

# The WAL is copied into the database (a checkpoint, with its fsyncs) on a thread of the journal's
# own after about this many rows are written, never by the event loop's commits.
CHECKPOINT_EVERY = 2_000


class Checkpointer:
    """Copies the journal's WAL into the database file on a thread with its own connection.

    SQLite lets go of the GIL while it works, so the copy and its fsyncs run beside the event loop
    instead of inside a commit that workers wait for. When a copy is done, the writer starts the
    WAL file over (`written`, on the writer's connection), which keeps it a few MB however long
    the run. A checkpoint that fails (disk full) is left to the next one, or to the close, which
    checkpoints the rest.
    """

    def __init__(self, path: Path, writer: sqlite3.Connection, *, due: bool = False) -> None:
        self._writer = writer  # the event loop's connection: the one that restarts the WAL
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._wanted = threading.Event()
        self._caught_up = False  # a copy has just finished (set by the thread, cleared by the writer)
        # Rows written since the thread was last asked; `due`: the WAL already holds enough (what
        # a crashed run committed, just folded), copied with the first commits.
        self._unchecked = CHECKPOINT_EVERY if due else 0
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="batchrun-checkpoint", daemon=True)
        self._thread.start()

    def written(self, rows: int) -> None:
        """The writer committed `rows` rows: start the WAL over if a copy has just finished, and
        ask for the next copy every CHECKPOINT_EVERY rows."""
        if self._caught_up:
            self._caught_up = False
            self._restart_wal()
        self._unchecked += rows
        if self._unchecked >= CHECKPOINT_EVERY:
            self._unchecked = 0
            self.nudge()

    def nudge(self) -> None:
        """There is enough new in the WAL to copy."""
        self._wanted.set()

    def close(self) -> None:
        """Finish the copy under way, then stop."""
        self._closing = True
        self._wanted.set()
        self._thread.join()
        self._db.close()

    def _work(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self._caught_up = True

    def _restart_wal(self) -> None:
        """Start the WAL file over from its beginning, so that it stays a few MB however long
        the run. The checkpoint thread has just copied nearly all of it; what this copies is only
        what the last few commits wrote. A WAL the writer never restarts grows by ~1 KB a row
        (850 MB for a million rows). If anything else is using the WAL (a `status` reading), it
        is left for the next time instead of waited for."""
        self._writer.execute("PRAGMA busy_timeout=0")
        try:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("PRAGMA main.wal_checkpoint(RESTART)").fetchall()
        finally:
            self._writer.execute("PRAGMA busy_timeout=5000")
