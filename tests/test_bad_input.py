"""Bad input: one clear line on stderr, exit 2, no traceback, and not one request sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .helpers import prompts_csv, run_cli, write_csv


def _refused(result: Any, *needles: str) -> str:
    """The one stderr line of a run refused with exit 2, checked to name the problem."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("batchrun: ") or line.startswith("Error: "), line
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    assert result.stdout == ""
    return line


# Each case: (name, files to write into tmp_path -> args for `batchrun run`, words the line must hold).
Case = tuple[str, Callable[[Path], list[Any]], tuple[str, ...]]


def _good(tmp: Path) -> Path:
    return prompts_csv(tmp / "in.csv", 5)


def _option(flag: str, value: Any, *words: str) -> Case:
    return (f"{flag}={value}", lambda tmp: [*_base(_good(tmp)), flag, value], (flag, *words))


def _base(src: Path) -> list[Any]:
    return ["--input", src, "--output", (src if src.is_dir() else src.parent) / "out.parquet"]


def _binary(tmp: Path) -> list[Any]:
    path = tmp / "in.csv"
    path.write_bytes(b"prompt\n" + bytes(range(128, 256)) * 20 + b"\n")
    return _base(path)


def _late_bad_byte(tmp: Path) -> list[Any]:
    """Undecodable text far past the first batch: found before anything is sent, not midway."""
    path = tmp / "in.csv"
    good = "".join(f"{i},Summarize review {i}.\n" for i in range(20_000))
    path.write_bytes(b"id,prompt\n" + good.encode() + b"20000,caf\xe9 au lait\n")
    return _base(path)


def _ragged(tmp: Path) -> list[Any]:
    path = tmp / "in.csv"
    path.write_text("id,prompt\n1,hello\n2,hi,there,extra\n3,bye\n", encoding="utf-8")
    return _base(path)


def _fake_parquet(tmp: Path) -> list[Any]:
    path = tmp / "in.parquet"
    path.write_text("id,prompt\n1,hello\n", encoding="utf-8")
    return _base(path)


def _truncated_parquet(tmp: Path) -> list[Any]:
    path = tmp / "in.parquet"
    pq.write_table(pa.table({"prompt": ["hello"] * 100}), path)
    path.write_bytes(path.read_bytes()[:-30])
    return _base(path)


def _unknown_format(tmp: Path) -> list[Any]:
    path = tmp / "in.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a workbook")
    return _base(path)


def _job_file(text: str) -> Callable[[Path], list[Any]]:
    def make(tmp: Path) -> list[Any]:
        _good(tmp)
        job = tmp / "job.toml"
        job.write_text(text, encoding="utf-8")
        return [job]

    return make


def _no_key(tmp: Path) -> list[Any]:
    return [*_base(_good(tmp)), "--provider", "megallm", "--model", "gpt-4o-mini"]


CASES: list[Case] = [
    ("missing file", lambda tmp: _base(tmp / "nowhere.csv"), ("nowhere.csv", "does not exist")),
    ("a directory", lambda tmp: _base(tmp), ("directory",)),
    ("missing prompt column",
     lambda tmp: _base(write_csv(tmp / "in.csv", [{"id": 1, "text": "hi"}])), ("prompt", "column")),
    ("missing --prompt-column",
     lambda tmp: [*_base(_good(tmp)), "--prompt-column", "question"], ("question",)),
    ("missing --id-column", lambda tmp: [*_base(_good(tmp)), "--id-column", "uid"], ("uid",)),
    ("template names an absent column",
     lambda tmp: [*_base(_good(tmp)), "--template", "Review of {product}: {prompt}"],
     ("product", "template")),
    ("undecodable CSV", _binary, ("in.csv", "encoding")),
    ("undecodable CSV, late in the file", _late_bad_byte, ("in.csv", "encoding")),
    ("ragged CSV", _ragged, ("in.csv",)),
    ("not Parquet inside", _fake_parquet, ("in.parquet", "parquet")),
    ("truncated Parquet", _truncated_parquet, ("in.parquet",)),
    ("unknown format", _unknown_format, (".xlsx", "format")),
    _option("--temperature", -0.1, "0", "2"),
    _option("--temperature", 2.01, "0", "2"),
    _option("--top-p", 0, "0", "1"),
    _option("--top-p", 1.5, "0", "1"),
    _option("--frequency-penalty", -2.5, "-2", "2"),
    _option("--frequency-penalty", 2.5, "-2", "2"),
    _option("--presence-penalty", -3, "-2", "2"),
    _option("--presence-penalty", 2.1, "-2", "2"),
    _option("--max-tokens", 0, "1"),
    _option("--concurrency", 0, "1"),
    ("five stop sequences",
     lambda tmp: [*_base(_good(tmp)), *[a for s in "abcde" for a in ("--stop", s)]], ("stop", "4")),
    ("job file: temperature out of range",
     _job_file('[input]\npath = "in.csv"\n[request]\nmodel = "sim-1"\ntemperature = 3.5\n'),
     ("temperature", "3.5")),
    ("job file: five stops",
     _job_file('[input]\npath = "in.csv"\n[request]\nmodel = "sim-1"\n'
               'stop = ["a", "b", "c", "d", "e"]\n'), ("stop", "4")),
    ("job file: unknown key",
     _job_file('[input]\npath = "in.csv"\n[request]\nmodel = "sim-1"\ntemprature = 0.5\n'),
     ("temprature",)),
    ("job file: not TOML", _job_file('[input\npath = "in.csv"\n'), ("toml",)),
    ("job file: missing", lambda tmp: [tmp / "absent.toml"], ("absent.toml",)),
    ("missing key for a remote provider", _no_key, ("key", "MEGALLM_API_KEY")),
]


@pytest.mark.parametrize("make, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_sends_nothing(
    tmp_path: Path, sim, make: Callable[[Path], list[Any]], words: tuple[str, ...]
) -> None:
    server = sim()
    args = make(tmp_path)
    # Every run points at the simulator (unless it names a remote preset): nothing may reach it.
    target = [] if "--provider" in args else ["--base-url", server.base_url, "--model", "sim-1"]
    if args and str(args[0]).endswith(".toml"):
        target = ["--base-url", server.base_url]
    result = run_cli("run", *args, *target, "--no-progress", cwd=tmp_path)
    _refused(result, *words)
    assert server.stats.requests == 0
    assert not (tmp_path / "out.parquet").exists()


def test_an_empty_prompt_fails_its_row_only(tmp_path: Path, sim) -> None:
    """Not bad input: an empty prompt in one row is that row's error; the others are sent."""
    server = sim()
    src = write_csv(tmp_path / "in.csv", [{"id": 1, "prompt": "hello"}, {"id": 2, "prompt": ""},
                                          {"id": 3, "prompt": "bye"}])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--no-progress")
    assert result.returncode == 1, result.stderr
    rows = pq.read_table(out).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert "empty prompt" in rows[1]["error"]
    assert rows[1]["attempts"] == 0
    assert server.stats.requests == 2
