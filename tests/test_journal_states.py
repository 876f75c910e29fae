"""The journal's states, directly: where results live (log, results), when `log` is folded or
indexed, and what a reader (`plan`, `status`) sees while a run is under way, killed or done."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from batchrun.journal.database import Journal
from batchrun.protocol.outcome import ERROR, EXHAUSTED, OK, Outcome


def _keys(n: int, tag: str = "k") -> list[bytes]:
    return [f"{tag}{i:04d}".encode() for i in range(n)]


def _write_run(path: Path, keys: list[bytes], status: str = OK, *, close: bool = True) -> Journal:
    """A writer maps `keys` as the run's rows and commits one result per key."""
    journal = Journal(path)
    journal.start_mapping()
    journal.map_rows([(i, key, key, 0) for i, key in enumerate(keys)])
    for key in keys:
        journal.record(Outcome(key, status, response="r" if status == OK else None,
                               error=None if status == OK else "boom",
                               error_kind=None if status == OK else EXHAUSTED,
                               attempts=1, prompt_tokens=3, completion_tokens=2, total_tokens=5))
    journal.flush()
    if close:
        journal.close()
    return journal


def _tables(path: Path) -> tuple[int, int, bool]:
    """(rows in results, rows in log, is log indexed by key), read behind the journal's back."""
    db = sqlite3.connect(path)
    try:
        results = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        log = db.execute("SELECT COUNT(*) FROM log").fetchone()[0]
        indexed = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'log_key'"
        ).fetchone() is not None
        return results, log, indexed
    finally:
        db.close()


def test_a_fresh_run_keeps_its_results_in_log_and_indexes_it_when_read_back(tmp_path: Path) -> None:
    path = tmp_path / "o.journal.sqlite"
    journal = _write_run(path, _keys(50), close=False)
    assert _tables(path) == (0, 50, False)  # appended, nothing folded, no index on the hot path
    counts = journal.counts()  # reading back at the end of the run
    assert (counts["ok"], counts["total_tokens"]) == (50, 250)
    assert _tables(path) == (0, 50, True)  # indexed, not folded: a fifth of the cost
    journal.close()
    reader = Journal(path, readonly=True)
    try:  # a reader lays the indexed log over `results`
        assert set(reader.finished(_keys(50))) == set(_keys(50))
        assert reader.counts()["ok"] == 50
    finally:
        reader.close()
    assert _tables(path) == (0, 50, True)  # readers change nothing


def test_the_next_writer_folds_the_log_into_results_when_it_opens(tmp_path: Path) -> None:
    path = tmp_path / "o.journal.sqlite"
    _write_run(path, _keys(20))
    journal = Journal(path)
    try:
        assert _tables(path) == (20, 0, False)  # folded; the index went with the log's rows
        assert journal.finished(_keys(20))[_keys(20)[0]] == (OK, None)
    finally:
        journal.close()


def test_a_killed_run_s_log_is_folded_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "o.journal.sqlite"
    _write_run(path, _keys(30), close=False)  # never closed, never read back: as after a kill -9
    assert _tables(path) == (0, 30, False)
    journal = Journal(path)
    try:
        assert _tables(path) == (30, 0, False)
        assert len(journal.finished(_keys(30))) == 30
    finally:
        journal.close()


def test_a_reader_during_a_run_sees_the_newest_state_of_each_key(tmp_path: Path) -> None:
    path = tmp_path / "o.journal.sqlite"
    _write_run(path, _keys(10), status=ERROR)  # an earlier run: all exhausted
    writer = _write_run(path, _keys(10), status=OK, close=False)  # folded at open, then logged anew
    try:
        assert _tables(path) == (10, 10, False)
        reader = Journal(path, readonly=True)
        try:  # the log (not indexed: a run under way) overlays `results`, later over earlier
            assert set(reader.finished(_keys(10)).values()) == {(OK, None)}
            assert reader.counts()["ok"] == 10 and reader.counts()["error"] == 0
        finally:
            reader.close()
    finally:
        writer.close()


def test_a_resumed_run_folds_when_it_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "o.journal.sqlite"
    _write_run(path, _keys(10, "a"))
    journal = _write_run(path, _keys(10, "a") + _keys(5, "b"), close=False)
    try:
        # Earlier results exist, so reading back folds rather than indexes.
        assert journal.counts()["ok"] == 15
        results, log, _ = _tables(path)
        assert (results, log) == (15, 0)
    finally:
        journal.close()


def test_an_old_journal_without_a_log_table_is_read_from_results(tmp_path: Path) -> None:
    path = tmp_path / "o.journal.sqlite"
    _write_run(path, _keys(4))
    Journal(path).close()  # folded: everything in results
    db = sqlite3.connect(path)
    db.execute("DROP TABLE log")  # as written by a version before `log` existed
    db.commit()
    db.close()
    reader = Journal(path, readonly=True)
    try:
        assert reader.counts()["ok"] == 4 and len(reader.finished(_keys(4))) == 4
    finally:
        reader.close()
