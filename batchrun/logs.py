"""Logging setup: readable text lines, or one JSON object per line for log pipelines."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, event, message and the event's data."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        data = getattr(record, "data", None)
        if data:
            entry.update(data)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


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


def configure(log_format: str = "text", level: str = "warning") -> None:
    """Send batchrun's log records to stderr in the chosen format."""
    logger = logging.getLogger("batchrun")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(LEVELS[level])
    logger.propagate = False
