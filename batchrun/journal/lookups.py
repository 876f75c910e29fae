"""Lookups: what planning asks the journal, key by key (earlier results, batch holds).

Each is a function of the journal's connection; the journal decides when to ask (a fresh journal
has nothing to look up) and which of its tables hold what.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

_CHUNK = 900  # keys bound to one statement: under the 999 values SQLite before 3.32 allows


def finished(db: sqlite3.Connection, keys: Sequence[bytes],
             overlay: str | None) -> dict[bytes, tuple[str, str | None]]:
    """(status, error_kind) of the keys that have a result in `results`, or in `overlay` (the
    newest states of `log`, `log_overlay`), which wins."""
    tables = ["results"] if overlay is None else ["results", overlay]
    found: dict[bytes, tuple[str, str | None]] = {}
    for marks, chunk in _chunked(keys):
        for table in tables:
            order = " ORDER BY seq" if table == "log" else ""
            for key, status, kind in db.execute(
                f"SELECT key, status, error_kind FROM {table} WHERE key IN ({marks}){order}",
                chunk,
            ):
                found[key] = (status, kind)
    return found


def log_overlay(db: sqlite3.Connection) -> str | None:
    """`log` itself where a finished run indexed it by key; else (a run under way or killed)
    the newest state of each key in it, indexed once in a temporary table; None: empty."""
    if db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'log_key'"
    ).fetchone():
        return "log"
    if db.execute("SELECT EXISTS (SELECT 1 FROM log)").fetchone()[0]:
        db.executescript(
            "CREATE TEMP TABLE logged (key BLOB PRIMARY KEY, status TEXT, "
            "error_kind TEXT) WITHOUT ROWID; INSERT OR REPLACE INTO temp.logged "
            "SELECT key, status, error_kind FROM log ORDER BY seq;"
        )
        return "temp.logged"
    return None


def any_held(db: sqlite3.Connection) -> bool:
    """Do live Batch API batches hold any key?"""
    try:
        return bool(db.execute(
            "SELECT EXISTS (SELECT 1 FROM batch_rows WHERE sub IS NOT NULL)").fetchone()[0])
    except sqlite3.OperationalError:  # a journal from before the Batch API backend
        return False


def held(db: sqlite3.Connection, keys: Sequence[bytes]) -> set[bytes]:
    """The keys among `keys` that a live Batch API batch holds (never sent again meanwhile)."""
    found: set[bytes] = set()
    for marks, chunk in _chunked(keys):
        found.update(key for (key,) in db.execute(
            f"SELECT key FROM batch_rows WHERE sub IS NOT NULL AND key IN ({marks})", chunk))
    return found


def held_count(db: sqlite3.Connection) -> int:
    """Distinct requests of this run's mapped rows that live Batch API batches hold."""
    return int(db.execute(
        "SELECT COUNT(DISTINCT r.key) FROM rows r JOIN batch_rows b ON b.key = r.key "
        "WHERE b.sub IS NOT NULL").fetchone()[0])


def _chunked(keys: Sequence[bytes]) -> Iterator[tuple[str, list[Any]]]:
    """The distinct keys, a chunk at a time, each with its placeholders (`?,?,...`)."""
    items = list(set(keys))
    for start in range(0, len(items), _CHUNK):
        chunk = items[start : start + _CHUNK]
        yield ",".join("?" * len(chunk)), chunk

