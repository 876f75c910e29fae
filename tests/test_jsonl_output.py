"""An output ending in .jsonl: OpenAI's batch output format, one line per input row, in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.errors import UsageError
from batchrun.journal.database import journal_path
from batchrun.sim import Step, expected_answer

from .helpers import prompts_csv, run_cli
from .test_jsonl_input import _line, _user, write_requests


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The output file's lines as JSON objects (every line must be one)."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_batch_requests_in_and_batch_output_out_one_line_per_request_in_order(
    tmp_path: Path, sim
) -> None:
    server = sim(latency=0.005, latency_jitter=0.005, seed=3)
    server.rule("refused", Step.status(400, "This request is malformed."))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}]
    lines = [_line(f"q-{i}", {"model": "sim-1", "messages": _user(f"Question {i}?")})
             for i in range(60)]
    lines[7] = _line("q-7", {"model": "sim-1", "messages": _user("This one is refused.")})
    lines[9] = _line("q-9", {"model": "sim-1", "messages": _user("Look up owls."),
                             "tools": tools, "tool_choice": "required"})
    src = write_requests(tmp_path / "requests.jsonl", lines)
    out = tmp_path / "answers.jsonl"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--concurrency", 16, "--no-progress")
    assert result.returncode == 1, result.stderr  # one row failed for good
    got = read_lines(out)
    assert [g["custom_id"] for g in got] == [f"q-{i}" for i in range(60)]
    for i, line in enumerate(got):
        assert set(line) == {"id", "custom_id", "response", "error"}
        if i in (7, 9):
            continue
        assert line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"]
        body = response["body"]
        assert body["id"] == line["id"] and body["id"].startswith("chatcmpl-")
        assert body["object"] == "chat.completion" and body["model"] == "sim-1"
        assert isinstance(body["created"], int) and body["created"] > 1_600_000_000
        choice = body["choices"][0]
        content, finish = expected_answer(_user(f"Question {i}?"))
        assert choice["message"] == {"role": "assistant", "content": content}
        assert choice["finish_reason"] == finish
        usage = body["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"] > 0
    refused = got[7]
    assert refused["response"] is None
    assert refused["error"]["code"] == "http_400"
    assert "malformed" in refused["error"]["message"]
    assert refused["id"] == "batchrun-row-7"
    called = got[9]["response"]["body"]["choices"][0]
    assert called["finish_reason"] == "tool_calls"
    assert called["message"]["content"] is None
    assert called["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    # Totals: the sidecar beside it (x.jsonl.usage.parquet: x.parquet's is its own), with the
    # run's totals in its metadata.
    sidecar = tmp_path / "answers.jsonl.usage.parquet"
    usage_rows = pq.read_table(sidecar).to_pylist()
    billed = sum(g["response"]["body"]["usage"]["total_tokens"] for g in got if g["response"])
    assert sum(r["total_tokens"] for r in usage_rows) == billed == server.stats.billed_total_tokens
    meta = json.loads(pq.read_schema(sidecar).metadata[b"batchrun"])
    assert meta["rows"] == {"total": 60, "ok": 59, "error": 1}
    assert journal_path(out) == tmp_path / "answers.jsonl.journal.sqlite"
    assert journal_path(out).exists()
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed


def test_a_csv_run_writes_jsonl_with_its_id_column_and_resumes_and_reports_status(
    tmp_path: Path, sim
) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 25)
    out = tmp_path / "out.jsonl"
    args = ["run", "--input", src, "--output", out, "--base-url", server.base_url,
            "--model", "sim-1", "--id-column", "id", "--no-progress"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert f"output    {out}" in first.stdout
    assert f"usage     {tmp_path / 'out.jsonl.usage.parquet'}" in first.stdout
    before = out.read_bytes()
    assert [g["custom_id"] for g in read_lines(out)] == [str(i) for i in range(25)]
    again = run_cli(*args)  # resumes: nothing sent, the same lines written again
    assert again.returncode == 0, again.stderr
    assert server.stats.requests == 25
    # The same lines but for `created` (the journal keeps no timestamp per answer for it).
    assert [_without_created(x) for x in out.read_bytes().splitlines()] == [
        _without_created(x) for x in before.splitlines()]
    status = run_cli("status", out)
    assert status.returncode == 0, status.stderr
    assert "25 answered, 0 failed, 0 left" in status.stdout
    # Without an id column, rows are named by their index.
    plain = run_cli("run", "--input", src, "--output", tmp_path / "plain.jsonl",
                    "--base-url", server.base_url, "--model", "sim-1", "--no-progress")
    assert plain.returncode == 0, plain.stderr
    assert read_lines(tmp_path / "plain.jsonl")[3]["custom_id"] == "row-3"


def _without_created(raw: bytes) -> dict[str, Any]:
    line = json.loads(raw)
    line["response"]["body"].pop("created")
    return line


def test_an_output_of_another_format_is_refused(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 2)
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.csv",
                     "--provider", "simulator")
    assert result.returncode == 2
    assert "must end in .parquet (or .jsonl" in result.stderr


def test_run_dataframe_reads_its_frame_back_from_parquet_only(tmp_path: Path) -> None:
    import pandas as pd

    from batchrun import run_dataframe

    with pytest.raises(UsageError, match=r"must end in \.parquet"):
        run_dataframe(pd.DataFrame({"prompt": ["a"]}), output=tmp_path / "x.jsonl",
                      provider="simulator", progress=False)
