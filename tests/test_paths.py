"""Paths: the output never overwrites the input, appears whole or not at all, and finds its folder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.data.locations import former_sibling, sibling, state_dir, usage_path, usage_url
from batchrun.journal.database import OutputLock, journal_path

from .helpers import prompts_csv, read_output, run_job, write_csv


def _refused(result, needle: str) -> None:
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert needle in line, line


def test_output_can_never_be_the_input(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"]}), src)
    before = src.read_bytes()
    link = tmp_path / "link.parquet"
    link.symlink_to(src)
    hard = tmp_path / "hard.parquet"
    os.link(src, hard)
    (tmp_path / "sub").mkdir()
    same_ways = [
        (src, src, None),
        ("in.parquet", "./in.parquet", tmp_path),
        ("in.parquet", "sub/../in.parquet", tmp_path),
        (src, link, None),  # the output named through a symlink to the input
        (link, src, None),  # the input named through a symlink
        (src, hard, None),  # a second name (hard link) of the same file
    ]
    for given_in, given_out, cwd in same_ways:
        _refused(run_job(given_in, given_out, server.base_url, cwd=cwd, timeout=60), "is the input")
    # The usage sidecar of an output must not land on the input either.
    sidecar_src = tmp_path / "data.usage.parquet"
    pq.write_table(pa.table({"prompt": ["a"]}), sidecar_src)
    _refused(run_job(sidecar_src, tmp_path / "data.parquet", server.base_url, timeout=60), "is the input")
    assert src.read_bytes() == before
    assert server.stats.requests == 0


def test_missing_output_folders_are_created(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "a" / "b" / "c" / "out.parquet"
    result = run_job(src, out, server.base_url, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(read_output(out)) == 3
    assert out.with_name("out.usage.parquet").exists()


def test_an_output_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    _refused(run_job(src, blocker / "out.parquet", server.base_url, timeout=60), "output folder")
    folder = tmp_path / "dir.parquet"
    folder.mkdir()
    _refused(run_job(src, folder, server.base_url, timeout=60), "is a directory")
    assert server.stats.requests == 0


@pytest.mark.slow
def test_output_appears_whole_or_not_at_all(tmp_path: Path, sim) -> None:
    server = sim()
    rows = [{"id": str(i), "prompt": f"prompt {i} " + "word " * 60} for i in range(2500)]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    seen: list[int] = []
    problems: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        # Whenever the output name exists, it must be a complete, readable Parquet file.
        while not stop.is_set():
            try:
                seen.append(pq.read_metadata(out).num_rows)
            except FileNotFoundError:
                continue
            except Exception as exc:  # a partial file: any reader error counts
                problems.append(f"{type(exc).__name__}: {exc}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        first = run_job(src, out, server.base_url, "--concurrency", "64", timeout=60)
        assert first.returncode == 0, first.stderr
        second = run_job(src, out, server.base_url, "--fresh", "--concurrency", "64", timeout=60)
        assert second.returncode == 0, second.stderr
    finally:
        stop.set()
        watcher.join()
    assert not problems, problems[:3]
    assert seen and set(seen) == {2500}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_each_output_names_its_own_state_in_one_place(tmp_path: Path) -> None:
    parquet, jsonl, folder = tmp_path / "x.parquet", tmp_path / "x.jsonl", tmp_path / "x"
    assert usage_path(parquet) == tmp_path / "x.usage.parquet"  # the documented name
    assert usage_path(jsonl) == tmp_path / "x.jsonl.usage.parquet"
    assert journal_path(parquet) == tmp_path / "x.journal.sqlite"
    assert journal_path(jsonl) == tmp_path / "x.jsonl.journal.sqlite"
    assert journal_path(folder) == tmp_path / "x.journal.sqlite"  # a Ray dataset folder
    assert OutputLock(parquet).path != OutputLock(jsonl).path
    assert sibling(jsonl, ".report.html") == tmp_path / "x.jsonl.report.html"
    # Where older versions put a `.jsonl` output's files: the Parquet output's names.
    assert former_sibling(jsonl, ".journal.sqlite") == journal_path(parquet)
    assert usage_url("s3://b/k/x.jsonl") == "s3://b/k/x.jsonl.usage.parquet"
    assert usage_url("s3://b/k/x.parquet") == "s3://b/k/x.usage.parquet"
    assert state_dir("s3://b/k/x.parquet") != state_dir("s3://b/k/x.jsonl")
