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


# The tables as the version before issue 28 wrote them: no endpoint, cached_tokens,
# reasoning_tokens or provider_cost in results/log, no endpoint in timeline.
_OLD_RESULT = """status TEXT NOT NULL, response TEXT, finish_reason TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, total_tokens INTEGER, error TEXT,
    error_kind TEXT, attempts INTEGER, latency_ms REAL, model TEXT, response_id TEXT,
    cost_usd REAL, parsed TEXT, finished_at REAL"""
_OLD_NAMES = ("key, status, response, finish_reason, prompt_tokens, completion_tokens, "
              "total_tokens, error, error_kind, attempts, latency_ms, model, response_id, "
              "cost_usd, parsed, finished_at")
_OLD_SAMPLE = ("t, span, run, sent, ok, errors, retries, rate_limited, transient, prompt_tokens, "
               "completion_tokens, in_flight, pauses, rpm, tpm, rpm_limit, tpm_limit")


def _old_journal(path: Path) -> None:
    """A journal as the previous version left it: two results folded, one in `log`, a sample."""
    db = sqlite3.connect(path)
    db.executescript(f"""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE results (key BLOB PRIMARY KEY, {_OLD_RESULT}) WITHOUT ROWID;
        CREATE TABLE log (seq INTEGER PRIMARY KEY, key BLOB NOT NULL, {_OLD_RESULT});
        CREATE VIEW all_results AS SELECT {_OLD_NAMES} FROM log
            UNION ALL SELECT {_OLD_NAMES} FROM results WHERE key NOT IN (SELECT key FROM log);
        CREATE TABLE rows (idx INTEGER PRIMARY KEY, base BLOB NOT NULL, key BLOB NOT NULL,
            copy INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE timeline ({_OLD_SAMPLE});
        INSERT INTO meta VALUES ('schema', '"1"');
        INSERT INTO results (key, status, response, prompt_tokens, completion_tokens,
            total_tokens, attempts, cost_usd) VALUES
            (x'01', 'ok', 'a', 3, 2, 5, 1, 0.5), (x'02', 'ok', 'b', 3, 2, 5, 1, 0.5);
        INSERT INTO log (key, status, response, prompt_tokens, completion_tokens, total_tokens,
            attempts, cost_usd) VALUES (x'03', 'ok', 'c', 3, 2, 5, 1, 0.5);
        INSERT INTO rows VALUES (0, x'01', x'01', 0), (1, x'02', x'02', 0), (2, x'03', x'03', 0);
        INSERT INTO timeline VALUES (10.0, 1.0, 9.0, 3, 3, 0, 0, 0, 0, 9, 6, 0, 0, 60.0, NULL,
            NULL, NULL);
    """)
    db.commit()
    db.close()


def _columns(path: Path, table: str) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
    finally:
        db.close()


def test_a_reader_reads_an_older_journal_without_changing_it(tmp_path: Path) -> None:
    path = tmp_path / "o.journal.sqlite"
    _old_journal(path)
    reader = Journal(path, readonly=True)
    try:
        rows = reader.output_rows(0, 3)
        assert [row[0] for row in rows] == ["a", "b", "c"]
        assert reader.counts()["ok"] == 3 and reader.counts()["cost_usd"] == 1.5
        (sample,) = reader.timeline()
        assert sample.rpm == 60.0 and sample.endpoint is None
    finally:
        reader.close()
    assert "endpoint" not in _columns(path, "results")  # a reader never writes


def test_a_writer_adds_the_new_columns_to_an_older_journal_in_place(tmp_path: Path) -> None:
    path = tmp_path / "o.journal.sqlite"
    _old_journal(path)
    journal = Journal(path)
    journal.record(Outcome(b"\x04", OK, response="d", attempts=1, endpoint="A",
                           cached_tokens=2, reasoning_tokens=1, provider_cost=0.25))
    journal.flush()
    journal.close()
    added = ["endpoint", "cached_tokens", "reasoning_tokens", "provider_cost"]
    for table in ("results", "log"):
        assert _columns(path, table)[-4:] == added
    assert _columns(path, "timeline")[-1] == "endpoint"
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT response, endpoint, cached_tokens, provider_cost FROM all_results "
                          "ORDER BY key").fetchall() == [
            ("a", None, None, None), ("b", None, None, None), ("c", None, None, None),
            ("d", "A", 2, 0.25)]
    finally:
        db.close()
