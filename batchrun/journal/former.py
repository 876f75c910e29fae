"""Journals named by older versions: a `.jsonl` output's journal under a Parquet output's name.

Before each output owned its state, `x.jsonl` kept its journal and lock at `x.journal.sqlite` and
`x.journal.lock`, the names `x.parquet` keeps. Such a journal belongs to the output its `meta`
names (every run records it as it starts). Until a run moves it, readers find it there (`found`);
the first run of either output after the upgrade moves it to `x.jsonl.journal.sqlite`, holding
the locks of both (`settle`), so no run in progress or resumable output is lost. A run of an
older version still holds `x.journal.lock`: a run of `x.jsonl` waits for it like for its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from batchrun.data.locations import PARQUET_SUFFIX, former_sibling, sibling
from batchrun.errors import LockedError, UsageError

JOURNAL = ".journal.sqlite"
LOCK = ".journal.lock"
JSONL_SUFFIX = ".jsonl"
TRIES = 4  # looks at a busy lock, 20 ms apart: `status` holds a shared lock for a moment


def lock_path(output: Path) -> Path:
    """The output's own lock file, beside its journal (`x.journal.lock`, `x.jsonl.journal.lock`)."""
    return sibling(output, LOCK)


def found(output: Path) -> Path | None:
    """This output's journal where an older version left it, until a run moves it (else None)."""
    shared, own = former_sibling(output, JOURNAL), sibling(output, JOURNAL)
    if shared == own or own.exists() or not shared.exists():
        return None
    return shared if owner(shared) == output.name else None


def owner(journal: Path) -> str | None:
    """The file name of the output a journal belongs to, as its last run recorded it."""
    try:
        db = sqlite3.connect(f"{journal.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'output'").fetchone()
        finally:
            db.close()
        name = orjson.loads(row[0]) if row else None
    except (sqlite3.Error, orjson.JSONDecodeError):  # unreadable, or older than `meta`
        return None
    return name.rpartition("/")[2] if isinstance(name, str) else None


def held_by(output: Path) -> Path | None:
    """The former lock to look at as well for `output` (`status`): while its journal is still
    under the former name, a run of an older version may hold it."""
    return former_sibling(output, LOCK) if found(output) is not None else None


def settle(output: Path) -> None:
    """Holding `output`'s own lock: respect an older version's run of it, and move a journal
    left under the shared name to the name of the output it belongs to."""
    shared = former_sibling(output, JOURNAL)
    if output.name.endswith(JSONL_SUFFIX) and shared != sibling(output, JOURNAL):
        _settle_jsonl(output, shared)
    elif output.name.endswith(PARQUET_SUFFIX) and shared.exists():
        _settle_parquet(output, shared)


def _settle_jsonl(output: Path, shared: Path) -> None:
    """`x.jsonl`: its journal may still be `x.journal.sqlite`, under the lock `x.journal.lock`."""
    with _taken(former_sibling(output, LOCK), create=False) as holder:
        mine = shared.exists() and owner(shared) == output.name
        if holder is not None:  # a run holds the shared lock: an older version's run of ours?
            if mine or not shared.exists():
                raise LockedError(
                    f"another batchrun run (pid {holder}, an older version) is writing "
                    f"{output.name}; wait for it to finish or stop it, then run again")
            return  # x.parquet's run: its journal is its own
        own = sibling(output, JOURNAL)
        if mine and not own.exists():
            _move(shared, own)


def _settle_parquet(output: Path, shared: Path) -> None:
    """`x.parquet`: `x.journal.sqlite` is its own name, but may hold `x.jsonl`'s progress."""
    jsonl = output.with_name(output.name.removesuffix(PARQUET_SUFFIX) + JSONL_SUFFIX)
    if owner(shared) != jsonl.name:
        return
    with _taken(lock_path(jsonl), create=True) as holder:
        if holder is not None:
            raise LockedError(
                f"{shared.name} holds the progress of {jsonl.name} (from an older batchrun), whose "
                f"run (pid {holder}) is starting; run again when it is done")
        target = sibling(jsonl, JOURNAL)
        if target.exists():
            raise UsageError(
                f"{shared.name} holds the progress of {jsonl.name} (from an older batchrun), and "
                f"{target.name} exists too: move {shared.name} away to run {output.name}")
        _move(shared, target)


@contextlib.contextmanager
def _taken(path: Path, *, create: bool) -> Iterator[str | None]:
    """Hold `path` exclusively for the block (None), or give the pid of the process that holds
    it; a lock file that does not exist (`create=False`) is held by nobody."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        yield None
        return
    try:
        for attempt in range(TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == TRIES - 1:
                    yield os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                    return
                time.sleep(0.02)
        try:
            yield None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _move(journal: Path, target: Path) -> None:
    """Move a journal nobody has open for writing: its WAL copied in first, then renamed."""
    try:
        db = sqlite3.connect(journal, isolation_level=None)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()  # the last connection: SQLite removes the emptied WAL
    except sqlite3.Error as exc:
        raise UsageError(f"journal {journal} is not readable ({exc}); move it away or run with "
                         "--fresh") from None
    os.rename(journal, target)
    for tail in ("-wal", "-shm"):  # left only if a reader had it open: the WAL goes along
        leftover = journal.with_name(journal.name + tail)
        if tail == "-wal" and leftover.exists():
            os.rename(leftover, target.with_name(target.name + tail))
        else:
            leftover.unlink(missing_ok=True)
