"""What the simulator tests share: a thin aiohttp client, a served simulator, small checks."""

from __future__ import annotations

import asyncio
import base64
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from batchrun.sim import (
    SimConfig,
    Simulator,
    running,
)

ROOT = Path(__file__).resolve().parents[2]


GO_DURATION = re.compile(r"\A(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)\Z")


PNG_1PX = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chat(text: str = "hello", **params: Any) -> dict[str, Any]:
    return {"model": "sim-1", "messages": user(text), **params}


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    raw: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw)

    @property
    def error(self) -> dict[str, Any]:
        return self.json["error"]

    @property
    def content(self) -> str | None:
        return self.json["choices"][0]["message"]["content"]


class Client:
    """A thin aiohttp client bound to one simulator."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session, self.base_url = session, base_url

    async def post(
        self,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        path: str = "/chat/completions",
        timeout: float = 10.0,
    ) -> Reply:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.session.post(
            self.base_url + path, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as r:
            return Reply(r.status, CIMultiDict(r.headers), await r.read())

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        url = self.base_url.removesuffix("/v1") + path if path.startswith("/_") else (self.base_url + path)
        async with self.session.get(url, headers=headers) as r:
            return Reply(r.status, CIMultiDict(r.headers), await r.read())


@asynccontextmanager
async def served(config: SimConfig | None = None) -> AsyncIterator[tuple[Simulator, Client]]:
    async with running(config or SimConfig()) as sim, aiohttp.ClientSession() as session:
        yield sim, Client(session, sim.base_url)


def run_with(config: SimConfig, scenario: Callable[[Simulator, Client], Awaitable[None]]) -> None:
    """Run one async scenario against a fresh simulator."""

    async def main() -> None:
        async with served(config) as (sim, client):
            await scenario(sim, client)

    asyncio.run(main())


def go_seconds(text: str) -> float:
    """Parse the Go durations the simulator sends."""
    if text.endswith("ms"):
        return int(text[:-2]) / 1000
    match = GO_DURATION.match(text)
    assert match, text
    hours, minutes = (int(g[:-1]) if g else 0 for g in match.group(1, 2))
    return hours * 3600 + minutes * 60 + float(match.group(3)[:-1])


def validates(value: Any, schema: dict[str, Any]) -> bool:
    """A tiny JSON-schema check covering what the simulator generates."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return (
            isinstance(value, dict)
            and all(k in value for k in schema.get("required", []))
            and all(validates(value[k], s) for k, s in props.items() if k in value)
        )
    if kind == "array":
        return (
            isinstance(value, list)
            and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf)
            and all(validates(v, schema.get("items", {})) for v in value)
        )
    if kind == "string":
        return isinstance(value, str) and schema.get("minLength", 0) <= len(value) <= schema.get(
            "maxLength", math.inf
        )
    if kind in ("integer", "number"):
        ok_type = isinstance(value, int) if kind == "integer" else isinstance(value, int | float)
        return (
            ok_type
            and not isinstance(value, bool)
            and schema.get("minimum", -math.inf) <= value <= schema.get("maximum", math.inf)
            and schema.get("exclusiveMinimum", -math.inf) < value < schema.get("exclusiveMaximum", math.inf)
        )
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    return True


async def settle(check: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "units": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}


OTHER_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
    },
}


async def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def request_line(custom_id: str, text: str, model: str = "sim-1", **params: Any) -> dict[str, Any]:
    """One line of a batch input file."""
    body = {**chat(text, **params), "model": model}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[Any]) -> bytes:
    """Lines as JSONL bytes, one final newline."""
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


class BatchAPI:
    """The Files and Batches endpoints of one simulator, over plain aiohttp."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session, self.base_url = session, base_url

    async def upload(
        self, data: bytes, filename: str = "requests.jsonl", purpose: str | None = "batch"
    ) -> Reply:
        form = aiohttp.FormData()
        if purpose is not None:
            form.add_field("purpose", purpose)
        form.add_field("file", data, filename=filename, content_type="application/jsonl")
        async with self.session.post(self.base_url + "/files", data=form) as r:
            return Reply(r.status, CIMultiDict(r.headers), await r.read())

    async def post(self, path: str, body: Any = None) -> Reply:
        async with self.session.post(self.base_url + path, json=body) as r:
            return Reply(r.status, CIMultiDict(r.headers), await r.read())

    async def get(self, path: str) -> Reply:
        async with self.session.get(self.base_url + path) as r:
            return Reply(r.status, CIMultiDict(r.headers), await r.read())

    async def create(self, file_id: str, **fields: Any) -> Reply:
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        return await self.post("/batches", {**body, **fields})

    async def submit(self, data: bytes, **fields: Any) -> dict[str, Any]:
        """Upload a file and create its batch; the batch object as created."""
        uploaded = await self.upload(data)
        assert uploaded.status == 200, uploaded.raw
        created = await self.create(uploaded.json["id"], **fields)
        assert created.status == 200, created.raw
        return dict(created.json)

    async def wait(
        self, batch_id: str, until: frozenset[str] = TERMINAL, timeout: float = 20
    ) -> dict[str, Any]:
        """Poll the batch until its status is one of `until`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            batch = (await self.get(f"/batches/{batch_id}")).json
            if batch["status"] in until:
                return dict(batch)
            assert asyncio.get_running_loop().time() < deadline, batch
            await asyncio.sleep(0.01)

    async def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        """The lines of an output or error file (none without a file)."""
        if file_id is None:
            return []
        reply = await self.get(f"/files/{file_id}/content")
        assert reply.status == 200, reply.raw
        return [orjson.loads(line) for line in reply.raw.splitlines()]


@asynccontextmanager
async def batch_api(config: SimConfig | None = None) -> AsyncIterator[tuple[Simulator, BatchAPI, Client]]:
    """A simulator with a Batch API client and a chat client bound to it."""
    async with served(config) as (sim, client):
        yield sim, BatchAPI(client.session, sim.base_url), client


@contextmanager
def simulate_command(*flags: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`batchrun simulate --port 0 FLAGS` in a process of its own: its base URL (`sim_process`)."""
    with sim_process([sys.executable, "-m", "batchrun", "simulate", "--port", "0", *flags],
                     env) as base_url:
        yield base_url


@contextmanager
def sim_process(command: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """A simulator `command` run in a process of its own, from the project's root: the base URL
    its first line announces. It must stop cleanly (exit 0) on SIGTERM when the block ends;
    killed if it does not."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                          env=environ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.fullmatch(r"batchrun simulator listening on (http://127\.0\.0\.1:\d+/v1)\n",
                                 line)
            assert match, line
            yield match.group(1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
