"""A batch input file checked as OpenAI validates it: every problem found, each with its line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

MAX_ERRORS = 1000  # a file of garbage is reported in full up to here; the rest adds nothing
_KEYS = ("custom_id", "method", "url", "body")


@dataclass(frozen=True, slots=True)
class Line:
    """One request of a batch: its custom_id and chat-completion body."""

    custom_id: str
    body: dict[str, Any]


def batch_error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    """One entry of a failed batch's `errors.data`."""
    return {"code": code, "message": message, "param": param, "line": line}


def read_batch_file(
    data: bytes, endpoint: str, max_lines: int, max_bytes: int
) -> tuple[list[Line], list[dict[str, Any]], str | None]:
    """The file's lines, the validation errors that fail the batch (none: it may run), and its model."""
    if len(data) > max_bytes:
        message = f"The input file is {len(data)} bytes; a batch file may be at most {max_bytes} bytes."
        return [], [batch_error("file_too_large", message)], None
    text = data[:-1] if data.endswith(b"\n") else data  # one final newline ends the last line
    raws = text.split(b"\n") if text else []
    if not raws:
        return [], [batch_error("empty_file", "The input file is empty.")], None
    if len(raws) > max_lines:
        message = f"The input file has {len(raws)} requests; a batch may have at most {max_lines}."
        return [], [batch_error("too_many_tasks", message)], None
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for number, raw in enumerate(raws, 1):
        line, error = _read_line(raw, number, endpoint)
        if line is not None:
            line_model = line.body["model"]
            if model is None:
                model = line_model
            if line.custom_id in seen:
                error = batch_error(
                    "duplicate_custom_id",
                    "The custom_id for this request is a duplicate of another request. The custom_id "
                    "parameter must be unique for each individual request in a batch.",
                    number,
                    "custom_id",
                )
            elif line_model != model:
                error = batch_error(
                    "model_mismatch",
                    f"The model {line_model!r} of this request does not match the model {model!r} of the "
                    "batch's first request; a batch runs one model.",
                    number,
                    "body.model",
                )
            seen.add(line.custom_id)
            lines.append(line)
        if error is not None and len(errors) < MAX_ERRORS:
            errors.append(error)
    return lines, errors, model


def _read_line(raw: bytes, number: int, endpoint: str) -> tuple[Line | None, dict[str, Any] | None]:
    """One line parsed, or the error that makes the batch fail."""
    try:
        obj: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, batch_error("invalid_json_line", "This line is not parseable as valid JSON.", number)
    if not isinstance(obj, dict):
        return None, batch_error("invalid_json_line", "This line is not a JSON object.", number)
    for key in _KEYS:
        if key not in obj:
            return None, batch_error(
                "missing_required_parameter", f"Missing required parameter: '{key}'.", number, key
            )
    extra = sorted(set(obj) - set(_KEYS))
    if extra:
        return None, batch_error(
            "invalid_request", f"Unrecognized request argument supplied: {extra[0]}", number, extra[0]
        )
    custom_id, body = obj["custom_id"], obj["body"]
    if not isinstance(custom_id, str) or not custom_id:
        return None, batch_error(
            "invalid_value", "'custom_id' must be a non-empty string.", number, "custom_id"
        )
    if obj["method"] != "POST":
        return None, batch_error("invalid_value", "'method' must be 'POST'.", number, "method")
    if obj["url"] != endpoint:
        return None, batch_error(
            "url_mismatch",
            f"The URL {obj['url']!r} of this request does not match the batch endpoint {endpoint!r}.",
            number,
            "url",
        )
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        return None, batch_error(
            "missing_required_parameter", "Missing required parameter: 'body.model'.", number, "body.model"
        )
    return Line(custom_id, body), None
