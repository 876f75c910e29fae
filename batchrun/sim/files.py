"""The Files API of the simulator: batch input uploads, and the output and error files batches write."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from batchrun.sim.stats import SimStats

MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # OpenAI's limit for one file
_FIELDS = ("file", "purpose")


@dataclass(frozen=True)
class SimFile:
    """One stored file and its OpenAI file object."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def object(self) -> dict[str, Any]:
        """The file object exactly as OpenAI shapes it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class Refused(Exception):
    """A request to the Files or Batches API refused with this status and OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def json_response(doc: Any) -> web.Response:
    """A 200 JSON response."""
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


class FileStore:
    """Files kept in memory for the life of the simulator."""

    def __init__(self, stats: SimStats) -> None:
        self.stats = stats
        self._files: dict[str, SimFile] = {}

    def add(self, filename: str, purpose: str, data: bytes) -> SimFile:
        """Store a file; returns it with its new id."""
        file = SimFile(f"file-{uuid.uuid4().hex[:24]}", filename, purpose, data, int(time.time()))
        self._files[file.id] = file
        return file

    def get(self, file_id: str) -> SimFile:
        """The file with this id, or a 404 naming it."""
        file = self._files.get(file_id)
        if file is None:
            raise Refused(404, f"No such File object: {file_id}", "id")
        return file

    async def upload(self, request: web.Request) -> web.Response:
        """POST /v1/files: multipart `file` and `purpose=batch`."""
        if request.content_type != "multipart/form-data":
            raise Refused(400, "The request must be multipart/form-data with 'file' and 'purpose' fields.")
        fields: dict[str, Any] = {}
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader) or part.name not in _FIELDS:
                name = part.name if isinstance(part, BodyPartReader) else "a nested multipart"
                raise Refused(400, f"Unrecognized request argument supplied: {name}", name)
            if part.name == "purpose":
                fields["purpose"] = await part.text()
            else:
                fields["file"] = (part.filename or "", await _read_limited(part))
        for name in _FIELDS:
            if name not in fields:
                raise Refused(400, f"Missing required parameter: '{name}'.", name)
        if fields["purpose"] != "batch":
            raise Refused(
                400, f"Invalid value for 'purpose': the simulator stores only 'batch' files, "
                f"not {fields['purpose']!r}.", "purpose"
            )
        filename, data = fields["file"]
        if not filename.endswith(".jsonl"):
            raise Refused(400, "Invalid file format for Batch API. Must be .jsonl", "file")
        self.stats.files_uploaded += 1
        return json_response(self.add(filename, "batch", data).object())

    async def retrieve(self, request: web.Request) -> web.Response:
        """GET /v1/files/{id}."""
        return json_response(self.get(request.match_info["file_id"]).object())

    async def content(self, request: web.Request) -> web.Response:
        """GET /v1/files/{id}/content: the file's bytes."""
        file = self.get(request.match_info["file_id"])
        return web.Response(body=file.data, content_type="application/octet-stream")


async def _read_limited(part: BodyPartReader) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(1 << 20):
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise Refused(413, f"File exceeds the maximum size of {MAX_UPLOAD_BYTES} bytes.", "file")
        chunks.append(chunk)
    return b"".join(chunks)
