"""Rich inputs: whole chats from a column, images (URL or local file as a data URL), tool calls."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from batchrun.protocol.tokens import count_prompt_tokens
from batchrun.sim import expected_answer

from .helpers import read_output, run_cli, write_csv

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def marker(text: str) -> str:
    return "[" + hashlib.sha256(text.encode()).hexdigest()[:12] + "]"


def test_a_messages_column_answers_the_last_user_turn(tmp_path: Path, sim) -> None:
    server = sim()
    chats = [
        [{"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": "Paris."},
         {"role": "user", "content": "And of Italy?"}],
        # Ends with an assistant turn: the model continues it (a prefill).
        [{"role": "system", "content": "Answer in French."},
         {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Je dirais"}],
        [{"role": "user", "content": [{"type": "text", "text": "Parts work too."}]}],
        {"role": "user", "content": "not a list"},
    ]
    src = write_csv(tmp_path / "chats.csv",
                    [{"id": i, "chat": json.dumps(c)} for i, c in enumerate(chats)]
                    + [{"id": 9, "chat": "{broken"}])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--messages-column", "chat", "--system", "Be brief.",
                     "--no-progress")
    assert result.returncode == 1, result.stderr
    rows = read_output(out)
    first = rows[0]["response"]
    assert first.startswith(marker("And of Italy?") + " ")
    sent = [{"role": "system", "content": "Be brief."}, *chats[0]]
    assert first == expected_answer(sent)[0]
    assert rows[0]["prompt_tokens"] == count_prompt_tokens(sent)
    # The chat's own system message is kept and --system is not added a second time.
    assert rows[1]["response"] == expected_answer(chats[1])[0]
    assert rows[1]["prompt_tokens"] == count_prompt_tokens(chats[1])
    assert rows[1]["response"].startswith(marker("Name a colour.") + " ")
    assert rows[2]["response"].startswith(marker("Parts work too.") + " ")
    assert rows[3]["status"] == rows[4]["status"] == "error"
    assert "non-empty JSON list" in rows[3]["error"]
    assert "not valid JSON" in rows[4]["error"]
    assert server.stats.requests == 3


def test_an_image_column_sends_urls_and_local_files_as_data_urls(tmp_path: Path, sim) -> None:
    server = sim()
    (tmp_path / "data" / "img").mkdir(parents=True)
    (tmp_path / "data" / "img" / "cat.png").write_bytes(PNG)
    (tmp_path / "data" / "img" / "dog.jpg").write_bytes(PNG)
    src = write_csv(tmp_path / "data" / "photos.csv", [
        {"prompt": "Describe the cat.", "image": "img/cat.png"},  # relative to the CSV's folder
        {"prompt": "Describe the dog.", "image": str(tmp_path / "data" / "img" / "dog.jpg")},
        {"prompt": "Describe the web image.", "image": "https://example.com/a.png"},
        {"prompt": "Text only.", "image": ""},
        {"prompt": "Describe the missing one.", "image": "img/missing.png"},
    ])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--image-column", "image", "--no-progress",
                     cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert (server.stats.images_data_url, server.stats.images_url) == (2, 1)
    rows = read_output(out)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "ok", "error"]
    assert rows[0]["response"].startswith(marker("Describe the cat.") + " ")
    assert "img/missing.png" in rows[4]["error"] and "cannot be read" in rows[4]["error"]
    assert server.stats.requests == 4  # the missing file was never sent


def test_tools_from_the_job_file_record_tool_calls(tmp_path: Path, sim) -> None:
    server = sim()
    write_csv(tmp_path / "in.csv", [
        {"prompt": "CALL_TOOL: my order 42 never arrived"},
        {"prompt": "Lovely lamp, thanks."},
    ])
    job = tmp_path / "tools.toml"
    job.write_text(f"""
[input]
path = "in.csv"
[output]
path = "out.parquet"
[provider]
base_url = "{server.base_url}"
[request]
model = "sim-1"
tool_choice = "auto"

[[request.tools]]
type = "function"
[request.tools.function]
name = "open_ticket"
description = "Open a support ticket."
[request.tools.function.parameters]
type = "object"
required = ["order", "urgent"]
[request.tools.function.parameters.properties.order]
type = "integer"
[request.tools.function.parameters.properties.urgent]
type = "boolean"
""")
    result = run_cli("run", job, "--no-progress")
    assert result.returncode == 0, result.stderr
    called, plain = read_output(tmp_path / "out.parquet")
    assert called["finish_reason"] == "tool_calls" and called["status"] == "ok"
    calls = json.loads(called["response"])
    assert len(calls) == 1 and calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "open_ticket"
    args = json.loads(calls[0]["function"]["arguments"])
    assert isinstance(args["order"], int) and isinstance(args["urgent"], bool)
    assert plain["finish_reason"] == "stop"
    assert plain["response"].startswith(marker("Lovely lamp, thanks.") + " ")
    # A named tool_choice forces the call on every row (flags and file merge as usual).
    forced = job.read_text().replace(
        'tool_choice = "auto"',
        'tool_choice = {type = "function", function = {name = "open_ticket"}}')
    job.write_text(forced.replace('path = "out.parquet"', 'path = "forced.parquet"'))
    assert run_cli("run", job, "--no-progress").returncode == 0
    reasons = [r["finish_reason"] for r in read_output(tmp_path / "forced.parquet")]
    assert reasons == ["tool_calls", "tool_calls"]
