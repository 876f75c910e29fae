"""Logging setup: readable text lines, or one JSON object per line for log pipelines.

In JSON mode every line batchrun writes to stderr is one JSON object with at least ``ts`` (Unix
seconds), ``time`` (UTC, ISO 8601), ``level``, ``event`` and ``message``; run events add their
fields at the top level (docs/logs.md lists each event's fields).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
LOGGER = "batchrun"


def json_line(created: float, level: str, event: str, message: str,
              data: dict[str, Any] | None = None) -> str:
    """One log line as JSON; the core keys cannot be overwritten by an event's data."""
    seconds, millis = divmod(round(created * 1000), 1000)
    entry: dict[str, Any] = {
        "ts": round(created, 3),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z",
        "level": level,
        "event": event,
        "message": message,
    }
    for key, value in (data or {}).items():
        entry.setdefault(key, value)
    return orjson.dumps(entry, default=str).decode()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, event, message and the event's data."""

    def format(self, record: logging.LogRecord) -> str:
        data = dict(getattr(record, "data", None) or {})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json_line(record.created, record.levelname.lower(),
                         getattr(record, "event", "log"), record.getMessage(), data)


class TextFormatter(logging.Formatter):
    """`batchrun: level: message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        data = getattr(record, "data", None) or {}
        extra = " ".join(f"{k}={v}" for k, v in data.items())
        line = f"batchrun: {record.levelname.lower()}: {record.getMessage()}"
        text = f"{line} {extra}" if extra else line
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time, so a live display can route it above."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


def configure(log_format: str = "text", level: str = "warning") -> None:
    """Send batchrun's log records to stderr in the chosen format."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(LEVELS[level])
    logger.propagate = False


def is_json() -> bool:
    """Whether batchrun's log records currently go out as JSON lines."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger(LOGGER).handlers)


def error_line(message: str, exit_code: int) -> str:
    """The last stderr line of a failed command, as text or JSON to match the log format."""
    if is_json():
        return json_line(time.time(), "error", "error", message, {"exit_code": exit_code})
    return f"batchrun: {message}"
