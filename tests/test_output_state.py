"""Each output owns its state: `x.parquet` and `x.jsonl` never share a journal, lock, sidecar,
report or status, and a journal an older version named as another output's is found and moved."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from batchrun.journal.database import journal_path

from .helpers import (
    clean_env,
    prompts_csv,
    read_output,
    refused,
    run_cli,
    run_job,
    start_cli,
    wait_until,
)


def _usage_ok(sidecar: Path) -> int:
    return sum(row["rows_ok"] for row in pq.read_table(sidecar).to_pylist())


def _status_rows(output: Path) -> str:
    result = run_cli("status", output)
    assert result.returncode == 0, result.stderr
    return next(line.split(None, 1)[1] for line in result.stdout.splitlines()
                if line.strip().startswith("rows"))


def _owner(journal: Path) -> str:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return str(orjson.loads(db.execute("SELECT value FROM meta WHERE key = 'output'")
                                .fetchone()[0]))
    finally:
        db.close()


def _as_an_older_version_left_it(output: Path) -> Path:
    """Rename a `.jsonl` output's journal to the name versions before 0.x gave it (the one
    `x.parquet` keeps); the file itself is what they wrote (the schema did not change)."""
    new = journal_path(output)
    old = output.with_name(output.name.removesuffix(".jsonl") + ".journal.sqlite")
    assert new.name == f"{output.name}.journal.sqlite" and not old.exists()
    new.rename(old)
    output.with_name(f"{output.name}.journal.lock").unlink()
    return old


def test_a_parquet_and_a_jsonl_output_of_one_stem_keep_apart(tmp_path: Path, sim) -> None:
    server = sim()
    five = prompts_csv(tmp_path / "five.csv", 5)
    one = prompts_csv(tmp_path / "one.csv", 1, text="Another job's prompt {i}.")
    parquet, jsonl = tmp_path / "coll.parquet", tmp_path / "coll.jsonl"
    run_job(five, parquet, server.base_url, check=True)
    run_job(one, jsonl, server.base_url, check=True)
    assert server.stats.requests == 6
    names = {p.name for p in tmp_path.iterdir()}
    assert {"coll.journal.sqlite", "coll.journal.lock", "coll.usage.parquet",
            "coll.jsonl.journal.sqlite", "coll.jsonl.journal.lock",
            "coll.jsonl.usage.parquet"} <= names
    assert _usage_ok(tmp_path / "coll.usage.parquet") == 5  # not overwritten by the JSONL run
    assert _usage_ok(tmp_path / "coll.jsonl.usage.parquet") == 1
    assert _status_rows(parquet).startswith("5 total: 5 answered")
    assert _status_rows(jsonl).startswith("1 total: 1 answered")
    # Each resumes from its own journal: nothing is sent again.
    run_job(five, parquet, server.base_url, check=True)
    run_job(one, jsonl, server.base_url, check=True)
    assert server.stats.requests == 6 and len(read_output(parquet)) == 5
    for output, page in ((parquet, "coll.report.html"), (jsonl, "coll.jsonl.report.html")):
        result = run_cli("report", output)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / page).exists()


def test_a_run_of_one_does_not_lock_out_the_other(tmp_path: Path, sim) -> None:
    server = sim(latency=0.2)
    src = prompts_csv(tmp_path / "in.csv", 40)
    parquet, jsonl = tmp_path / "x.parquet", tmp_path / "x.jsonl"
    slow = start_cli("run", "--input", src, "--output", parquet, "--base-url", server.base_url,
                     "--model", "sim-1", "--concurrency", "2", "--no-progress")
    try:
        wait_until(lambda: server.stats.requests >= 2, slow)
        quick = run_job(prompts_csv(tmp_path / "two.csv", 2), jsonl, server.base_url)
        assert quick.returncode == 0, quick.stderr  # a lock of its own, not x.parquet's
        assert slow.poll() is None  # still running meanwhile
        again = run_job(src, parquet, server.base_url)
        refused(again, "another batchrun run", "x.parquet")
    finally:
        slow.kill()
        slow.communicate(timeout=30)


def test_an_old_named_journal_of_a_jsonl_output_is_found_moved_and_resumed(
        tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 6)
    out = tmp_path / "answers.jsonl"
    run_job(src, out, server.base_url, check=True)
    old = _as_an_older_version_left_it(out)
    assert _status_rows(out).startswith("6 total: 6 answered")  # found where it is
    prompts_csv(src, 10)  # the input grew: 4 rows to send
    run_job(src, out, server.base_url, check=True)
    assert server.stats.requests == 10  # the 6 answered rows were not paid for again
    assert not old.exists() and journal_path(out) == tmp_path / "answers.jsonl.journal.sqlite"
    assert _owner(journal_path(out)).endswith("answers.jsonl")
    assert len(out.read_text(encoding="utf-8").splitlines()) == 10
    # x.parquet's journal name is free again: its first run starts from nothing.
    run_job(src, tmp_path / "answers.parquet", server.base_url, check=True)
    assert server.stats.requests == 20


def test_an_old_jsonl_journal_under_the_parquet_name_moves_when_the_parquet_runs_first(
        tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 4)
    jsonl, parquet = tmp_path / "coll.jsonl", tmp_path / "coll.parquet"
    run_job(src, jsonl, server.base_url, check=True)
    old = _as_an_older_version_left_it(jsonl)
    assert old == tmp_path / "coll.journal.sqlite"  # the very name coll.parquet's journal has
    run_job(src, parquet, server.base_url, check=True)
    assert server.stats.requests == 8  # coll.parquet's rows are its own, sent once
    assert _owner(old).endswith("coll.parquet")
    assert _owner(tmp_path / "coll.jsonl.journal.sqlite").endswith("coll.jsonl")
    run_job(src, jsonl, server.base_url, check=True)
    assert server.stats.requests == 8  # coll.jsonl resumed from its moved journal


def test_an_older_versions_run_holding_the_old_lock_is_respected(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "answers.jsonl"
    run_job(src, out, server.base_url, check=True)
    old = _as_an_older_version_left_it(out)
    prompts_csv(src, 5)
    # An older batchrun writing answers.jsonl holds answers.journal.lock (its flock, its pid).
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
            "print('held', flush=True); time.sleep(120)\n"),
         str(tmp_path / "answers.journal.lock")],
        stdout=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        line = refused(run_job(src, out, server.base_url), "older version", "answers.jsonl")
        assert f"pid {holder.pid}" in line
        assert old.exists() and not (tmp_path / "answers.jsonl.journal.sqlite").exists()
        status = run_cli("status", out)
        assert f"{holder.pid}" in status.stdout, status.stdout  # shown as running
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert server.stats.requests == 3
    run_job(src, out, server.base_url, check=True)
    assert server.stats.requests == 5 and not old.exists()
