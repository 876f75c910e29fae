"""The batch book: the journal's record of Batch API submissions and the keys each one holds.

    batches     one row per submission: our id (`sub`), the provider's batch and file ids, status,
                counts, times; live until its lines are collected
    batch_rows  key -> the live submission holding it (NULL: back to pending), the batches it was
                in that ended without an answer for it (`tries`), usage of answers not kept,
                and its last failure

The order of writes makes a kill -9 anywhere safe:

    1. upload the input file                       (an orphan file costs nothing)
    2. open(sub, file id, keys): keys held         committed before the batch exists
    3. create the batch, metadata {output, fingerprint, sub}
    4. attach(sub, batch)                          committed
    5. once the batch ended: answers committed to the journal, then close(sub) returns the rest

A run that finds a submission still "submitting" looks for its batch by metadata (killed between
3 and 4) or creates it then (killed between 2 and 3): its rows are never submitted twice.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

from batchrun.errors import JobStopped
from batchrun.journal.database import Journal

SUBMITTING = "submitting"  # keys held, batch not (known to be) created yet


class BatchState(Protocol):
    """What the provider says of a batch, as far as the book keeps it (`backends.batch_api.BatchInfo`)."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def total(self) -> int: ...
    @property
    def completed(self) -> int: ...
    @property
    def failed(self) -> int: ...


class Submission(NamedTuple):
    """One batch as the journal knows it."""

    sub: str
    batch_id: str | None
    file_id: str | None
    status: str
    total: int
    completed: int
    failed: int
    created_at: float
    finished_at: float | None
    live: int
    cancelled_by_us: int
    note: str | None


class Carried(NamedTuple):
    """What a key brings from earlier batches that ended without its answer."""

    tries: int
    prompt_tokens: int
    completion_tokens: int
    last_error: str | None


class Returned(NamedTuple):
    """A key going back to pending when its batch is closed."""

    key: bytes
    counted: bool  # uses up one of --max-attempts
    prompt_tokens: int  # usage of an answer that was not kept (billed all the same)
    completion_tokens: int
    error: str


_COLUMNS = ", ".join(Submission._fields)


class BatchBook:
    """The batch tables of one journal, on its connection (one thread: the event loop's)."""

    def __init__(self, journal: Journal) -> None:
        self._db = journal.db
        self._path = journal.path

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise JobStopped(
                f"cannot write the journal {self._path} ({exc}); free disk space or fix the "
                "folder, then run the same command again: what was committed is kept"
            ) from None

    def open(self, sub: str, file_id: str, keys: Sequence[bytes]) -> None:
        """Hold `keys` for a submission about to be created (step 2)."""
        with self._transaction() as db:
            db.execute("INSERT INTO batches (sub, file_id, status, total, created_at) "
                       "VALUES (?, ?, ?, ?, ?)", (sub, file_id, SUBMITTING, len(keys), time.time()))
            db.executemany("INSERT INTO batch_rows (key, sub) VALUES (?, ?) "
                           "ON CONFLICT (key) DO UPDATE SET sub = excluded.sub",
                           [(key, sub) for key in keys])

    def attach(self, sub: str, info: BatchState) -> None:
        """The provider's batch for a submission, with its status and counts (steps 4, polls)."""
        with self._transaction() as db:
            db.execute("UPDATE batches SET batch_id = ?, status = ?, total = MAX(total, ?), "
                       "completed = ?, failed = ? WHERE sub = ?",
                       (info.id, info.status, info.total, info.completed, info.failed, sub))

    def cancelled_by_us(self, sub: str) -> None:
        """We asked for the cancel: its unanswered rows go back without using an attempt."""
        with self._transaction() as db:
            db.execute("UPDATE batches SET cancelled_by_us = 1 WHERE sub = ?", (sub,))

    def close(self, sub: str, status: str, returned: Sequence[Returned],
              note: str | None = None) -> None:
        """The batch is collected: `returned` keys go back to pending, the others are settled."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE batch_rows SET sub = NULL, tries = tries + ?, "
                "prompt_tokens = prompt_tokens + ?, completion_tokens = completion_tokens + ?, "
                "last_error = ? WHERE key = ? AND sub = ?",
                [(int(r.counted), r.prompt_tokens, r.completion_tokens, r.error, r.key, sub)
                 for r in returned])
            db.execute("DELETE FROM batch_rows WHERE sub = ?", (sub,))
            db.execute("UPDATE batches SET live = 0, status = ?, finished_at = ?, note = ? "
                       "WHERE sub = ?", (status, time.time(), note, sub))

    def forget(self, keys: Sequence[bytes]) -> None:
        """Keys settled outside a batch (exhausted, or answered online): nothing carried on."""
        with self._transaction() as db:
            db.executemany("DELETE FROM batch_rows WHERE key = ? AND sub IS NULL",
                           [(key,) for key in keys])

    def live(self) -> list[Submission]:
        """Submissions not collected yet, oldest first."""
        return [Submission(*row) for row in self._db.execute(
            f"SELECT {_COLUMNS} FROM batches WHERE live = 1 ORDER BY created_at")]

    def keys(self, sub: str) -> list[bytes]:
        """The keys a live submission holds."""
        return [key for (key,) in self._db.execute(
            "SELECT key FROM batch_rows WHERE sub = ?", (sub,))]

    def returned(self) -> list[bytes]:
        """Keys back from ended batches that no batch holds now and no answer settled."""
        return [key for (key,) in self._db.execute(
            "SELECT key FROM batch_rows WHERE sub IS NULL")]

    def carried(self, keys: Sequence[bytes]) -> dict[bytes, Carried]:
        """What each of `keys` carries from earlier batches (keys with nothing are left out)."""
        found: dict[bytes, Carried] = {}
        for start in range(0, len(keys), 900):
            chunk = list(keys[start:start + 900])
            marks = ",".join("?" * len(chunk))
            for key, *rest in self._db.execute(
                "SELECT key, tries, prompt_tokens, completion_tokens, last_error FROM batch_rows "
                f"WHERE key IN ({marks})", chunk):
                found[key] = Carried(*rest)
        return found


def submissions(journal: Journal, limit: int = 20) -> list[Submission]:
    """The newest submissions of a journal, live ones first (for `batchrun status`)."""
    try:
        rows = journal.db.execute(
            f"SELECT {_COLUMNS} FROM batches ORDER BY live DESC, created_at DESC LIMIT ?",
            (limit,)).fetchall()
    except sqlite3.OperationalError:  # a journal from before the Batch API backend
        return []
    return [Submission(*row) for row in rows]
