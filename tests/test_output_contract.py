"""The output contract of DESIGN.md: columns, order, Arrow types, metadata, sidecar, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun.sim import Step, expected_answer

from .helpers import TEST_KEY, clean_env, read_output, run_cli

RESULT_SCHEMA = [
    ("response", pa.string()),
    ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("total_tokens", pa.int64()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("attempts", pa.int32()),
    ("latency_ms", pa.float64()),
    ("model", pa.string()),
    ("response_id", pa.string()),
    ("cost_usd", pa.float64()),
    ("cached_tokens", pa.int64()),
    ("reasoning_tokens", pa.int64()),
    ("provider_cost", pa.float64()),
]
SIDECAR_SCHEMA = [
    ("model", pa.string()), ("rows_ok", pa.int64()), ("rows_error", pa.int64()),
    ("requests", pa.int64()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("total_tokens", pa.int64()), ("cost_usd", pa.float64()), ("cached_tokens", pa.int64()),
    ("reasoning_tokens", pa.int64()), ("provider_cost", pa.float64()),
]
USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")


def _input_table() -> pa.Table:
    """Typed input columns, the prompt in the middle, a null and non-ASCII text among them."""
    return pa.table({
        "ticket": pa.array([101, 102, 103, 104, 105], pa.int64()),
        "prompt": ["Summarize: the lamp flickers.", "Summarize: REFUSE this one.",
                   "Résumé : très bon produit 👍", "Summarize: \"quoted\", with commas",
                   "Summarize: line one\nline two"],
        "score": pa.array([0.5, None, 1.25, -3.0, 2.0], pa.float64()),
        "flag": pa.array([True, False, None, True, False], pa.bool_()),
    })


def _run(tmp: Path, server, src: Path, *extra: object, key: bool = True):
    out = tmp / "out.parquet"
    env = clean_env(BATCHRUN_API_KEY=TEST_KEY) if key else clean_env()
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--no-progress", *extra, env=env)
    return result, out


def test_parquet_input_gives_the_documented_columns_types_metadata_and_sidecar(
    tmp_path: Path, sim
) -> None:
    server = sim(api_key=TEST_KEY)
    server.rule("REFUSE", Step.status(400, "this prompt is refused"))
    table = _input_table()
    src = tmp_path / "in.parquet"
    pq.write_table(table, src)
    result, out = _run(tmp_path, server, src)
    assert result.returncode == 1, result.stderr

    schema = pq.read_schema(out)
    input_fields = [(f.name, f.type) for f in table.schema]
    assert [(f.name, f.type) for f in schema] == input_fields + RESULT_SCHEMA
    output = pq.read_table(out)
    # Input columns first, values (nulls, types, text) untouched.
    assert output.select(table.column_names).to_pylist() == table.to_pylist()

    rows = output.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "ok", "ok"]
    for row in rows:
        if row["status"] == "ok":
            content, finish = expected_answer([{"role": "user", "content": row["prompt"]}])
            assert (row["response"], row["finish_reason"], row["error"]) == (content, finish, None)
            assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
            assert row["attempts"] == 1 and row["latency_ms"] > 0
            assert row["model"] == "sim-1" and row["response_id"].startswith("chatcmpl-")
            assert row["cost_usd"] > 0
        else:
            assert row["response"] is None and row["finish_reason"] == "error"
            assert row["prompt_tokens"] is None and row["total_tokens"] is None
            assert "400" in row["error"] and "this prompt is refused" in row["error"]
            assert row["attempts"] == 1

    meta = json.loads(schema.metadata[b"batchrun"])
    ok_rows = [r for r in rows if r["status"] == "ok"]
    assert meta["rows"] == {"total": 5, "ok": 4, "error": 1}
    assert meta["usage"] == {**{k: sum(r[k] for r in ok_rows) for k in USAGE},
                             "cached_tokens": None, "reasoning_tokens": None}
    assert meta["provider_cost"] is None  # this simulator reports no usage.cost
    assert meta["requests"] == {"sent": 5, "retried": 0}
    assert abs(meta["cost_usd"] - sum(r["cost_usd"] for r in ok_rows)) < 1e-9
    assert meta["model"] == "sim-1"
    assert meta["base_url"] == server.base_url
    assert meta["started_at"] <= meta["finished_at"]
    assert isinstance(meta["config_fingerprint"], str) and len(meta["config_fingerprint"]) >= 8
    assert TEST_KEY not in schema.metadata[b"batchrun"].decode()

    sidecar = pq.read_table(out.with_name("out.usage.parquet"))
    assert [(f.name, f.type) for f in sidecar.schema] == SIDECAR_SCHEMA
    assert sidecar.to_pylist() == [{
        "model": "sim-1", "rows_ok": 4, "rows_error": 1, "requests": 5,
        **meta["usage"], "cost_usd": meta["cost_usd"], "provider_cost": None,
    }]
    # The key reaches the server (it answered) but no file of the run.
    for path in tmp_path.iterdir():
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path
    assert TEST_KEY not in result.stdout + result.stderr


def test_csv_input_keeps_its_columns_as_text_in_order(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "in.csv"
    src.write_text(
        'zeta,prompt,id,note\n'
        '007,"Summarize, please: ""fine""",a1,\n'
        '1e3,"Two\nlines",a2,ünïcödé\n',
        encoding="utf-8",
    )
    result, out = _run(tmp_path, server, src, key=False)
    assert result.returncode == 0, result.stderr
    schema = pq.read_schema(out)
    assert schema.names == ["zeta", "prompt", "id", "note"] + [n for n, _ in RESULT_SCHEMA]
    assert [f.type for f in schema][:4] == [pa.string()] * 4
    rows = read_output(out)
    # No guessing of types: "007" stays "007", "1e3" stays "1e3"; an empty field stays empty.
    assert [(r["zeta"], r["prompt"], r["id"], r["note"]) for r in rows] == [
        ("007", 'Summarize, please: "fine"', "a1", ""),
        ("1e3", "Two\nlines", "a2", "ünïcödé"),
    ]
    assert all(r["status"] == "ok" for r in rows)


def test_exit_code_0_when_every_row_is_answered_and_on_resume(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": [f"Summarize item {i}." for i in range(10)]}), src)
    result, out = _run(tmp_path, server, src)
    assert result.returncode == 0, result.stderr
    assert server.stats.requests == 10
    first = read_output(out)
    again, _ = _run(tmp_path, server, src)
    assert again.returncode == 0, again.stderr
    assert server.stats.requests == 10  # nothing sent twice
    assert read_output(out) == first
    meta = json.loads(pq.read_schema(out).metadata[b"batchrun"])
    assert meta["rows"] == {"total": 10, "ok": 10, "error": 0}


def test_exit_code_2_for_bad_usage_sends_nothing_and_writes_nothing(tmp_path: Path, sim) -> None:
    server = sim()
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["hello"]}), src)
    result, out = _run(tmp_path, server, src)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "prompt" in result.stderr
    assert server.stats.requests == 0
    assert not out.exists()
