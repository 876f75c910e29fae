"""The journal file itself: what a finished run leaves, and the end-of-run checkpoint."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from batchrun.journal import Journal
from batchrun.outcome import OK, Outcome


def _outcome(i: int) -> Outcome:
    return Outcome(key=i.to_bytes(16, "big"), status=OK, response=f"answer {i} " * 20,
                   finish_reason="stop", prompt_tokens=10, completion_tokens=20, total_tokens=30,
                   attempts=1, latency_ms=1.0, model="m", response_id=f"r{i}",
                   finished_at=time.time())


def test_reading_back_empties_the_wal_before_the_next_commit_and_loses_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    wal = tmp_path / "j.sqlite-wal"
    journal = Journal(path)
    n = 5_000
    journal.map_rows((i, k, k, 0) for i, k in ((i, i.to_bytes(16, "big")) for i in range(n)))
    for start in range(0, n, 50):  # commits the size of a busy run's
        for i in range(start, start + 50):
            journal.record(_outcome(i))
        journal.flush()
    assert wal.stat().st_size > 1_000_000
    counts = journal.counts()  # reading back: the checkpoint thread now empties the WAL
    assert (counts["mapped"], counts["ok"], counts["total_tokens"]) == (n, n, 30 * n)
    rows = journal.output_rows(0, n)
    assert [r[0] for r in rows[:2]] == ["answer 0 " * 20, "answer 1 " * 20]
    journal.set_meta(state="finished")  # waits for the thread, then commits
    assert wal.stat().st_size < 100_000  # emptied, then a page or two for the last commit
    journal.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT COUNT(*) FROM all_results").fetchone()[0] == n
        assert db.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()[0] == '"finished"'
    finally:
        db.close()
