"""Structured output: a JSON-schema job fills a typed `parsed` column; bad JSON is retried."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.sim import Step

from .helpers import cli_in_process, parse_plan, read_output, run_cli, write_csv

REPO = Path(__file__).resolve().parent.parent
CLASSIFY = REPO / "jobs" / "classify.toml"
SCHEMA = json.loads((REPO / "jobs" / "schemas" / "review_label.json").read_text())


def reviews(path: Path, n: int, special: dict[int, str] | None = None) -> Path:
    rows = [{"id": f"r{i}", "product": f"Lamp {i}", "category": "home",
             "review": (special or {}).get(i, f"The lamp number {i} is bright enough.")}
            for i in range(n)]
    return write_csv(path, rows)


def chat_doc(content: str) -> str:
    return json.dumps({
        "id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "sim-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    })


def test_the_classification_job_fills_parsed_with_schema_types(tmp_path: Path, sim) -> None:
    server = sim()
    special = {3: "BADJSON please", 7: "WRONGLABEL here", 9: "FLAKY answer"}
    server.rule("WRONGLABEL", Step.body(chat_doc(json.dumps({
        "label": "furious", "stars_guess": 1, "topics": [], "needs_reply": True,
        "confidence": 0.5}))))
    server.rule("FLAKY", Step.body(chat_doc("{not json")), Step.ok(), times=1)
    src = reviews(tmp_path / "reviews.csv", 30, special)
    out = tmp_path / "labels.parquet"
    result = run_cli("run", CLASSIFY, "--input", src, "--output", out, "--base-url",
                     server.base_url, "--model", "sim-1", "--rpm", "60000", "--tpm", "100000000",
                     "--max-attempts", "3", "--no-progress")
    assert result.returncode == 1, result.stderr  # some rows failed for good
    parsed_type = pq.read_schema(out).field("parsed").type
    assert parsed_type == pa.struct([
        ("label", pa.string()), ("stars_guess", pa.int64()), ("topics", pa.list_(pa.string())),
        ("needs_reply", pa.bool_()), ("confidence", pa.float64()),
    ])
    rows = read_output(out)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 28
    for row in ok:
        parsed = row["parsed"]
        assert parsed == json.loads(row["response"])
        assert parsed["label"] in SCHEMA["properties"]["label"]["enum"]
        assert isinstance(parsed["stars_guess"], int) and isinstance(parsed["needs_reply"], bool)
        assert isinstance(parsed["confidence"], float)
        assert all(isinstance(t, str) for t in parsed["topics"])
    flaky = rows[9]
    assert (flaky["status"], flaky["attempts"]) == ("ok", 2)  # a bad answer, retried, then good
    bad, wrong = rows[3], rows[7]
    assert (bad["status"], bad["attempts"], bad["parsed"]) == ("error", 3, None)
    assert "invalid structured output: answer is not valid JSON" in bad["error"]
    assert "gave up after 3 attempts" in bad["error"]
    assert wrong["status"] == "error" and wrong["attempts"] == 3
    assert "does not match the schema: $.label should be one of" in wrong["error"]
    assert server.stats.requests == 28 + 1 + 3 + 3


def test_the_schema_is_sent_as_a_strict_json_schema_response_format(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli_in_process(monkeypatch, capsys, "plan", CLASSIFY,
                                    env={"OPENAI_API_KEY": "sk-dummy"})
    assert code == 0, err
    assert parse_plan(out)["body"]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "review_label", "schema": SCHEMA, "strict": True},
    }


def test_json_object_infers_the_parsed_type(tmp_path: Path, sim) -> None:
    server = sim()
    src = write_csv(tmp_path / "in.csv", [{"prompt": f"give json {i}"} for i in range(5)])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--response-format", "json_object", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert pq.read_schema(out).field("parsed").type == pa.struct(
        [("answer", pa.string()), ("words", pa.int64())])
    for row in read_output(out):
        assert row["parsed"] == json.loads(row["response"])


def test_a_nested_free_form_object_is_kept_as_json_text(tmp_path: Path, sim) -> None:
    server = sim()
    schema = {"type": "object", "properties": {
        "name": {"type": "string"}, "extra": {"type": "object"},
        "scores": {"type": "array", "items": {"type": "number"}}},
        "required": ["name", "extra", "scores"]}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    server.rule("ROW", Step.body(chat_doc(json.dumps(
        {"name": "n", "extra": {"k": [1, 2]}, "scores": [1, 2.5]}))))
    src = write_csv(tmp_path / "in.csv", [{"prompt": "ROW one"}, {"prompt": "BADJSON two"}])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--response-format", tmp_path / "s.json",
                     "--max-attempts", "1", "--no-progress")
    assert result.returncode == 1, result.stderr
    first, second = read_output(out)
    assert first["parsed"] == {"name": "n", "extra": '{"k":[1,2]}', "scores": [1.0, 2.5]}
    assert second["parsed"] is None and "not valid JSON" in second["error"]


def test_json_object_with_every_row_failed_still_writes(tmp_path: Path, sim) -> None:
    server = sim()
    src = write_csv(tmp_path / "in.csv", [{"prompt": "BADJSON only"}])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--response-format", "json_object",
                     "--max-attempts", "1", "--no-progress")
    assert result.returncode == 1, result.stderr
    assert read_output(out)[0]["parsed"] is None


def test_an_answer_cut_off_by_max_tokens_is_not_paid_for_again(tmp_path: Path, sim) -> None:
    server = sim()
    src = reviews(tmp_path / "reviews.csv", 4)
    out = tmp_path / "labels.parquet"
    result = run_cli("run", CLASSIFY, "--input", src, "--output", out, "--base-url",
                     server.base_url, "--model", "sim-1", "--max-tokens", "3", "--no-progress")
    assert result.returncode == 1, result.stderr
    for row in read_output(out):
        assert (row["status"], row["finish_reason"], row["attempts"]) == ("error", "length", 1)
        assert "cut off at --max-tokens: raise it" in row["error"]
    assert server.stats.requests == 4


def test_a_schema_without_title_is_named_after_its_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    (tmp_path / "yes no.json").write_text(json.dumps(schema))
    src = write_csv(tmp_path / "in.csv", [{"prompt": "x"}])
    code, out, err = cli_in_process(monkeypatch, capsys, "plan", "--input", src, "--provider",
                                    "vllm", "--model", "m", "--response-format",
                                    tmp_path / "yes no.json")
    assert code == 0, err
    assert parse_plan(out)["body"]["response_format"]["json_schema"]["name"] == "yes_no"
