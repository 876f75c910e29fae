"""OpenAI batch JSONL: request lines read as input rows, and result rows written as output lines.

A request line is `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`, the
format of OpenAI's Batch API and of vLLM's `run-batch`. An output line is `{"id", "custom_id",
"response": {"status_code", "request_id", "body"} | null, "error": null | {"code", "message"}}`.
Input files are read in chunks, never whole; a bad line is one `InputError` naming its number.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa

from batchrun.data.openai_api import BATCH_URL
from batchrun.errors import InputError

SCHEMA = pa.schema([pa.field("custom_id", pa.string()), pa.field("body", pa.string())])
CHUNK_BYTES = 1 << 20
REQUIRED = ("custom_id", "method", "url", "body")
BOM = b"\xef\xbb\xbf"


class Readable(Protocol):
    """A binary stream: a local file or an object-store stream."""

    def read(self, size: int, /) -> bytes: ...


Opener = Callable[[], AbstractContextManager[Readable]]


@dataclass(frozen=True)
class Scan:
    """What one validating pass over a request file found."""

    rows: int
    first_without_model: int | None  # line number of the first body that names no model


def scan(name: str, opener: Opener) -> Scan:
    """Check every line (and that no custom_id repeats) before anything is sent."""
    # 8 bytes per row: a hash of each custom_id, sorted at the end; a set of the ids themselves
    # would cost ~100 bytes a row. Only hashes that collide are looked at again, by id.
    hashes = array("q")
    rows, without_model = 0, None
    with opener() as stream:
        for number, raw in lines(stream):
            custom_id, body = parse_line(name, number, raw)
            hashes.append(hash(custom_id))
            rows += 1
            if without_model is None and "model" not in body:
                without_model = number
    _check_unique(name, opener, hashes)
    return Scan(rows, without_model)


def record_batches(name: str, opener: Opener, rows: int) -> Iterator[pa.RecordBatch]:
    """The requests as (custom_id, body JSON text) record batches of `rows` rows, in file order."""
    ids: list[str] = []
    bodies: list[str] = []
    with opener() as stream:
        for number, raw in lines(stream):
            custom_id, body = parse_line(name, number, raw)
            ids.append(custom_id)
            bodies.append(orjson.dumps(body).decode())
            if len(ids) == rows:
                yield _batch(ids, bodies)
                ids, bodies = [], []
    if ids:
        yield _batch(ids, bodies)


def _batch(ids: list[str], bodies: list[str]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.string()), pa.array(bodies, pa.string())], schema=SCHEMA
    )


def lines(stream: Readable) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each non-blank line, read a chunk at a time (lines of any length)."""
    number = 0
    pending: list[bytes] = []
    first = True
    while chunk := stream.read(CHUNK_BYTES):
        if first:
            chunk, first = chunk.removeprefix(BOM), False
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            pending.append(chunk[start:end])
            line = b"".join(pending) if len(pending) > 1 else pending[0]
            pending = []
            number += 1
            if line.strip():
                yield number, line
            start = end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    if pending:
        line = b"".join(pending)
        if line.strip():
            yield number + 1, line


