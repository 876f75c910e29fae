"""The Batch API of the simulator: batches that validate, run, expire or are cancelled, as OpenAI's do.

A batch goes validating -> in_progress -> finalizing -> completed, or to failed (its file did not
validate), expired (`batch_expire_after_s` or `batch_expire_after_fraction`: what is done is kept,
the rest gets `batch_expired` lines in the error file) or cancelling -> cancelled (likewise,
`batch_cancelled`). Each batch progresses in its own task on the server's loop, paced by
`batch_lines_per_s` or `batch_duration_s`, sleeping between lines rather than polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from batchrun.sim.batchfile import Line, read_batch_file
from batchrun.sim.config import SimConfig
from batchrun.sim.faults import error_doc
from batchrun.sim.files import FileStore, Refused, json_response
from batchrun.sim.stats import SimStats

ENDPOINT = "/v1/chat/completions"
WINDOW_S = 24 * 3600
_CREATE_KEYS = frozenset({"input_file_id", "endpoint", "completion_window", "metadata"})
_CHUNK = 200  # lines answered between yields to the loop, so online requests are served meanwhile
_UNDONE = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}

Doc = dict[str, Any]  # a JSON object

# Answers one request body as the online endpoint would: (HTTP status, response body), billed.
Answer = Callable[[Doc], tuple[int, Doc]]


@dataclass
class SimBatch:
    """One batch and what it has done so far."""

    id: str
    input_file_id: str
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating"
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int] = field(default_factory=dict)  # in_progress_at, completed_at, ...
    total: int = 0
    completed: int = 0
    failed: int = 0
    cancel_requested: bool = False
    born: float = 0.0  # the loop's clock at creation: expiry counts from here
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set by a cancel: stop sleeping

    def enter(self, status: str) -> None:
        """Move to `status`, stamping its `<status>_at` time."""
        self.status = status
        self.times[f"{status}_at"] = int(time.time())

    def object(self) -> dict[str, Any]:
        """The batch object exactly as OpenAI shapes it."""
        stamp = self.times.get
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": stamp("in_progress_at"),
            "expires_at": self.created_at + WINDOW_S,
            "finalizing_at": stamp("finalizing_at"),
            "completed_at": stamp("completed_at"),
            "failed_at": stamp("failed_at"),
            "expired_at": stamp("expired_at"),
            "cancelling_at": stamp("cancelling_at"),
            "cancelled_at": stamp("cancelled_at"),
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }


class BatchStore:
    """The batches of one simulator, their HTTP handlers, and the tasks that run them."""

    def __init__(
        self,
        config: SimConfig,
        files: FileStore,
        stats: SimStats,
        answer: Answer,
    ) -> None:
        self.config, self.files, self.stats = config, files, stats
        self._answer = answer
        self._batches: dict[str, SimBatch] = {}  # in creation order: listed newest first
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random(f"batch-{config.seed}")  # its own dice: online faults stay put

    async def stop(self) -> None:
        """Stop every batch where it is (the simulator is shutting down)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- HTTP handlers ----------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        """POST /v1/batches."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            message = "We could not parse the JSON body of your request."
            raise Refused(400, message, None, "invalid_json") from None
        file_id, metadata = _check_create(body)
        file = self.files.get(file_id)
        if file.purpose != "batch":
            raise Refused(
                400, f"The file {file_id} has purpose {file.purpose!r}; a batch needs a 'batch' file.",
                "input_file_id",
            )
        loop = asyncio.get_running_loop()
        batch = SimBatch(f"batch_{uuid.uuid4().hex}", file_id, metadata, int(time.time()), born=loop.time())
        self._batches[batch.id] = batch
        self.stats.batches_created += 1
        task = loop.create_task(self._run(batch, file.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return json_response(batch.object())

    async def retrieve(self, request: web.Request) -> web.Response:
        """GET /v1/batches/{id}."""
        return json_response(self._get(request.match_info["batch_id"]).object())

    async def list_batches(self, request: web.Request) -> web.Response:
        """GET /v1/batches?limit=&after=: newest first."""
        raw_limit = request.query.get("limit", "20")
        limit = int(raw_limit) if raw_limit.isdigit() else 0
        if not 1 <= limit <= 100:
            message = f"Invalid 'limit': expected an integer from 1 to 100, got {raw_limit!r}."
            raise Refused(400, message, "limit", "invalid_value")
        newest = list(reversed(self._batches.values()))
        after = request.query.get("after")
        if after is not None:
            ids = [b.id for b in newest]
            newest = newest[ids.index(after) + 1 :] if after in ids else []
        page = newest[:limit]
        return json_response(
            {
                "object": "list",
                "data": [b.object() for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(newest) > limit,
            }
        )

    async def cancel(self, request: web.Request) -> web.Response:
        """POST /v1/batches/{id}/cancel: cancelling now, cancelled once its task has stopped."""
        batch = self._get(request.match_info["batch_id"])
        if batch.status in ("failed", "completed", "expired"):
            raise Refused(400, f"Cannot cancel a batch with status '{batch.status}'.")
        if not batch.cancel_requested:
            batch.cancel_requested = True
            batch.enter("cancelling")
            batch.wake.set()
        return json_response(batch.object())

    def _get(self, batch_id: str) -> SimBatch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise Refused(404, f"No batch found with id '{batch_id}'.", "batch_id")
        return batch

    # --- running a batch --------------------------------------------------------------------

    async def _run(self, batch: SimBatch, data: bytes) -> None:
        """Validate, answer the lines at the configured pace, then write the output and error files."""
        cfg = self.config
        await _sleep(batch, cfg.batch_validating_s)  # the create call answers "validating" first
        lines, errors, batch.model = read_batch_file(data, ENDPOINT, cfg.batch_max_lines, cfg.batch_max_bytes)
        if errors:
            batch.errors = errors
            batch.enter("failed")
            return
        batch.total = len(lines)
        if not batch.cancel_requested:
            batch.enter("in_progress")
        output: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        done = await self._answer_lines(batch, lines, output, failures)
        if done < len(lines):
            end = "cancelled" if batch.cancel_requested else "expired"
            code, message = _UNDONE[end]
            error = {"code": code, "message": message}
            failures.extend(_line(line.custom_id, None, error) for line in lines[done:])
        else:
            batch.enter("finalizing")
            await asyncio.sleep(0)
            end = "cancelled" if batch.cancel_requested else "completed"
        self._write_files(batch, output, failures)
        batch.enter(end)

    async def _answer_lines(
        self, batch: SimBatch, lines: list[Line], output: list[Doc], failures: list[Doc]
    ) -> int:
        """Answer lines as their time comes; returns how many were done before an expiry or cancel."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        start = loop.time()
        pace = _pace(cfg, len(lines))  # lines per second
        expiry = cfg.batch_expire_after_s
        stop_at = batch.born + expiry if expiry is not None else math.inf
        fraction = cfg.batch_expire_after_fraction
        quota = math.ceil(fraction * len(lines)) if fraction is not None else len(lines)
        done = 0
        while done < len(lines) and done < quota and not batch.cancel_requested:
            now = loop.time()
            if now >= stop_at:
                break
            ready = int((now - start) * pace) if pace < math.inf else len(lines)
            due = min(quota, done + _CHUNK, ready)
            if due <= done:  # the next line's time has not come: sleep until it, the expiry or a cancel
                await _sleep(batch, min((done + 1) / pace - (now - start), stop_at - now) + 1e-4)
                continue
            for line in lines[done:due]:
                self._answer_one(batch, line, output, failures)
            done = due
            await asyncio.sleep(0)
        return done

    def _answer_one(self, batch: SimBatch, line: Line, output: list[Doc], failures: list[Doc]) -> None:
        """Answer one line into the output (200) or the error file (anything else)."""
        if self._rng.random() < self.config.batch_fail_rate:  # the provider failed it: not billed
            message = "The server had an error while processing your request."
            status, body = 500, error_doc(self.config.error_style, 500, message, "server_error")
        else:
            status, body = self._answer(line.body)
        response = {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body}
        if status == 200:
            batch.completed += 1
            output.append(_line(line.custom_id, response, None))
        else:
            batch.failed += 1
            failures.append(_line(line.custom_id, response, None))

    def _store(self, batch: SimBatch, kind: str, lines: list[dict[str, Any]]) -> str:
        data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        return self.files.add(f"{batch.id}_{kind}.jsonl", "batch_output", data).id

    def _write_files(self, batch: SimBatch, output: list[Doc], failures: list[Doc]) -> None:
        if self.config.batch_shuffle:
            self._rng.shuffle(output)
            self._rng.shuffle(failures)
        if output:
            batch.output_file_id = self._store(batch, "output", output)
        if failures:
            batch.error_file_id = self._store(batch, "error", failures)


