"""Journal: the embedded SQLite file beside the output that makes runs durable and resumable.

Tables: `results` holds one finished request per key (answer or final error); `log` holds the
results of the run going now (or of one that crashed), appended in arrival order; `rows` maps each
input row of the current run to its key (and marks dedup copies); `meta` holds run facts. The view
`all_results` is `results` with `log` laid over it: what a reader sees during a run. `batches` and
`batch_rows` record Batch API submissions and the keys each holds (`backends.batch_book`); a key
held by a live batch is skipped by every backend's plan.

Results are group-committed (`GroupCommit`): each worker's answer is in a committed transaction
before that worker sends again, and answers that arrive together share one transaction. They go to
`log`, whose pages fill in order, so a commit writes a page or two however many answers it carries
(inserted into `results`, keyed by a hash, they would dirty a page each). `fold()` moves them into
`results` in key order when a writer opens the journal, and at the end of a run that resumed; a
run that began with no earlier result reads its results back from `log` through an index. WAL with
synchronous=NORMAL: a committed row survives `kill -9` and any crash of the process; only a power
cut may lose the last commits (never corrupting the file).

Beside it: `checkpoint` copies the WAL into the file on a thread of its own and keeps it small;
`lookups` holds the queries planning asks, `readback` those that read results back by input row.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson

from batchrun.data.locations import sibling
from batchrun.errors import JobStopped, LockedError, UsageError
from batchrun.journal import former, lookups, migrate, readback
from batchrun.journal.cache import LOOKUP_CHUNK, RECORD_HIT, RECORD_HITS, Cache, Copier
from batchrun.journal.checkpoint import Checkpointer
from batchrun.protocol.outcome import ERROR, EXHAUSTED, OK, Outcome


class Sample(NamedTuple):
    """What a run did in one interval: counts are deltas, pace and in-flight as at its end."""

    t: float  # wall clock at the end of the interval
    span: float  # seconds the interval covers
    run: float  # wall clock the run started: a journal keeps the samples of every run since --fresh
    sent: int  # requests started (first attempts and retries)
    ok: int  # rows answered
    errors: int  # rows failed for good
    retries: int
    rate_limited: int  # 429s about rate
    transient: int  # other retryable failed attempts: 5xx, dropped connections, timeouts
    prompt_tokens: int
    completion_tokens: int
    in_flight: int
    pauses: int  # run-wide pauses the limiter began (after 429s that show the run too fast)
    rpm: float | None  # the limiter's pace: requests per minute (None: unpaced)
    tpm: float | None  # ... and tokens per minute
    rpm_limit: float | None  # as configured
    tpm_limit: float | None
    # None: the run's totals; a pool of endpoints also keeps one sample per endpoint per interval.
    endpoint: str | None = None



_T = TypeVar("_T")
SCHEMA_VERSION = "1"
PROGRESS_EVERY = 1.0  # seconds: how often a commit also stores `last_progress_at` (for status)
ROWS_BUFFERED = 16_384  # input rows' mapping buffered at most before it is written
RESULT_COLUMNS = Outcome._fields
_NAMES = ", ".join(RESULT_COLUMNS)
_RESULT_TYPES = """status TEXT NOT NULL, response TEXT, finish_reason TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, total_tokens INTEGER, error TEXT,
    error_kind TEXT, attempts INTEGER, latency_ms REAL, model TEXT, response_id TEXT,
    cost_usd REAL, parsed TEXT, finished_at REAL, endpoint TEXT, cached_tokens INTEGER,
    reasoning_tokens INTEGER, provider_cost REAL"""
# `all_results`: `log` laid over `results` (a journal of an older version gets it again with the
# columns added since: `migrate`).
_VIEW = (f"SELECT {_NAMES} FROM log "
         f"UNION ALL SELECT {_NAMES} FROM results WHERE key NOT IN (SELECT key FROM log)")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (key BLOB PRIMARY KEY, {_RESULT_TYPES}) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, key BLOB NOT NULL, {_RESULT_TYPES});
CREATE VIEW IF NOT EXISTS all_results AS {_VIEW};
CREATE TABLE IF NOT EXISTS rows (idx INTEGER PRIMARY KEY, base BLOB NOT NULL, key BLOB NOT NULL,
    copy INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS timeline ({", ".join(Sample._fields)});
CREATE TABLE IF NOT EXISTS batches (sub TEXT PRIMARY KEY, batch_id TEXT, file_id TEXT,
    status TEXT NOT NULL, total INTEGER NOT NULL, completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, finished_at REAL,
    live INTEGER NOT NULL DEFAULT 1, cancelled_by_us INTEGER NOT NULL DEFAULT 0, note TEXT);
CREATE TABLE IF NOT EXISTS batch_rows (key BLOB PRIMARY KEY, sub TEXT,
    tries INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, last_error TEXT) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batch_rows_sub ON batch_rows (sub);
INSERT OR IGNORE INTO meta VALUES ('schema', '{SCHEMA_VERSION}');
"""
_APPEND_RESULT = f"INSERT INTO log ({_NAMES}) VALUES ({', '.join('?' * len(RESULT_COLUMNS))})"
_INDEX_LOG = "CREATE INDEX IF NOT EXISTS log_key ON log (key)"
# Key order makes the inserts into `results` walk its pages once; seq order lets a later result
# of the same key (a crashed run's, then a resumed one's) win.
_FOLD = (f"INSERT OR REPLACE INTO results ({_NAMES}) SELECT {_NAMES} FROM log ORDER BY key, seq")


