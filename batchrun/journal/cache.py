"""The shared response cache (`--cache PATH`): successful answers kept across runs and outputs.

One SQLite file, keyed by the request's identity (the same key the journal gives a request: its
rendered body and the endpoint it goes to), holding only answers that succeeded. A run looks its
rows up before sending and answers a hit from the cache at no cost; answers enter the cache as the
journal commits them. Any number of runs and processes may share one file at once: WAL lets
readers go on beside a writer, writers take turns (`busy_timeout`), and every write is
`INSERT OR IGNORE` of an answer that is the same whoever wrote it first, so nothing is lost or
corrupted. A file that is not a cache, or a cache of another version, is refused (exit 2); it is
never silently emptied.

    answers  key -> the answer (text, finish reason, usage, model, response id, parsed JSON),
             when it was stored and last used, and its size (for `prune --max-size`); rows
             are appended in rowid order and found through the unique index on `key`, so an
             answer with a random key dirties a small index page, not a page of answers
    meta     `format` = "batchrun-cache", `version`
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from batchrun.errors import JobStopped, UsageError, operating_error
from batchrun.protocol.outcome import OK, Outcome

FORMAT = "batchrun-cache"
VERSION = "1"
LOOKUP_CHUNK = 500  # keys per lookup query (SQLite's bound-parameter limit is higher)
WAIT_MS = 30_000  # how long a writer waits for another process's transaction

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE,
    response TEXT, finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
    total_tokens INTEGER, model TEXT, response_id TEXT, parsed TEXT, latency_ms REAL,
    created_at REAL NOT NULL, used_at REAL NOT NULL, size INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS answers_used ON answers (used_at);
INSERT OR IGNORE INTO meta VALUES ('format', '{FORMAT}');
INSERT OR IGNORE INTO meta VALUES ('version', '{VERSION}');
"""
CACHE_EVERY = 0.5  # seconds between two copies of a journal's new answers into the cache
# What the copier copies from a journal (its connection has the cache attached as `shared`):
# the successful answers logged since the last copy (seq in (mark, upto]), sent and paid for (a
# cache hit has 0 attempts and is in the cache already). Params: (now, mark, upto).
_COPY = """INSERT OR IGNORE INTO shared.answers (key, response, finish_reason, prompt_tokens,
        completion_tokens, total_tokens, model, response_id, parsed, latency_ms, created_at,
        used_at, size)
    SELECT key, response, finish_reason, prompt_tokens, completion_tokens, total_tokens, model,
           response_id, parsed, latency_ms, ?1, ?1,
           length(COALESCE(response, '')) + length(COALESCE(parsed, ''))
    FROM main.{table} WHERE status = 'ok' AND attempts > 0"""
CACHE_FROM_LOG = _COPY.format(table="log") + " AND seq > ?2 AND seq <= ?3"
CACHE_FROM_RESULTS = _COPY.format(table="results")  # what earlier runs folded: at attach, once
_COLUMNS = ("response", "finish_reason", "prompt_tokens", "completion_tokens", "total_tokens",
            "model", "response_id", "parsed", "latency_ms", "used_at")
TOUCH_AFTER = 3600.0  # seconds: a hit marks its answer used again only when it was not this hour
# A request the cache answers, as a run records it in its journal (whose connection has the cache
# attached as `shared`): the answer as first paid for, with none of its usage (this run paid
# nothing: 0 tokens, 0 attempts, as a dedup copy shows; its cost 0, or None without a price),
# copied inside SQLite. `from_cache` is the same record made in Python, for the Ray ledger.
_RECORD = """INSERT INTO main.log (key, status, response, finish_reason, prompt_tokens,
        completion_tokens, total_tokens, attempts, model, response_id, cost_usd, parsed,
        finished_at, endpoint)
    SELECT {key}, 'ok', response, finish_reason, 0, 0, 0, 0, model, response_id, ?, parsed, ?, {endpoint}
    FROM shared.answers WHERE key {match}"""
# Params: (the run's key, cost, now, endpoint, the cache's key).
RECORD_HIT = _RECORD.format(key="?", endpoint="?", match="= ?")
# The same for requests the run knows by the cache's own key (one endpoint): a statement per
# LOOKUP_CHUNK keys. Params: (cost, now, *keys).
RECORD_HITS = _RECORD.format(key="key", endpoint="NULL", match="IN ({marks})")


