"""Hostile input files through the real CLI: odd CSVs and Parquets run or fail with one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.data.read import open_input
from batchrun.errors import InputError
from batchrun.sim import expected_answer

from .helpers import read_output, run_job, write_csv

RESULT_COLUMNS = ["response", "finish_reason", "prompt_tokens", "completion_tokens",
                  "total_tokens", "status", "error", "attempts", "latency_ms", "model",
                  "response_id", "cost_usd", "cached_tokens", "reasoning_tokens", "provider_cost"]


def _refused(result: Any, server: Any, *needles: str) -> str:
    """Exit 2, one line on stderr, no traceback, nothing sent; returns the line."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    line = result.stderr.strip()
    assert "Traceback" not in line and len(line.splitlines()) == 1, line
    for needle in needles:
        assert needle in line, line
    if server is not None:
        assert server.stats.requests == 0
    return line


def _answer(prompt: str) -> str:
    return expected_answer([{"role": "user", "content": prompt}])[0]


def test_quotes_newlines_emoji_and_rtl_round_trip_exactly(tmp_path: Path, sim) -> None:
    server = sim()
    prompts = [
        'He said "hi", then left',
        "line one\nline two\r\nline three",
        "emoji 🧪🚀 and a ZWJ family 👩‍👩‍👧",
        "right to left: שלום עולם and العربية",
        "commas, ;semicolons; \t tabs and 'single' quotes",
        "  leading and trailing spaces  ",
    ]
    src = write_csv(tmp_path / "in.csv", [{"id": str(i), "prompt": p} for i, p in enumerate(prompts)])
    out = tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert [r["prompt"] for r in rows] == prompts
    assert [r["response"] for r in rows] == [_answer(p) for p in prompts]
    assert server.stats.ok == len(prompts)


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "bom.csv"
    src.write_bytes("\ufeffprompt,id\nhello,1\n".encode())
    out = tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, timeout=60)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.column_names[:2] == ["prompt", "id"]
    assert table.column("response").to_pylist() == [_answer("hello")]


