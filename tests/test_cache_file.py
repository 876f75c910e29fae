"""The shared cache file: what it keeps, many processes at once, files it refuses, stats and prune."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchrun.errors import UsageError
from batchrun.journal.cache import Cache
from batchrun.protocol.outcome import ERROR, OK, Outcome

from .helpers import run_cli


def _key(i: int) -> bytes:
    return hashlib.sha256(f"request {i}".encode()).digest()


def _answer(i: int, text: str | None = None) -> Outcome:
    return Outcome(_key(i), OK, response=text or f"answer {i}", finish_reason="stop",
                   prompt_tokens=10, completion_tokens=5, total_tokens=15, attempts=1,
                   latency_ms=12.5, model="sim-1", response_id=f"chatcmpl-{i}", cost_usd=0.01)


def test_successful_answers_are_kept_and_errors_never(tmp_path: Path) -> None:
    with Cache(tmp_path / "c.sqlite") as cache:
        failed = Outcome(_key(2), ERROR, error="HTTP 500", attempts=6)
        assert cache.store([_answer(1), failed]) == 1
        assert cache.store([_answer(1)]) == 0  # the first answer stays
        hits = cache.lookup([_key(1), _key(2), _key(3)])
    assert list(hits) == [_key(1)]
    hit = hits[_key(1)]
    assert (hit.response, hit.finish_reason, hit.prompt_tokens, hit.completion_tokens,
            hit.model, hit.response_id) == ("answer 1", "stop", 10, 5, "sim-1", "chatcmpl-1")


def test_a_journal_records_a_hit_as_the_cached_answer_with_none_of_its_usage(
        tmp_path: Path) -> None:
    # A run copies each hit from the cache into its journal inside SQLite: the same record as
    # from_cache makes in Python (the Ray ledger's), and a key whose answer is gone meanwhile
    # (another run pruned it) is handed back to be sent.
    from batchrun.journal.database import Journal
    from batchrun.running.rows import from_cache

    with Cache(tmp_path / "c.sqlite") as cache:
        cache.store([_answer(1), _answer(2)])
        assert set(cache.known([_key(1), _key(2), _key(3)])) == {_key(1), _key(2)}
        hit = cache.lookup([_key(1)])[_key(1)]
        journal = Journal(tmp_path / "j.sqlite")
        try:
            journal.attach_cache(cache, copy=False)
            # One endpoint: the run knows each request by the cache's own key.
            gone = journal.record_cached([_key(1), _key(3)], 0.0, 123.0)
            assert gone == [_key(3)]
            # Several: its own key, and the endpoint the answer is kept for.
            kept = {b"mine": (_key(2), "A"), b"theirs": (_key(4), "B")}
            assert journal.record_cached([b"mine", b"theirs"], 0.0, 123.0, kept) == [b"theirs"]
            rows = {row[0]: row for row in journal.db.execute("SELECT * FROM all_results")}
        finally:
            journal.close()
    assert set(rows) == {_key(1), b"mine"}
    assert rows[_key(1)] == tuple(from_cache(_key(1), hit, 0.0, 123.0))
    mine = Outcome(*rows[b"mine"])
    assert (mine.response, mine.endpoint, mine.attempts, mine.prompt_tokens, mine.cost_usd) == (
        "answer 2", "A", 0, 0, 0.0)


_WRITER = """
import hashlib, sys
from pathlib import Path
from batchrun.journal.cache import Cache
from batchrun.protocol.outcome import OK, Outcome
path, start, stop = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with Cache(path) as cache:
    for i in range(start, stop, 10):
        cache.store([Outcome(hashlib.sha256(f"request {j}".encode()).digest(), OK,
                             response=f"answer {j}", finish_reason="stop", model="sim-1")
                     for j in range(i, min(i + 10, stop))])
        cache.lookup([hashlib.sha256(f"request {j}".encode()).digest() for j in range(0, 50)])
