"""The journal file itself: what it keeps, and how large its WAL grows."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from batchrun.journal.database import Journal
from batchrun.protocol.outcome import OK, Outcome


def _outcome(i: int) -> Outcome:
    return Outcome(key=i.to_bytes(16, "big"), status=OK, response=f"answer {i} " * 20,
                   finish_reason="stop", prompt_tokens=10, completion_tokens=20, total_tokens=30,
                   attempts=1, latency_ms=1.0, model="m", response_id=f"r{i}",
                   finished_at=time.time())


def test_the_wal_stays_a_few_mb_however_many_results_a_run_commits(tmp_path: Path) -> None:
    """Each commit appends a few pages to the WAL (~1 KB a result); without starting it over
    after each copy, 30,000 results would leave a WAL of ~30 MB, a million ~850 MB."""
    path = tmp_path / "j.sqlite"
    wal = tmp_path / "j.sqlite-wal"
    journal = Journal(path)
    n = 30_000
    journal.map_rows((i, k, k, 0) for i, k in ((i, i.to_bytes(16, "big")) for i in range(n)))
    largest = 0
    for start in range(0, n, 25):  # commits the size of a busy run's
        for i in range(start, start + 25):
            journal.record(_outcome(i))
        journal.flush()
        largest = max(largest, wal.stat().st_size)
    assert largest < 12_000_000, largest  # never restarted: ~27 MB here
    counts = journal.counts()
    assert (counts["mapped"], counts["ok"], counts["total_tokens"]) == (n, n, 30 * n)
    assert journal.output_rows(n - 1, n)[0][0] == f"answer {n - 1} " * 20
    journal.set_meta(state="finished")
    journal.close()
    assert not wal.exists()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT COUNT(*) FROM all_results").fetchone()[0] == n
        assert db.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()[0] == '"finished"'
    finally:
        db.close()