def journal_path(output: Path) -> Path:
    """Where the journal of an output is: beside it, named after it (`x.journal.sqlite`,
    `x.jsonl.journal.sqlite`); or, until a run of it moves it (`OutputLock.acquire`), where an
    older version left it (`journal.former`)."""
    return former.found(output) or sibling(output, former.JOURNAL)


class OutputLock:
    """One run per output: an exclusive flock, released by the kernel if the process dies."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = former.lock_path(output)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or refuse at once, naming the process that holds it; then move a journal
        an older version left under a shared name to its own (`journal.former.settle`)."""
        self._take()
        try:
            former.settle(self.output)
        except BaseException:
            self.release()
            raise

    def _take(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(4):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 3:  # `status` may hold a shared lock for a moment: look again
                    time.sleep(0.02)
                    continue
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise LockedError(
                    f"another batchrun run (pid {holder}) is writing {self.output.name}; "
                    "wait for it to finish or stop it, then run again"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Let the next run in."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def held_elsewhere(self) -> int | None:
        """The pid of a live run holding this output, or None (used by `status`); an older
        version's run holds the lock of the name its journal still has."""
        for path in (self.path, former.held_by(self.output)):
            pid = _holder(path) if path is not None else None
            if pid is not None:
                return pid
        return None


def _holder(path: Path) -> int | None:
    """The pid written in a lock file someone holds (-1: unreadable), or None."""
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None


def _writes(method: Callable[..., _T]) -> Callable[..., _T]:
    """Journal writes that fail (disk full, I/O error) stop the run with a line, not a traceback."""

    @functools.wraps(method)
    def wrapper(self: Journal, *args: Any, **kwargs: Any) -> _T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            # Only what the machine did (disk full, I/O error, read-only, locked, a damaged file);
            # a ProgrammingError or IntegrityError is a bug in batchrun and stays one.
            if not isinstance(exc, sqlite3.OperationalError) and type(exc) is not sqlite3.DatabaseError:
                raise
            raise JobStopped(
                f"cannot write the journal {self.path} ({exc}); free disk space or fix the folder, "
                "then run the same command again: what was committed is kept"
            ) from None

    return wrapper


class Journal:
    """The run's SQLite journal; use from one thread (the event loop's)."""

    def __init__(self, path: Path, *, readonly: bool = False, fresh: bool = False) -> None:
        self.path = path
        self._tally: list[tuple[Any, ...]] | None = None  # _tallies(), until the next write
        # The shared cache (--cache), and what copies this journal's answers into it.
        self.cache: Cache | None = None
        self._copier: Copier | None = None
        if fresh and not readonly:  # --fresh: start from nothing, even from an unreadable file
            for stale in (path, path.with_name(path.name + "-wal"),
                          path.with_name(path.name + "-shm")):
                stale.unlink(missing_ok=True)
        try:
            if readonly:
                self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                           isolation_level=None)
            else:
                self._db = sqlite3.connect(path, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA wal_autocheckpoint=0")  # the Checkpointer's work
                self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA busy_timeout=5000")
            if readonly:  # an older version's journal is read as it is
                migrate.overlay(self._db, _VIEW)
            else:
                migrate.upgrade(self._db, _VIEW)
            self._readonly = readonly
            self._logged = 1  # results in `log` not yet folded: unknown until the first fold
            self._overlay: str | None = None  # readonly: what lays `log` over `results`
            self._checkpointer: Checkpointer | None = None
            self._log_indexed = False  # `log_key` made for reading back (dropped by a fold)
            if not readonly:
                folded = self.fold()  # what a crashed run committed: copied with the first commits
                self._checkpointer = Checkpointer(path, self._db, due=folded)  # opened cleanly
            elif not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'log'").fetchone():
                self._logged = 0  # written before `log` existed: `results` is everything
            self._batched = lookups.any_held(self._db)  # rows wait in Batch API batches: the plan skips them
            # Does any earlier result exist? A fresh journal answers every lookup with nothing.
            self._earlier = bool(self._db.execute(
                "SELECT EXISTS (SELECT 1 FROM results)" + (
                    " OR EXISTS (SELECT 1 FROM log)" if self._logged else "")
            ).fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise UsageError(
                f"journal {path} is not readable ({exc}); move it away or run with --fresh"
            ) from None
        self._pending: list[Outcome] = []
        self._pending_rows: list[tuple[int, bytes, bytes, int]] = []
        self._progress_at = 0.0  # when `last_progress_at` was last stored

    def attach_cache(self, cache: Cache, *, copy: bool = True) -> None:
        """Answer from the shared cache (`cache` was opened first: a cache of this version, in
        WAL mode): a request it answers is copied into the log inside SQLite (`record_cached`).
        `copy`: keep every answer this journal commits in the cache too, copied on a thread of
        its own (not with several endpoints: the pool keeps each under its endpoint's key)."""
        self.cache = cache
        self._db.execute("ATTACH DATABASE ? AS shared", (str(cache.path),))
        if copy:
            self._copier = Copier(self.path, cache)

    def close(self) -> None:
        """Commit what is buffered and close (the next writer to open the journal folds `log`)."""
        try:
            if not self._readonly:
                self.flush()
        finally:
            try:
                if self._copier is not None:  # the answers of the last commits, not copied yet
                    self._copier.close()
            finally:
                if self._checkpointer is not None:
                    self._checkpointer.close()
                self._db.close()  # the last connection: SQLite checkpoints what is left

    def reload(self) -> None:
        """Another process wrote this journal meanwhile (the Ray engine's ledger actor): forget
        what this connection knew of its tables; the next read folds what it finds in `log`."""
        self._logged = 1
        self._earlier = True
        self._tally = None
        self._log_indexed = False
        self._overlay = None

    @_writes
    def fold(self) -> bool:
        """Move the committed results of `log` into `results`, in one transaction."""
        if not self._logged:
            return False
        if self._copier is not None:  # the answers not copied yet leave `log` now
            self._copier.catch_up()
        self._db.execute("BEGIN")
        try:
            self._db.execute(_FOLD)
            self._db.execute("DROP INDEX IF EXISTS log_key")  # inserts into `log` stay appends
            self._db.execute("DELETE FROM log")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        if self._copier is not None:
            self._copier.folded()
        self._logged = 0
        self._log_indexed = False
        self._tally = None
        return True

    def _written(self, rows: int) -> None:
        self._tally = None
        if self._checkpointer is not None:
            self._checkpointer.written(rows)

    @_writes
    def discard_all(self) -> None:
        """--fresh: forget every earlier result (and the batches that held rows)."""
        self._db.executescript("BEGIN; DELETE FROM results; DELETE FROM rows; DELETE FROM timeline; "
                               "DELETE FROM batches; DELETE FROM batch_rows; COMMIT;")
        self._earlier = False
        self._batched = False
        self._tally = None

    @_writes
    def start_mapping(self) -> None:
        """A new run maps its input rows afresh (the input may have changed)."""
        # rows_base indexed `base` for the dedup counts of older versions, which the selection
        # now keeps in memory: an index each row's insert would have to keep up for nothing.
        self._db.executescript("BEGIN; DELETE FROM rows; DROP INDEX IF EXISTS rows_base; COMMIT;")
        self._tally = None

    # --- meta -------------------------------------------------------------------------------

    @_writes
    def set_meta(self, **values: Any) -> None:
        """Store run facts (JSON-encoded)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [(k, orjson.dumps(v).decode()) for k, v in values.items()],
        )

    def meta(self) -> dict[str, Any]:
        """All run facts."""
        return {k: orjson.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    # --- timeline ---------------------------------------------------------------------------

    @_writes
    def append_timeline(self, samples: Sequence[Sample]) -> None:
        """Append samples of the run's time series, in a transaction of their own."""
        marks = ", ".join("?" * len(Sample._fields))
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(f"INSERT INTO timeline VALUES ({marks})", samples)

    def timeline(self) -> list[Sample]:
        """Every sample kept, oldest first (none in a journal older than the timeline)."""
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'timeline'").fetchone():
            return []
        return [Sample(*row) for row in
                self._db.execute(f"SELECT {', '.join(Sample._fields)} FROM timeline ORDER BY rowid")]

    # --- planning ---------------------------------------------------------------------------

    def map_rows(self, rows: Iterable[tuple[int, bytes, bytes, int]]) -> None:
        """Buffer (idx, base, key, copy) for this run's input rows; they go with the next commit,
        or on their own once ROWS_BUFFERED wait (a backend that plans all before it commits)."""
        self._pending_rows.extend(rows)
        if len(self._pending_rows) >= ROWS_BUFFERED:
            self._write_rows()

    def finished(self, keys: Sequence[bytes]) -> dict[bytes, tuple[str, str | None]]:
        """(status, error_kind) of the keys that already have a result."""
        # A writer folded `log` when it opened, and a key it logs since is new to this run (or a
        # copy): `results` has the answer. A reader (`plan`) may see a run's log: it lays the log
        # over `results`, later states of a key over earlier ones.
        if not self._earlier:
            return {}
        overlay = None
        if self._readonly and self._logged:
            if self._overlay is None:
                self._overlay = lookups.log_overlay(self._db)
            overlay = self._overlay
        return lookups.finished(self._db, keys, overlay)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for the batch book's own tables (`backends.batch_book`)."""
        return self._db

    def held(self, keys: Sequence[bytes]) -> set[bytes]:
        """The keys among `keys` that a live Batch API batch holds (never sent again meanwhile)."""
        return lookups.held(self._db, keys) if self._batched else set()

    def held_count(self) -> int:
        """Distinct requests of this run's rows that live Batch API batches hold (exit 75)."""
        if not lookups.any_held(self._db):
            return 0
        self._write_rows()
        return lookups.held_count(self._db)

    # --- results ----------------------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        """Buffer a finished request; it is durable after the next flush."""
        self._pending.append(outcome)

    @_writes
    def flush(self) -> int:
        """Commit buffered rows and results in one transaction; returns results committed."""
        n = len(self._pending)
        if not n and not self._pending_rows:
            return 0
        self._db.execute("BEGIN")
        try:
            if self._pending_rows:
                self._db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)",
                                     self._pending_rows)
            if n:
                # Plain tuples: sqlite3 binds them a fifth faster than named ones.
                self._db.executemany(_APPEND_RESULT, map(tuple, self._pending))
                self._logged += n
            written = n + len(self._pending_rows)
            now = time.time()
            stamp = now - self._progress_at >= PROGRESS_EVERY  # a page less to write per commit
            if stamp:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('last_progress_at', ?)", (repr(now),)
                )
            self._db.execute("COMMIT")
            if stamp:
                self._progress_at = now
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._pending.clear()
        self._pending_rows.clear()
        self._written(written)
        return n

    @_writes
    def record_cached(self, keys: Sequence[bytes], cost: float | None, now: float,
                      kept: Mapping[bytes, tuple[bytes, str]] | None = None) -> list[bytes]:
        """Record requests the shared cache answers: their answers are copied from the cache
        inside SQLite, in one transaction after what is buffered. `kept`: with several endpoints,
        each key's key in the cache and the endpoint its answer is kept for (else the cache knows
        it by this run's key). Returns the keys whose answer was gone meanwhile (another run
        pruned it): not recorded, to be sent."""
        self.flush()
        self._db.execute("BEGIN")
        try:
            before = self._db.total_changes
            if kept:
                self._db.executemany(RECORD_HIT, [(key, cost, now, kept[key][1], kept[key][0])
                                                  for key in keys])
            else:
                for i in range(0, len(keys), LOOKUP_CHUNK):
                    chunk = keys[i:i + LOOKUP_CHUNK]
                    self._db.execute(RECORD_HITS.format(marks=",".join("?" * len(chunk))),
                                     (cost, now, *chunk))
            recorded = self._db.total_changes - before
            gone: list[bytes] = []
            if recorded < len(keys):
                found = {key for (key,) in self._db.execute(
                    "SELECT key FROM log WHERE seq > (SELECT MAX(seq) FROM log) - ?", (recorded,))}
                gone = [key for key in keys if key not in found]
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._logged += recorded
        self._written(recorded)
        return gone

    @_writes
    def _write_rows(self) -> None:
        if self._pending_rows:
            # One transaction: in autocommit mode each row would be a commit of its own.
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)",
                                     self._pending_rows)
            self._pending_rows.clear()
            self._tally = None

    # --- reading back -----------------------------------------------------------------------

    def output_rows(self, start: int, stop: int) -> list[tuple[Any, ...]]:
        """The result columns of the output for rows start <= idx < stop, in order (a row with no
        result yet is `pending`; a dedup copy carries none of the usage: `readback`)."""
        return readback.output_rows(self._db, self._results(), start, stop)

    def parsed_texts(self) -> Iterator[str | None]:
        """The parsed structured answer (JSON text) of every mapped row, in input order."""
        yield from readback.parsed_texts(self._db, self._results())

    def counts(self) -> dict[str, Any]:
        """Rows by state and usage over the rows mapped now (copies carry no usage)."""
        return readback.counts(self._tallies())

    def by_model(self, endpoints: bool = False) -> list[readback.UsageRow]:
        """Per-model usage for the sidecar (per endpoint and model with `endpoints`)."""
        return readback.by_model(self._tallies(), endpoints)

    def _tallies(self) -> list[tuple[Any, ...]]:
        """`readback.tallies`, which counts() and by_model() both read: a writer keeps it until
        it writes again (a reader cannot know)."""
        if self._tally is None or self._readonly:
            self._tally = readback.tallies(self._db, self._results())
        return self._tally

    def _results(self) -> str:
        """Where every result is, for reading back once a run has ended.

        A run that began with no earlier result has all of its results in `log`, one per key:
        indexing `log` by key costs a fifth of folding it (which rewrites every result), so the
        fold waits for the next run. A run that resumed folds: `results` then has everything. A
        reader during a run needs the view.
        """
        if self._readonly:
            return "all_results" if self._logged else "results"
        with contextlib.suppress(JobStopped):  # a full disk: the view still reads it all
            if not self._earlier:
                if not self._log_indexed:
                    self._index_log()
                return "log"
            if self.fold():
                self._copy_meanwhile()
        return "all_results" if self._logged else "results"

    @_writes
    def _index_log(self) -> None:
        self._db.execute(_INDEX_LOG)
        self._log_indexed = True
        self._copy_meanwhile()

    def _copy_meanwhile(self) -> None:
        """Reading back: the run has ended; the checkpoint thread copies what is left meanwhile."""
        if self._checkpointer is not None:
            self._checkpointer.nudge()