class Hit(NamedTuple):
    """A cached answer, as the provider gave it when it was first paid for."""

    response: str | None
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    model: str | None
    response_id: str | None
    parsed: str | None
    latency_ms: float | None
    used_at: float  # when a run last used it (`prune --older-than` goes by it)

    @property
    def stale(self) -> bool:
        """Not marked used this hour: worth marking again (`Cache.touch`); every hit would cost a
        random write per row."""
        return _stale(self.used_at)


class Known(NamedTuple):
    """That the cache answers a request, and when its answer was last used: what a run needs to
    answer it from the cache (the journal copies the answer itself: `RECORD_HIT`)."""

    used_at: float

    @property
    def stale(self) -> bool:
        """Not marked used this hour (`Hit.stale`)."""
        return _stale(self.used_at)


def _stale(used_at: float) -> bool:
    return used_at < time.time() - TOUCH_AFTER


@dataclass(frozen=True)
class CacheStats:
    """What a cache holds (`batchrun cache stats`)."""

    path: Path
    answers: int
    bytes_on_disk: int
    answer_bytes: int  # the texts kept: what `prune --max-size` bounds
    oldest: float | None
    newest: float | None
    models: list[tuple[str, int]]  # answers per model, most first


class Cache:
    """An open cache file; `with Cache(path) as cache: ...` closes it."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if not create and not path.exists():
            raise UsageError(f"no cache at {path}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=WAIT_MS / 1000)
        except OSError as exc:
            raise operating_error(exc, "open the cache") from None
        except sqlite3.Error as exc:
            raise UsageError(f"cache {path} cannot be opened ({exc}); check --cache") from None
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise UsageError(f"cache {path} is not a batchrun cache ({exc}); "
                             "check --cache, or give a new file") from None
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout={WAIT_MS}")
        tables = {name for (name,) in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise UsageError(f"cache {self.path} is an SQLite file but not a batchrun cache; "
                             "check --cache, or give a new file")
        if "meta" in tables:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format") != FORMAT:
                raise UsageError(f"cache {self.path} is an SQLite file but not a batchrun cache; "
                                 "check --cache, or give a new file")
            if meta.get("version") != VERSION:
                raise UsageError(f"cache {self.path} is of version {meta.get('version')}, this "
                                 f"batchrun reads version {VERSION}: use another --cache file")
        self._db.execute("PRAGMA journal_mode=WAL")  # readers beside a writer, across processes
        self._db.execute("PRAGMA synchronous=NORMAL")  # as durable as the journal
        if "answers" not in tables:
            self._db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (every write is already committed)."""
        self._db.close()

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, Hit]:
        """The cached answers of `keys` that have one."""
        return {key: Hit(*values) for key, *values in self._select(_COLUMNS, keys)}

    def known(self, keys: Sequence[bytes]) -> dict[bytes, Known]:
        """Which of `keys` the cache answers (not the answers: a run's journal copies them)."""
        return {key: Known(used_at) for key, used_at in self._select(("used_at",), keys)}

    def _select(self, columns: Sequence[str], keys: Sequence[bytes]) -> Iterator[tuple[Any, ...]]:
        for i in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[i:i + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            yield from self._db.execute(
                f"SELECT key, {', '.join(columns)} FROM answers WHERE key IN ({marks})", chunk)

    def touch(self, keys: Iterable[bytes]) -> None:
        """Mark answers as used now (`prune --older-than` keeps what runs still use)."""
        now = time.time()
        rows = [(now, key) for key in keys]
        if rows:
            self._write("UPDATE answers SET used_at = ? WHERE key = ?", rows)

    def store(self, outcomes: Iterable[Outcome]) -> int:
        """Keep the successful ones of `outcomes` (errors are never cached); how many were new."""
        now = time.time()
        rows = [(o.key, o.response, o.finish_reason, o.prompt_tokens, o.completion_tokens,
                 o.total_tokens, o.model, o.response_id, o.parsed, o.latency_ms, now, now,
                 len(o.response or "") + len(o.parsed or ""))
                for o in outcomes if o.status == OK]
        if not rows:
            return 0
        before = self._db.total_changes
        self._write("INSERT OR IGNORE INTO answers (key, response, finish_reason, prompt_tokens, "
                    "completion_tokens, total_tokens, model, response_id, parsed, latency_ms, "
                    "created_at, used_at, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows)
        return self._db.total_changes - before

    def _write(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        _write(self._db, self.path, sql, rows)

    def stats(self) -> CacheStats:
        """Answers, sizes, age and models."""
        answers, answer_bytes, oldest, newest = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created_at), MAX(created_at) "
            "FROM answers").fetchone()
        models = [(m or "(unknown)", n) for m, n in self._db.execute(
            "SELECT model, COUNT(*) FROM answers GROUP BY model ORDER BY 2 DESC, 1")]
        on_disk = sum(p.stat().st_size for p in (self.path, _wal(self.path)) if p.exists())
        return CacheStats(self.path, answers, on_disk, answer_bytes, oldest, newest, models)

    def prune(self, older_than: float | None = None, max_size: int | None = None) -> int:
        """Drop answers unused for `older_than` seconds, then the least recently used until the
        kept texts fit in `max_size` bytes; how many were dropped. The file shrinks after."""
        before = self._db.total_changes
        if older_than is not None:
            self._write("DELETE FROM answers WHERE used_at < ?", [(time.time() - older_than,)])
        if max_size is not None:
            total = self.stats().answer_bytes
            doomed: list[tuple[bytes]] = []
            for key, size in self._db.execute(
                    "SELECT key, size FROM answers ORDER BY used_at, key"):
                if total <= max_size:
                    break
                doomed.append((key,))
                total -= size
            if doomed:
                self._write("DELETE FROM answers WHERE key = ?", doomed)
        dropped_rows = self._db.total_changes - before
        if dropped_rows:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
        return dropped_rows


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


class Copier:
    """Copies the answers a journal commits into the shared cache, on a thread of its own.

    Its connection reads the journal and has the cache attached, so each copy is one INSERT ...
    SELECT in SQLite's C, beside the event loop rather than inside a commit that workers wait for
    (SQLite lets go of the GIL). It copies every CACHE_EVERY seconds: a cache's random keys make
    a page of its B-tree dirty per answer, so copying each small group commit would write most of
    the tree again and again. `catch_up` copies now, on the caller's thread (before a fold empties
    the log; at close). On start it copies what an earlier run of the output committed and never
    copied (a kill -9 between two copies), so the cache misses nothing the journal has.
    """

    def __init__(self, journal: Path, cache: Cache) -> None:
        self._path = cache.path
        self._db = sqlite3.connect(journal, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout={WAIT_MS}")
        self._db.execute("ATTACH DATABASE ? AS shared", (str(cache.path),))
        self._db.execute("PRAGMA shared.synchronous=NORMAL")  # as durable as the journal
        self._lock = threading.Lock()
        self._upto = 0  # the last `log` seq copied
        self._stop = threading.Event()
        self._failed: BaseException | None = None
        with self._lock:
            self._copy(CACHE_FROM_RESULTS, (time.time(),))
            self._copy_log()
        self._thread = threading.Thread(target=self._work, name="batchrun-cache", daemon=True)
        self._thread.start()

    def catch_up(self) -> None:
        """Copy what is logged now, on this thread (a copy under way finishes first)."""
        with self._lock:
            self._copy_log()
        self._raise()

    def folded(self) -> None:
        """The journal emptied its log (after a `catch_up`): its seq starts again from 1."""
        with self._lock:
            self._upto = 0

    def close(self) -> None:
        """Copy the rest, then stop."""
        self._stop.set()
        self._thread.join()
        try:
            self.catch_up()
        finally:
            self._db.close()

    def _work(self) -> None:
        while not self._stop.wait(CACHE_EVERY):
            with self._lock:
                try:
                    self._copy_log()
                except JobStopped as exc:  # told at the next catch_up, on the run's thread
                    self._failed = exc
                    return

    def _copy_log(self) -> None:
        (upto,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM log").fetchone()
        if upto < self._upto:  # another process's connection folded the log (the Ray ledger's)
            self._upto = 0
        if upto > self._upto:
            self._copy(CACHE_FROM_LOG, (time.time(), self._upto, upto))
            self._upto = upto

    def _copy(self, sql: str, params: tuple[float, ...]) -> None:
        _write(self._db, self._path, sql, [params])

    def _raise(self) -> None:
        if self._failed is not None:
            raise self._failed


def _write(db: sqlite3.Connection, path: Path, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
    """`sql` once per row of `rows`, in one short transaction of `db` (another process's is waited
    for: busy_timeout); a cache that cannot be written stops the run, with its answers kept."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(sql, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except sqlite3.OperationalError as exc:  # a full disk, a file made read-only meanwhile
        raise JobStopped(f"stopped: cache {path} cannot be written ({exc}); what is answered is "
                         "kept in the journal") from None