"""


def test_many_processes_write_one_cache_at_once_without_loss_or_corruption(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    # Four writers, overlapping halves: 0-600, 300-900, 0-600, 300-900.
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(a), str(b)],
                              stderr=subprocess.PIPE, text=True)
             for a, b in ((0, 600), (300, 900), (0, 600), (300, 900))]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with Cache(path) as cache:
        hits = cache.lookup([_key(i) for i in range(900)])
        assert cache.stats().answers == 900
    assert {k: h.response for k, h in hits.items()} == {_key(i): f"answer {i}" for i in range(900)}
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def test_a_file_that_is_not_a_cache_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all, " * 100)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE results (x)")
    db.commit()
    db.close()
    newer = tmp_path / "newer.sqlite"
    with Cache(newer) as cache:
        cache.store([_answer(1)])
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value = '2' WHERE key = 'version'")
    db.commit()
    db.close()
    before = {p: p.read_bytes() for p in (garbage, other, newer)}

    for path, message in (
            (garbage, f"batchrun: cache {garbage} is not a batchrun cache (file is not a database); "
                      "check --cache, or give a new file"),
            (other, f"batchrun: cache {other} is an SQLite file but not a batchrun cache; check "
                    "--cache, or give a new file"),
            (newer, f"batchrun: cache {newer} is of version 2, this batchrun reads version 1: use "
                    "another --cache file")):
        result = run_cli("cache", "stats", path)
        assert result.returncode == 2
        assert result.stderr == message + "\n"
        with pytest.raises(UsageError):
            Cache(path)
    assert {p: p.read_bytes() for p in before} == before  # never silently emptied


def test_stats_and_prune_by_age_and_by_size(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with Cache(path) as cache:
        cache.store([_answer(i, "x" * 1000) for i in range(50)])
    db = sqlite3.connect(path)  # the first 20 were last used 40 days ago
    old = time.time() - 40 * 86_400
    db.executemany("UPDATE answers SET used_at = ?, created_at = ? WHERE key = ?",
                   [(old, old, _key(i)) for i in range(20)])
    db.commit()
    db.close()

    stats = run_cli("cache", "stats", path)
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.startswith(f"{path}: 50 answers, 50.0 kB of text, ")
    assert "  oldest    " in stats.stdout and "  model     sim-1: 50" in stats.stdout

    pruned = run_cli("cache", "prune", path, "--older-than", "30d")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith(f"{path}: 20 answers dropped, 30 kept (30.0 kB of answers, ")
    with Cache(path) as cache:
        assert set(cache.lookup([_key(i) for i in range(50)])) == {_key(i) for i in range(20, 50)}
        cache.touch([_key(i) for i in range(40, 50)])  # the last ten are in use again

    sized = run_cli("cache", "prune", path, "--max-size", "10kB")
    assert sized.returncode == 0, sized.stderr
    assert sized.stdout.startswith(f"{path}: 20 answers dropped, 10 kept (10.0 kB of answers, ")
    with Cache(path) as cache:
        assert set(cache.lookup([_key(i) for i in range(50)])) == {_key(i) for i in range(40, 50)}


def test_prune_needs_a_rule_and_readable_values(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    Cache(path).close()
    for args, line in (((), "cache prune: give --older-than AGE, --max-size SIZE, or both"),
                       (("--older-than", "soon"), "--older-than 'soon': give an age such as 30d, "
                                                 "12h, 90m or 45s"),
                       (("--max-size", "big"), "--max-size 'big': give a size such as 500MB, 1GB "
                                               "or 64MiB")):
        result = run_cli("cache", "prune", path, *args)
        assert result.returncode == 2
        assert result.stderr == f"batchrun: {line}\n"
    missing = run_cli("cache", "stats", tmp_path / "none.sqlite")
    assert missing.returncode == 2 and missing.stderr == f"batchrun: no cache at {tmp_path}/none.sqlite\n"