def _check_create(body: Any) -> tuple[str, dict[str, str] | None]:
    """The input file id and metadata of a valid create request; a 400 naming the problem otherwise."""
    if not isinstance(body, dict):
        raise Refused(400, "The request body must be a JSON object.")
    for name in body:
        if name not in _CREATE_KEYS:
            raise Refused(400, f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise Refused(400, f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    if body["endpoint"] != ENDPOINT:
        raise Refused(
            400, f"Invalid value for 'endpoint': the simulator runs batches of {ENDPOINT} only, "
            f"not {body['endpoint']!r}.", "endpoint", "invalid_value",
        )
    if body["completion_window"] != "24h":
        raise Refused(
            400, f"Invalid value for 'completion_window': expected '24h', got {body['completion_window']!r}.",
            "completion_window", "invalid_value",
        )
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(isinstance(k, str) and len(k) <= 64 for k in metadata)
        and all(isinstance(v, str) and len(v) <= 512 for v in metadata.values())
    ):
        raise Refused(
            400, "Invalid 'metadata': at most 16 string pairs, keys up to 64 and values up to 512 "
            "characters.", "metadata", "invalid_value",
        )
    return body["input_file_id"], metadata


async def _sleep(batch: SimBatch, seconds: float) -> None:
    """Sleep up to `seconds`, less if the batch is cancelled meanwhile."""
    if seconds <= 0 or batch.cancel_requested:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(batch.wake.wait(), seconds)


def _pace(config: SimConfig, total: int) -> float:
    """Lines answered per second: from the fixed duration when one is set (0: all at once)."""
    if config.batch_duration_s is not None:
        return total / config.batch_duration_s if config.batch_duration_s > 0 else math.inf
    return config.batch_lines_per_s


def _line(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None) -> dict[str, Any]:
    """One line of an output or error file."""
    line_id = f"batch_req_{uuid.uuid4().hex}"
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": error}