class GroupCommit:
    """Group commit on the event loop: a worker's answer is durable before it sends the next request.

    Workers `await commit(outcome)`; the one `run()` task commits everything buffered in a single
    transaction as soon as the loop is free (and at least every `every` seconds for rows the
    producer buffers), then wakes every worker whose result that transaction carried. Results that
    arrive together share one commit, so the journal keeps up with thousands of answers a second,
    and a `kill -9` at any moment loses (and so pays twice) at most one request per worker: the
    ones in flight.
    """

    def __init__(self, journal: Journal, every: float,
                 on_commit: Callable[[int], None] = lambda n: None) -> None:
        self.journal = journal
        self.every = every
        self._on_commit = on_commit
        self._wake = asyncio.Event()
        self._next: asyncio.Future[None] | None = None  # resolved by the next commit
        self._failed: BaseException | None = None

    async def commit(self, outcome: Outcome) -> None:
        """Buffer a finished request and return once it is committed."""
        self.journal.record(outcome)
        if self._failed is not None:  # no flusher is left to wake us
            raise self._failed
        # One future for every worker in the same transaction. Cancelling one worker cancels it
        # for all: workers are only ever cancelled all together (a second Ctrl-C), and what they
        # buffered is still committed by the final flush.
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._wake.set()
        await self._next

    async def run(self) -> None:
        """Commit whenever something is waiting; cancel it to stop (then call `flush()`)."""
        self._tick(asyncio.get_running_loop())  # a commit every `every` s: the producer's rows
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self.flush()
        finally:
            self._ticking.cancel()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wake.set()
        self._ticking = loop.call_later(self.every, self._tick, loop)

    def flush(self) -> int:
        """Commit now and wake the workers waiting on it; returns results committed."""
        done, self._next = self._next, None
        try:
            n = self.journal.flush()
        except BaseException as exc:
            self._failed = exc
            if done is not None and not done.done():
                done.set_exception(exc)
            raise
        self._on_commit(n)
        if done is not None and not done.done():
            done.set_result(None)
        return n


def resend(status: str, error_kind: str | None, retry_failed: bool) -> bool:
    """Does a request with this earlier result need sending again?"""
    if status == OK:
        return False
    assert status == ERROR
    return retry_failed or error_kind == EXHAUSTED
