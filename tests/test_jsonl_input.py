"""Batch JSONL as input: OpenAI's request lines run on the online path, real CLI against the simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchrun.sim import expected_answer

from .helpers import prompts_csv, read_output, refused, run_cli

URL = "/v1/chat/completions"


def _line(custom_id: Any, body: Any, **overrides: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": URL, "body": body, **overrides}


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def write_requests(path: Path, lines: list[Any]) -> Path:
    """A batch input file: one JSON value (or raw text) per line."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines), encoding="utf-8")
    return path


def test_bodies_keep_their_model_and_parameters_and_flags_fill_in_the_rest(
    tmp_path: Path, sim
) -> None:
    server = sim()
    src = write_requests(tmp_path / "requests.jsonl", [
        _line("first", {"model": "sim-big", "messages": _user("Tell me about copper."),
                        "max_tokens": 2}),
        _line("second", {"messages": _user("Tell me about rivers.")}),
        _line("third", {"model": "sim-small", "messages": [
            {"role": "system", "content": "Be brief."}, *_user("Tell me about owls.")]}),
    ])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--max-tokens", 5, "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert [r["custom_id"] for r in rows] == ["first", "second", "third"]
    assert [r["model"] for r in rows] == ["sim-big", "sim-1", "sim-small"]
    # The body's max_tokens (2) wins over --max-tokens (5); the flag fills in where none is set.
    expected = [expected_answer(_user("Tell me about copper."), 2),
                expected_answer(_user("Tell me about rivers."), 5),
                expected_answer([{"role": "system", "content": "Be brief."},
                                 *_user("Tell me about owls.")], 5)]
    assert [(r["response"], r["finish_reason"]) for r in rows] == expected
    assert [r["completion_tokens"] for r in rows][:1] == [2]
    assert json.loads(rows[0]["body"])["model"] == "sim-big"  # the request kept as input column
    assert server.stats.requests == 3


def test_a_jsonl_body_and_an_equal_csv_row_are_one_request_so_nothing_is_paid_twice(
    tmp_path: Path, sim
) -> None:
    server = sim()
    csv_src = prompts_csv(tmp_path / "in.csv", 4, text="Summarize review {i}.")
    out = tmp_path / "out.parquet"
    common = ["--output", out, "--base-url", server.base_url, "--no-progress"]
    first = run_cli("run", "--input", csv_src, "--model", "sim-1", "--temperature", 0,
                    "--stop", "END", *common)
    assert first.returncode == 0, first.stderr
    assert server.stats.requests == 4
    # The same requests written as a batch file: an int temperature and a lone stop string, keys
    # in another order. Rows 0-3 were answered by the CSV run; row 4 is new.
    lines = [_line(f"r{i}", {"stop": "END", "temperature": 0, "messages":
                             _user(f"Summarize review {i}."), "model": "sim-1"})
             for i in range(5)]
    src = write_requests(tmp_path / "requests.jsonl", lines)
    second = run_cli("run", "--input", src, *common)
    assert second.returncode == 0, second.stderr
    assert server.stats.requests == 5, "only the one request the CSV run did not ask was sent"
    rows = read_output(out)
    assert [r["custom_id"] for r in rows] == [f"r{i}" for i in range(5)]
    assert all(r["status"] == "ok" for r in rows)
    assert "4 answered by earlier runs" in second.stdout


GOOD = _line("ok-1", {"model": "sim-1", "messages": _user("Hello.")})
BAD_LINES = [
    ("not json", "{\"custom_id\": \"x\", ", ("line 3", "not valid JSON")),
    ("not an object", "[1, 2]", ("line 3", "JSON object")),
    ("missing fields", {"custom_id": "x", "body": {"messages": _user("a")}},
     ("line 3", "missing method, url")),
    ("wrong method", _line("x", {"messages": _user("a")}, method="GET"),
     ("line 3", 'method must be "POST"', '"GET"')),
    ("wrong url", _line("x", {"messages": _user("a")}, url="/v1/embeddings"),
     ("line 3", "url must be", "/v1/embeddings")),
    ("no messages", _line("x", {"model": "sim-1", "prompt": "a"}),
     ("line 3", 'no "messages" list', "body.messages")),
    ("numeric custom_id", _line(7, {"messages": _user("a")}), ("line 3", "custom_id", "quote")),
    ("duplicate custom_id", _line("ok-1", {"messages": _user("other")}),
     ("line 3", "repeats line 1", "its own custom_id")),
    ("stream", _line("x", {"messages": _user("a"), "stream": True}), ("line 3", "stream")),
]


@pytest.mark.parametrize("case", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_a_bad_request_line_exits_2_naming_its_line_and_nothing_is_sent(
    tmp_path: Path, sim, case: tuple[str, Any, tuple[str, ...]]
) -> None:
    server = sim()
    _, bad, needles = case
    # Line 2 is blank (skipped, but counted), the bad line is line 3, and good lines follow.
    src = write_requests(tmp_path / "requests.jsonl", [GOOD, "", bad] + [
        _line(f"more-{i}", {"messages": _user(f"More {i}.")}) for i in range(3000)])
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet",
                     "--base-url", server.base_url, "--model", "sim-1", "--no-progress")
    line = refused(result, *needles)
    assert str(src) in line
    assert server.stats.requests == 0
    assert not (tmp_path / "out.parquet").exists()


def test_a_repeated_custom_id_far_down_the_file_is_found_before_anything_is_sent(
    tmp_path: Path, sim
) -> None:
    server = sim()
    lines = [_line(f"id-{i}", {"messages": _user(f"Prompt {i}.")}) for i in range(12_000)]
    lines.append(_line("id-17", {"messages": _user("Late duplicate.")}))
    src = write_requests(tmp_path / "requests.jsonl", lines)
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet",
                     "--base-url", server.base_url, "--model", "sim-1", "--no-progress")
    refused(result, "line 12001", '"id-17" repeats line 18')
    assert server.stats.requests == 0


def test_a_body_without_a_model_needs_model_or_exits_2(tmp_path: Path, sim) -> None:
    server = sim()
    src = write_requests(tmp_path / "requests.jsonl", [
        GOOD, _line("two", {"messages": _user("No model here.")})])
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet",
                     "--base-url", server.base_url, "--no-progress")
    refused(result, "line 2", "no model", "--model")
    assert server.stats.requests == 0
    # With every body naming its model, no --model is needed.
    src = write_requests(tmp_path / "requests.jsonl", [GOOD])
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet",
                     "--base-url", server.base_url, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert read_output(tmp_path / "out.parquet")[0]["model"] == "sim-1"


def test_options_that_shape_rows_into_prompts_are_refused_for_a_jsonl_input(
    tmp_path: Path, sim
) -> None:
    server = sim()
    src = write_requests(tmp_path / "requests.jsonl", [GOOD])
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet",
                     "--base-url", server.base_url, "--template", "Say {prompt}", "--no-progress")
    refused(result, "--template does not apply to a .jsonl input")
    assert server.stats.requests == 0


def test_a_bad_message_inside_a_body_fails_that_row_only(tmp_path: Path, sim) -> None:
    server = sim()
    src = write_requests(tmp_path / "requests.jsonl", [
        GOOD, _line("odd", {"model": "sim-1", "messages": [{"role": "robot", "content": "x"}]})])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--no-progress")
    assert result.returncode == 1, result.stderr
    rows = read_output(out)
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert "role" in rows[1]["error"]
    assert server.stats.requests == 1