def test_non_utf8_bytes_name_the_line_and_suggest_encoding(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "latin.csv"
    lines = ["prompt"] + [f"row {i}" for i in range(40)] + ["caf\xe9 au lait"] + ["after"]
    src.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    out = tmp_path / "out.parquet"
    line = _refused(run_job(src, out, server.base_url, timeout=60), server, "line 42", "--encoding")
    assert "UTF-8" in line
    assert not out.exists()
    # With the encoding named, the same file runs and the text arrives decoded.
    result = run_job(src, out, server.base_url, "--encoding", "latin-1", timeout=60)
    assert result.returncode == 0, result.stderr
    assert read_output(out)[40]["prompt"] == "café au lait"


def test_lone_surrogate_bytes_in_a_csv_are_refused_not_mangled(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "surrogate.csv"
    # \ud800 encoded the way a sloppy writer (CESU-8 / surrogatepass) would: not valid UTF-8.
    src.write_bytes(b"prompt\nfine\nbad \xed\xa0\x80 text\n")
    _refused(run_job(src, tmp_path / "out.parquet", server.base_url, timeout=60), server, "line 3", "UTF-8")


def test_invalid_utf8_inside_a_parquet_string_column_is_refused(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "bad.parquet"
    # Another tool wrote unchecked bytes into a string column (arrow's view skips validation).
    # The bad row sits far past the first batch: still refused before any row is sent.
    raw = [b"fine %d" % i for i in range(5000)] + [b"bad \xed\xa0\x80", b"also fine"]
    values = pa.array(raw, pa.binary()).view(pa.string())
    pq.write_table(pa.table({"prompt": values}), src, row_group_size=1000)
    _refused(run_job(src, tmp_path / "out.parquet", server.base_url, timeout=60), server,
             "row 5001", "UTF-8", "'prompt'")


def test_ragged_rows_are_refused_naming_the_line(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "ragged.csv"
    src.write_text("prompt,id\na,1\nb,2\n" + "c\n" + "d,4\n", encoding="utf-8")
    _refused(run_job(src, tmp_path / "out.parquet", server.base_url, timeout=60), server,
             "line 4", "expected 2", "got 1")
    src.write_text('prompt,id\n"multi\nline",1\nx,2,3\n', encoding="utf-8")
    _refused(run_job(src, tmp_path / "out.parquet", server.base_url, timeout=60), server,
             "line 4", "expected 2", "got 3")
    src.write_text('prompt,id\na,1\n"never closed,2\nb,3\n', encoding="utf-8")
    _refused(run_job(src, tmp_path / "out.parquet", server.base_url, timeout=60), server,
             "line 3", "quote opened on line 3 may never be closed")


def test_a_one_megabyte_field_is_sent_and_kept_whole(tmp_path: Path, sim) -> None:
    server = sim()
    big = ("lorem ipsum, dolor \"sit\" amet\n" * 40_000)[: 1 << 20]
    rows_in = [{"prompt": "short", "note": big}, {"prompt": big, "note": "x"}]
    src = write_csv(tmp_path / "in.csv", rows_in)
    out = tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, timeout=60)
    # ~260k tokens is over the simulator's 128k context: that row fails alone, with the reason.
    assert result.returncode == 1, result.stderr
    rows = read_output(out)
    assert [(r["prompt"], r["note"]) for r in rows] == [("short", big), (big, "x")]
    assert rows[0]["status"] == "ok" and rows[0]["response"] == _answer("short")
    assert rows[1]["status"] == "error" and "context length" in rows[1]["error"]
    assert rows[1]["attempts"] == 1
    assert server.stats.requests == 2


def test_null_and_empty_prompts_fail_their_row_only(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "in.parquet"
    prompts = ["first", None, "", "   \n\t", "last"]
    pq.write_table(pa.table({"prompt": pa.array(prompts, pa.string())}), src)
    out = tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, timeout=60)
    assert result.returncode == 1, result.stderr
    rows = read_output(out)
    assert [r["prompt"] for r in rows] == prompts
    assert [r["status"] for r in rows] == ["ok", "error", "error", "error", "ok"]
    for row in rows[1:4]:
        assert "empty prompt" in row["error"] and row["response"] is None
        assert row["attempts"] == 0
    assert server.stats.requests == 2
    # Empty fields of a CSV are empty strings, never the text "None" or "null".
    csv_src = tmp_path / "in.csv"
    csv_src.write_text('prompt,id\nhello,1\n,2\n"",3\n', encoding="utf-8")
    csv_out = tmp_path / "csv_out.parquet"
    result = run_job(csv_src, csv_out, server.base_url, timeout=60)
    assert result.returncode == 1, result.stderr
    assert [r["status"] for r in read_output(csv_out)] == ["ok", "error", "error"]


def test_duplicate_column_names_are_refused(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "dup.csv"
    src.write_text("prompt,id,id\nhello,1,2\n", encoding="utf-8")
    _refused(run_job(src, tmp_path / "out.parquet", server.base_url, timeout=60), server, "duplicate", "id")
    parquet = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], ["prompt", "prompt"]),
                   parquet)
    with pytest.raises(InputError, match="duplicate column names: prompt"):
        open_input(parquet)


def test_zero_byte_file_is_refused(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "empty.csv"
    src.write_bytes(b"")
    _refused(run_job(src, tmp_path / "out.parquet", server.base_url, timeout=60), server, "empty", str(src))
    empty_parquet = tmp_path / "empty.parquet"
    empty_parquet.write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        open_input(empty_parquet)
    blank = tmp_path / "blank.csv"
    blank.write_bytes(b"\n\n")
    _refused(run_job(blank, tmp_path / "out.parquet", server.base_url, timeout=60), server, "header")


@pytest.mark.parametrize("content", [b"prompt,id\n", b"prompt,id", b"prompt,id\r\n"])
def test_header_only_file_writes_an_empty_output_with_every_column(
    tmp_path: Path, sim, content: bytes
) -> None:
    server = sim()
    src = tmp_path / "header.csv"
    src.write_bytes(content)
    out = tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, timeout=60)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.num_rows == 0
    assert table.column_names == ["prompt", "id", *RESULT_COLUMNS]
    assert server.stats.requests == 0


def test_csv_named_parquet_is_refused(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "data.parquet"
    src.write_text("prompt\nhello\n", encoding="utf-8")
    _refused(run_job(src, tmp_path / "out.parquet", server.base_url, timeout=60), server,
             "not a Parquet file", "rename it to .csv")


def test_parquet_with_typed_columns_renders_text_and_keeps_types(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "typed.parquet"
    table = pa.table({
        "n": pa.array([1, None, -3], pa.int64()),
        "x": pa.array([1.5, 2.0, None], pa.float64()),
        "ok": pa.array([True, False, None], pa.bool_()),
        "word": pa.array(["alpha", None, "gamma"], pa.string()),
    })
    pq.write_table(table, src)
    out = tmp_path / "out.parquet"
    result = run_job(src, out, server.base_url, "--template", "n={n} x={x} ok={ok} w={word}", timeout=60)
    assert result.returncode == 0, result.stderr
    written = pq.read_table(out)
    assert written.schema.field("n").type == pa.int64()
    assert written.schema.field("x").type == pa.float64()
    assert written.schema.field("ok").type == pa.bool_()
    assert written.select(["n", "x", "ok", "word"]).to_pylist() == table.to_pylist()
    rendered = ["n=1 x=1.5 ok=True w=alpha", "n= x=2.0 ok=False w=", "n=-3 x= ok= w=gamma"]
    assert written.column("response").to_pylist() == [_answer(p) for p in rendered]


def test_a_field_longer_than_a_read_block_later_in_the_file_is_read_in_order(tmp_path: Path) -> None:
    # In-process: the reader restarts with larger blocks and must neither drop nor repeat rows.
    big = "x\n\"quoted\", " * 400_000  # ~5 MB with line breaks and quotes, past several blocks
    rows = [{"prompt": f"small {i}", "n": str(i)} for i in range(60_000)]
    rows.insert(50_000, {"prompt": big, "n": "big"})
    src = write_csv(tmp_path / "in.csv", rows)
    table = open_input(src)
    read = [r for batch in table.batches(1000) for r in batch.to_pylist()]
    assert read == rows
    assert table.count_rows() == len(rows)