def parse_line(name: str, number: int, raw: bytes) -> tuple[str, dict[str, Any]]:
    """(custom_id, body) of one request line, or an InputError naming the line and the fix."""
    def bad(problem: str, fix: str = "fix or remove that line") -> InputError:
        return InputError(f"input {name} line {number}: {problem}; {fix}")

    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({str(exc).split(':')[0]})",
                  "each line must be one JSON request object") from None
    if not isinstance(line, dict):
        raise bad(f"a {type(line).__name__} where a JSON object belongs",
                  "each line must be one JSON request object")
    missing = [key for key in REQUIRED if key not in line]
    if missing:
        raise bad(f"missing {', '.join(missing)}",
                  f'each line needs custom_id, method ("POST"), url ("{BATCH_URL}") and body')
    custom_id, method, url, body = (line[key] for key in REQUIRED)
    if not isinstance(custom_id, str) or not custom_id:
        raise bad(f"custom_id must be a non-empty string (got {_show(custom_id)})",
                  "quote it: \"custom_id\": \"row-1\"")
    if method != "POST":
        raise bad(f'method must be "POST" (got {_show(method)})')
    if url != BATCH_URL:
        raise bad(f'url must be "{BATCH_URL}" (got {_show(url)})',
                  "only chat completions are supported")
    if not isinstance(body, dict):
        raise bad(f"body must be a JSON object (got {_show(body)})")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad('body has no "messages" list', "put the chat in body.messages as a list of "
                  "{role, content}")
    if "model" in body and (not isinstance(body["model"], str) or not body["model"]):
        raise bad(f'body "model" must be a non-empty string (got {_show(body["model"])})')
    if body.get("stream"):
        raise bad('body asks for "stream": true, which batchrun does not read',
                  'remove "stream" from the body')
    return custom_id, body


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode() if _dumpable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dumpable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def _check_unique(name: str, opener: Opener, hashes: array[int]) -> None:
    """Refuse a file in which a custom_id repeats, naming both lines."""
    if len(hashes) < 2:
        return
    ordered = np.sort(np.frombuffer(hashes, dtype=np.int64))
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return
    suspects = set(ordered[1:][same].tolist())
    seen: dict[str, int] = {}
    with opener() as stream:
        for number, raw in lines(stream):
            custom_id, _ = parse_line(name, number, raw)
            if hash(custom_id) not in suspects:
                continue
            if custom_id in seen:
                raise InputError(
                    f"input {name} line {number}: custom_id {_show(custom_id)} repeats line "
                    f"{seen[custom_id]}; give each request its own custom_id"
                )
            seen[custom_id] = number


# --- output lines -------------------------------------------------------------------------------


def row_id(index: int) -> str:
    """The id of an output line whose request got no response id (failed or never answered)."""
    return f"batchrun-row-{index}"


def output_line(index: int, custom_id: str, result: tuple[Any, ...], created: int) -> bytes:
    """One batch-output line from a row's result columns (`journal.readback.output_rows`: the
    output's RESULT_FIELDS, parsed, cached, endpoint, then the usage details).

    `created` stands for the answer's own timestamp, which the journal does not keep per row.
    The usage is the provider's as it reported it: the details (cached and reasoning tokens,
    `cost`) where it gave them. A run with endpoints names the one that settled the row.
    """
    (response, finish_reason, prompt_tokens, completion_tokens, total_tokens, status, error,
     _attempts, _latency, model, response_id, _cost, _parsed, _hit, endpoint, cached_tokens,
     reasoning_tokens, provider_cost) = result
    line_id = response_id or row_id(index)
    if status != "ok":
        code = _error_code(status, error)
        text = error or "no answer yet: the run stopped before this row was sent"
        return orjson.dumps({"id": line_id, "custom_id": custom_id, "response": None,
                             "error": {"code": code, "message": text},
                             **({"endpoint": endpoint} if endpoint is not None else {})})
    content, tool_calls = response, None
    if finish_reason == "tool_calls" and response is not None:
        calls = _tool_calls(response)
        if calls is not None:
            content, tool_calls = None, calls
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    usage = None
    if total_tokens is not None or prompt_tokens is not None:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": total_tokens}
        if cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
        if reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        if provider_cost is not None:
            usage["cost"] = provider_cost
    body = {
        "id": line_id, "object": "chat.completion", "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason,
                     "logprobs": None}],
        "usage": usage,
    }
    return orjson.dumps({
        "id": line_id, "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": row_id(index), "body": body},
        "error": None, **({"endpoint": endpoint} if endpoint is not None else {}),
    })


_HTTP = re.compile(r"HTTP (\d{3})\b")


def _error_code(status: str, error: str | None) -> str:
    """A short machine-readable code for a failed row: its HTTP status, or what kind of failure."""
    if status != "error":
        return "pending"
    if not error:
        return "failed"
    if error.startswith("invalid row"):
        return "invalid_row"
    found = _HTTP.search(error)
    if found:
        return f"http_{found.group(1)}"
    if "content filter" in error:
        return "content_filter"
    return "failed"


def _tool_calls(response: str) -> list[Any] | None:
    """The tool calls the journal keeps as JSON text when an answer has no content."""
    try:
        calls = orjson.loads(response)
    except orjson.JSONDecodeError:
        return None
    if isinstance(calls, list) and all(isinstance(c, dict) and "function" in c for c in calls):
        return calls
    return None
