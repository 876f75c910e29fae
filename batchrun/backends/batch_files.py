"""Batch input files: jobs rendered as the OpenAI batch JSONL, split by lines and by size; pure.

    {"custom_id": "<key hex>", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

`custom_id` is the job's key in hex, so an output line maps back to its request without a table,
and a custom_id we never submitted is recognised as such.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from batchrun.data.openai_api import BATCH_URL, MAX_BATCH_BYTES

if TYPE_CHECKING:
    from batchrun.running.rows import Job

_HEAD = b'{"custom_id":"'
_MIDDLE = b'","method":"POST","url":"' + BATCH_URL.encode() + b'","body":'
LINE_OVERHEAD = len(_HEAD) + len(_MIDDLE) + 32 + 2  # custom_id of a 16-byte key, "}" and "\n"


def batch_line(job: Job) -> bytes:
    """One line of a batch input file (the body is already JSON: it is copied, not re-encoded)."""
    return _HEAD + job.key.hex().encode() + _MIDDLE + job.body + b"}\n"


@dataclass
class InputFile:
    """Lines of one batch input file and the jobs they carry, in order."""

    jobs: list[Job] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0

    def content(self) -> bytes:
        """The file as uploaded."""
        return b"".join(self.lines)


class FileSplitter:
    """Fills input files up to `max_lines` lines and `max_bytes` bytes, then hands them over."""

    def __init__(self, max_lines: int, max_bytes: int = MAX_BATCH_BYTES) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._current = InputFile()

    def add(self, jobs: Iterable[Job]) -> Iterator[InputFile]:
        """Add jobs; yield every file that is full."""
        for job in jobs:
            line = batch_line(job)
            current = self._current
            if current.lines and (len(current.lines) >= self.max_lines
                                  or current.size + len(line) > self.max_bytes):
                yield current
                current = self._current = InputFile()
            current.jobs.append(job)
            current.lines.append(line)
            current.size += len(line)

    def rest(self) -> InputFile | None:
        """The last, partly filled file (None: nothing left)."""
        current, self._current = self._current, InputFile()
        return current if current.lines else None


def count_files(requests: int, body_bytes: int, max_lines: int,
                max_bytes: int = MAX_BATCH_BYTES) -> int:
    """How many input files `requests` requests make (estimate by size: bodies are near alike)."""
    if requests == 0:
        return 0
    size = body_bytes + requests * LINE_OVERHEAD
    return max(math.ceil(requests / max_lines), math.ceil(size / max_bytes))
