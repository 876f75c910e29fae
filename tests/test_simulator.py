"""The simulator, tested over real HTTP on loopback with an aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from batchrun.simulator import (
    SimConfig,
    Simulator,
    SimulatorThread,
    Step,
    answer_text,
    expected_answer,
    format_duration,
    running,
)
from batchrun.tokens import count_prompt_tokens

ROOT = Path(__file__).resolve().parents[1]
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


# --- answers ---------------------------------------------------------------------------------


def test_normal_answer_and_usage() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("Summarize: the cat sat on the mat"))
        assert r.status == 200
        doc = r.json
        assert doc["id"].startswith("chatcmpl-sim-")
        assert doc["object"] == "chat.completion" and doc["model"] == "sim-1"
        choice = doc["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] == "stop"
        content = choice["message"]["content"]
        marker = hashlib.sha256(b"Summarize: the cat sat on the mat").hexdigest()[:12]
        assert content.startswith(f"[{marker}]")
        prompt = count_prompt_tokens(user("Summarize: the cat sat on the mat"))
        words = len(content.split())
        assert doc["usage"] == {
            "prompt_tokens": prompt,
            "completion_tokens": words,
            "total_tokens": prompt + words,
        }
        stats = sim.stats
        assert (stats.requests, stats.ok, stats.status_counts) == (1, 1, {200: 1})
        assert stats.billed_total_tokens == prompt + words
        assert stats.billed_by_prompt == {"Summarize: the cat sat on the mat": 1}
        assert list(sim.last_bodies) == [chat("Summarize: the cat sat on the mat")]

    run_with(SimConfig(), scenario)


def test_answer_text_is_deterministic_and_per_prompt() -> None:
    answers = {answer_text(user(f"prompt {i}")) for i in range(200)}
    assert len(answers) == 200
    for answer in answers:
        assert 5 <= len(answer.split()) <= 40
        assert re.match(r"\[[0-9a-f]{12}\] ", answer)
    assert answer_text(user("same")) == answer_text(user("same"))
    multimodal = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        }
    ]
    assert answer_text(multimodal) == answer_text(user("describe"))


PROMPT_CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"messages": user("plain")}, {}),
    ({"messages": [{"role": "system", "content": "Be terse."}, *user("with system")]}, {}),
    ({"messages": user("short"), "max_tokens": 3}, {"max_tokens": 3}),
    ({"messages": user("long enough"), "max_tokens": 500}, {"max_tokens": 500}),
    (
        {"messages": user("json please"), "response_format": {"type": "json_object"}},
        {"response_format": {"type": "json_object"}},
    ),
    ({"messages": [*user("Write a poem"), {"role": "assistant", "content": "Waves on"}]}, {}),
    ({"messages": user("ünïcödé ✓ 日本")}, {}),
]


@pytest.mark.parametrize(("body", "kwargs"), PROMPT_CASES)
def test_expected_answer_matches_server(body: dict[str, Any], kwargs: dict[str, Any]) -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(body)
        assert r.status == 200, r.raw
        content, finish = expected_answer(
            body["messages"], kwargs.get("max_tokens"), response_format=kwargs.get("response_format")
        )
        assert r.content == content
        assert r.json["choices"][0]["finish_reason"] == finish
        assert r.json["usage"]["completion_tokens"] == len(content.split())

    run_with(SimConfig(), scenario)


def test_max_tokens_cuts_the_answer_with_finish_length() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        full = answer_text(user("cut me"))
        r = await client.post(chat("cut me", max_tokens=2))
        assert r.content == " ".join(full.split()[:2])
        assert r.json["choices"][0]["finish_reason"] == "length"
        assert r.json["usage"]["completion_tokens"] == 2
        r = await client.post(chat("cut me", max_tokens=len(full.split())))
        assert r.content == full and r.json["choices"][0]["finish_reason"] == "stop"

    run_with(SimConfig(), scenario)


def test_assistant_prefill_is_continued_under_the_users_marker() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        messages = [*user("Write a poem"), {"role": "assistant", "content": "Waves on"}]
        r = await client.post({"messages": messages})
        plain = answer_text(user("Write a poem"))
        assert r.content is not None and r.content != plain
        assert r.content.split()[0] == plain.split()[0]

    run_with(SimConfig(), scenario)


def test_model_defaults_to_sim_1_and_unknown_models_get_404() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post({"messages": user("no model")})
        assert r.status == 200 and r.json["model"] == "sim-1"
        r = await client.post(chat("x") | {"model": "gpt-9"})
        assert r.status == 404
        assert r.error["code"] == "model_not_found" and "gpt-9" in r.error["message"]
        r = await client.post(chat("x") | {"model": "sim-large"})
        assert r.status == 200 and r.json["model"] == "sim-large"
        r = await client.get("/models")
        assert [m["id"] for m in r.json["data"]] == ["sim-1", "sim-large"]

    run_with(SimConfig(models=("sim-1", "sim-large")), scenario)


# --- validation ------------------------------------------------------------------------------

INVALID: list[tuple[dict[str, Any], str]] = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"frequency_penalty": 2.1}, "frequency_penalty"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": 7}, "stop"),
    ({"n": 2}, "n"),
    ({"stream": True}, "stream"),
    ({"model": 42}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0]"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"max_token": 10}, "max_token"),
]


@pytest.mark.parametrize(("change", "param"), INVALID, ids=[p for _, p in INVALID])
def test_invalid_parameters_get_400_naming_them(change: dict[str, Any], param: str) -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("valid otherwise") | change)
        assert r.status == 400, r.raw
        assert r.error["type"] == "invalid_request_error"
        assert r.error["param"] == param
        assert sim.stats.ok == 0 and sim.stats.status_counts == {400: 1}

    run_with(SimConfig(), scenario)


def test_streaming_refused_with_a_clear_message() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat(stream=True))
        assert r.error["message"] == "streaming not supported by the simulator"

    run_with(SimConfig(), scenario)


def test_valid_edge_values_are_accepted() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        edges = {
            "temperature": 0,
            "top_p": 1,
            "frequency_penalty": -2,
            "presence_penalty": 2,
            "max_tokens": 1,
            "stop": ["a", "b", "c", "d"],
            "n": 1,
            "stream": False,
            "seed": 7,
            "user": "u1",
        }
        r = await client.post(chat("edges", **edges))
        assert r.status == 200, r.raw
        r = await client.post(chat("edges", temperature=2, stop="x", top_p=0.01))
        assert r.status == 200, r.raw

    run_with(SimConfig(), scenario)


def test_unparseable_body_gets_400() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        for raw in (b"{not json", b"[1, 2]", b""):
            r = await client.post(raw)
            assert r.status == 400 and r.error["type"] == "invalid_request_error"
        assert sim.stats.requests == 3

    run_with(SimConfig(), scenario)


def test_context_length_exceeded() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("word " * 110_000))
        assert r.status == 400 and r.error["code"] == "context_length_exceeded"
        assert "128000" in r.error["message"]

    run_with(SimConfig(), scenario)


def test_oversized_body_gets_413() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("x" * 5000))
        assert r.status == 413 and r.error["code"] == "request_too_large"
        assert (await client.post(chat("small"))).status == 200

    run_with(SimConfig(max_body_bytes=2000), scenario)


# --- auth and error styles -------------------------------------------------------------------


def test_api_key_required_and_never_echoed() -> None:
    key = "sk-sim-secret-123456"

    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat())
        assert r.status == 401 and r.error["type"] == "invalid_request_error"
        r = await client.post(chat(), headers={"Authorization": "Bearer sk-wrong-key-999"})
        assert r.status == 401 and r.error["code"] == "invalid_api_key"
        assert b"sk-wrong-key-999" not in r.raw and key.encode() not in r.raw
        r = await client.get("/models")
        assert r.status == 401
        r = await client.post(chat(), headers={"Authorization": f"Bearer {key}"})
        assert r.status == 200
        assert sim.stats.status_counts == {401: 2, 200: 1}

    run_with(SimConfig(api_key=key), scenario)


def test_openai_error_style() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.status(429, code_str="insufficient_quota"), Step.status(503))
        r = await client.post(chat())
        assert r.status == 429
        assert r.error == {
            "message": r.error["message"],
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
        assert "quota" in r.error["message"]
        r = await client.post(chat())
        assert r.status == 503 and r.error["type"] == "server_error"
        assert sim.stats.rate_limited == 1

    run_with(SimConfig(), scenario)


def test_llmost_error_style() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.status(402), Step.status(403, "model unavailable"))
        r = await client.post(chat())
        assert r.status == 402
        assert r.json == {
            "error": {"code": 402, "message": r.error["message"], "metadata": {"provider": "simulator"}}
        }
        assert "credits" in r.error["message"].lower()
        r = await client.post(chat())
        assert r.status == 403 and r.error["message"] == "model unavailable"
        r = await client.post(chat(temperature=9))
        assert r.status == 400 and r.error["code"] == 400 and "temperature" in r.error["message"]

    run_with(SimConfig(error_style="llmost"), scenario)


# --- scripts and rules -----------------------------------------------------------------------


def test_script_is_a_fifo_429_twice_then_200() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.status(429, retry_after=2, retry_after_ms=1500), Step.status(429))
        r = await client.post(chat("a"))
        assert r.status == 429 and r.error["code"] == "rate_limit_exceeded"
        assert r.headers["retry-after"] == "2" and r.headers["retry-after-ms"] == "1500"
        r = await client.post(chat("b"))
        assert r.status == 429 and "retry-after" not in r.headers
        assert (await client.post(chat("c"))).status == 200
        assert sim.stats.status_counts == {429: 2, 200: 1}
        assert sim.stats.billed_by_prompt == {"c": 1}

    run_with(SimConfig(), scenario)


def test_rule_matches_last_user_text_and_stops_after_times() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.rule("poison", Step.status(500), Step.status(502), times=3)
        sim.rule("forever", Step.status(503))
        statuses = [(await client.post(chat("row with poison"))).status for _ in range(4)]
        assert statuses == [500, 502, 502, 200]
        assert (await client.post(chat("clean row"))).status == 200
        assert [(await client.post(chat("forever"))).status for _ in range(3)] == [503] * 3
        # Only the LAST user message counts.
        messages = [*user("poison"), {"role": "assistant", "content": "ok"}, *user("forever no")]
        assert (await client.post({"messages": messages})).status == 503

    run_with(SimConfig(), scenario)


def test_rules_take_priority_over_the_script() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.status(500))
        sim.rule("special", Step.ok(), times=1)
        assert (await client.post(chat("special"))).status == 200
        assert (await client.post(chat("other"))).status == 500
        assert (await client.post(chat("other"))).status == 200

    run_with(SimConfig(), scenario)


def test_scripted_steps_beat_random_faults() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.ok(), Step.ok())
        assert [(await client.post(chat(str(i)))).status for i in range(2)] == [200, 200]
        assert (await client.post(chat("x"))).status in (500, 502, 503)

    run_with(SimConfig(fail_rate=1.0), scenario)


# --- faults ----------------------------------------------------------------------------------


def test_drop_closes_the_connection_without_a_response() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.drop())
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await client.post(chat())
        assert sim.stats.dropped == 1 and sim.stats.status_counts == {}
        assert (await client.post(chat())).status == 200

    run_with(SimConfig(), scenario)


async def settle(check: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_hang_ends_when_the_client_gives_up() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.hang())
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.post(chat(), timeout=0.3)
        assert time.monotonic() - started < 2
        await settle(lambda: sim.stats.in_flight == 0)
        assert sim.stats.ok == 0 and sim.stats.status_counts == {}

    run_with(SimConfig(), scenario)


def test_hang_is_bounded_then_drops() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.hang(0.2))
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await client.post(chat(), timeout=5)

    run_with(SimConfig(), scenario)


def test_stop_ends_hangs_and_trickles() -> None:
    async def main() -> None:
        sim = Simulator()
        await sim.start()
        sim.script(Step.hang(), Step.trickle(0.05))
        async with aiohttp.ClientSession() as session:
            client = Client(session, sim.base_url)
            calls = [asyncio.create_task(client.post(chat(str(i)), timeout=30)) for i in range(2)]
            await settle(lambda: sim.stats.in_flight == 2)
            started = time.monotonic()
            await sim.stop()
            assert time.monotonic() - started < 1.5
            for result in await asyncio.gather(*calls, return_exceptions=True):
                assert isinstance(result, aiohttp.ClientError | Reply)

    asyncio.run(main())


def test_garbage_bodies_are_not_json() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.garbage(), Step.garbage())
        for _ in range(2):
            r = await client.post(chat())
            assert r.status == 200
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(r.raw)
        assert sim.stats.ok == 0

    run_with(SimConfig(), scenario)


def test_trickle_sends_headers_then_a_byte_at_a_time() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.trickle(0.05))
        url = sim.base_url + "/chat/completions"
        async with client.session.post(url, json=chat()) as r:
            assert r.status == 200
            received = b""
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.4):
                    while True:
                        received += await r.content.readany()
            assert 2 <= len(received) <= 12
            assert received.startswith(b'{"id":')
        await settle(lambda: sim.stats.in_flight == 0)
        assert sim.stats.ok == 0

    run_with(SimConfig(), scenario)


def test_huge_is_a_valid_answer_of_the_requested_size() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.huge(3_000_000))
        r = await client.post(chat("big"))
        assert r.status == 200 and len(r.raw) == 3_000_000
        assert r.content is not None and r.content.rstrip() == answer_text(user("big"))
        assert r.json["usage"]["completion_tokens"] == len(answer_text(user("big")).split())
        assert sim.stats.billed_by_prompt == {"big": 1}

    run_with(SimConfig(), scenario)


def test_body_step_sends_exact_bytes() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        weird = [
            b'{"choices": []}',
            b"\xff\xfe\x00 not utf-8",
            b'{"choices": [{"message": {"content": 5}}], "usage": {"prompt_tokens": -3}}',
        ]
        sim.script(
            *(Step.body(raw) for raw in weird),
            Step.body(b"busy", status=503, headers={"Content-Type": "text/plain"}),
        )
        for raw in weird:
            r = await client.post(chat())
            assert (r.status, r.raw) == (200, raw)
        r = await client.post(chat())
        assert (r.status, r.raw) == (503, b"busy")
        assert r.headers["Content-Type"] == "text/plain"
        assert sim.stats.ok == 0

    run_with(SimConfig(), scenario)


def test_finish_reasons_content_filter_and_error() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.finish("content_filter"), Step.finish("error"))
        r = await client.post(chat("filtered"))
        assert r.content is None and r.json["choices"][0]["finish_reason"] == "content_filter"
        assert r.json["usage"]["completion_tokens"] == 0
        r = await client.post(chat("broken"))
        assert r.json["choices"][0]["finish_reason"] == "error"
        full = answer_text(user("broken"))
        assert r.content is not None and full.startswith(r.content) and r.content != full

    run_with(SimConfig(), scenario)


def test_delay_step_and_latency() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.delay(0.3))
        started = time.monotonic()
        assert (await client.post(chat())).status == 200
        assert time.monotonic() - started >= 0.3
        started = time.monotonic()
        await asyncio.gather(*(client.post(chat(str(i))) for i in range(5)))
        assert 0.08 <= time.monotonic() - started < 0.3  # concurrent, each 0.1 +/- 0.02 s

    run_with(SimConfig(latency=0.1, latency_jitter=0.02), scenario)


def test_random_faults_follow_the_seed() -> None:
    async def statuses() -> list[int | str]:
        config = SimConfig(fail_rate=0.3, garbage_rate=0.2, spurious_429_rate=0.2, seed=7)
        out: list[int | str] = []
        async with served(config) as (sim, client):
            for i in range(30):
                r = await client.post(chat(str(i)))
                out.append(r.status if r.status != 200 or r.raw.startswith(b'{"id"') else "garbage")
        return out

    first, second = asyncio.run(statuses()), asyncio.run(statuses())
    assert first == second
    assert {500, 502, 503} & set(first) and 429 in first and "garbage" in first and 200 in first


def test_random_drops_and_hangs() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        errors = 0
        for i in range(10):
            try:
                await client.post(chat(str(i)), timeout=0.2)
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
        assert errors == 10 and sim.stats.dropped >= 1

    run_with(SimConfig(drop_rate=0.5, hang_rate=0.5, hang_s=0.05), scenario)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SimConfig(error_style="xml")
    with pytest.raises(ValueError):
        SimConfig(fail_rate=0.7, drop_rate=0.7)


# --- rate limits -----------------------------------------------------------------------------


def test_rpm_sliding_window_allows_the_window_share_then_429() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        replies = [await client.post(chat(str(i))) for i in range(11)]
        assert [r.status for r in replies] == [200] * 10 + [429]
        refused = replies[-1]
        assert refused.error["type"] == "requests"
        assert refused.error["code"] == "rate_limit_exceeded"
        assert "Rate limit reached for requests per min" in refused.error["message"]
        assert "Limit 600" in refused.error["message"]
        wait_ms = int(refused.headers["retry-after-ms"])
        assert 0 < wait_ms <= 1000 and refused.headers["retry-after"] == "1"
        await asyncio.sleep(wait_ms / 1000)
        assert (await client.post(chat("again"))).status == 200
        assert sim.stats.rate_limited == 1 and sim.stats.requests == 12

    run_with(SimConfig(rpm=600, window_s=1), scenario)


def test_rpm_counts_rejected_requests_too() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        for i in range(5):
            assert (await client.post(chat(str(i)))).status == 200
        await asyncio.sleep(0.5)
        rejected = [(await client.post(chat(f"r{i}"))).status for i in range(5)]
        assert rejected == [429] * 5
        # The first five leave the window, but the five refusals are still in it.
        await asyncio.sleep(0.55)
        r = await client.post(chat("late"))
        assert r.status == 429
        await asyncio.sleep(int(r.headers["retry-after-ms"]) / 1000)
        assert (await client.post(chat("later"))).status == 200

    run_with(SimConfig(rpm=300, window_s=1), scenario)


def test_tpm_charges_prompt_plus_max_tokens_at_arrival() -> None:
    prompt = count_prompt_tokens(user("hi"))

    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("hi", max_tokens=50 - prompt))
        assert r.status == 200
        assert r.headers["x-ratelimit-remaining-tokens"] == str(int(50 * 60))  # 50 of 100 left
        r = await client.post(chat("hi", max_tokens=60 - prompt))
        assert r.status == 429 and r.error["type"] == "tokens"
        assert "Rate limit reached for tokens per min" in r.error["message"]
        assert int(r.headers["retry-after-ms"]) > 0
        # The refused request was not charged: exactly the remaining 50 still fit.
        assert (await client.post(chat("hi", max_tokens=50 - prompt))).status == 200
        assert (await client.post(chat("hi", max_tokens=1))).status == 429
        # Billing counts only real usage, far below the charge.
        assert sim.stats.billed_prompt_tokens == 2 * prompt

    run_with(SimConfig(tpm=6000, window_s=1), scenario)


def test_tpm_default_charge_and_request_too_large() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("no max_tokens"))  # charged prompt + 1024 > 1000
        assert r.status == 429 and "Request too large" in r.error["message"]
        assert r.error["code"] == "rate_limit_exceeded"
        r = await client.post(chat("bounded", max_tokens=100))
        assert r.status == 200

    run_with(SimConfig(tpm=1000), scenario)


def test_concurrency_limit() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        replies = await asyncio.gather(*(client.post(chat(str(i))) for i in range(5)))
        assert sorted(r.status for r in replies) == [200, 200, 429, 429, 429]
        assert sim.stats.max_in_flight <= 3

    run_with(SimConfig(max_concurrency=2, latency=0.2), scenario)


def test_rate_limit_headers_format() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat(max_tokens=10))
        h = r.headers
        assert h["x-ratelimit-limit-requests"] == "6000"
        assert h["x-ratelimit-remaining-requests"] == "5999"
        assert h["x-ratelimit-limit-tokens"] == "100000"
        used = count_prompt_tokens(user("hello")) + 10
        assert h["x-ratelimit-remaining-tokens"] == str(100000 - used)
        for name in ("requests", "tokens"):
            assert GO_DURATION.match(h[f"x-ratelimit-reset-{name}"]), h
        assert 55 < go_seconds(h["x-ratelimit-reset-requests"]) <= 60

    run_with(SimConfig(rpm=6000, tpm=100000), scenario)


def test_no_rate_limit_headers_when_disabled_or_unlimited() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat())
        assert not [k for k in r.headers if k.lower().startswith("x-ratelimit")]

    run_with(SimConfig(rpm=100, rate_limit_headers=False), scenario)
    run_with(SimConfig(), scenario)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.012, "12ms"),
        (0.0004, "1ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (17.28, "17.28s"),
        (60, "1m0s"),
        (90.5, "1m30.5s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
        (-1, "0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- structured output, tools, images --------------------------------------------------------


def test_json_object_answer() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("give json", response_format={"type": "json_object"}))
        doc = json.loads(r.content or "")
        assert doc["answer"] == answer_text(user("give json"))
        assert doc["words"] == len(doc["answer"].split())
        r = await client.post(chat("BADJSON here", response_format={"type": "json_object"}))
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.content or "")

    run_with(SimConfig(), scenario)


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "spam": {"type": "boolean"},
        "summary": {"type": "string", "maxLength": 30},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4},
        "author": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "exclusiveMinimum": 17}},
            "required": ["name", "age"],
        },
        "note": {"type": ["string", "null"]},
    },
    "required": ["label", "score", "stars", "spam", "summary", "tags", "author"],
    "additionalProperties": False,
}


def test_json_schema_answers_validate() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        fmt = {"type": "json_schema", "json_schema": {"name": "review", "schema": SCHEMA}}
        labels = set()
        for i in range(20):
            r = await client.post(chat(f"review {i}", response_format=fmt))
            doc = json.loads(r.content or "")
            assert validates(doc, SCHEMA), doc
            labels.add(doc["label"])
            assert r.content == expected_answer(user(f"review {i}"), response_format=fmt)[0]
        assert len(labels) > 1  # deterministic per prompt, but varied across prompts

    run_with(SimConfig(), scenario)


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


def test_tool_calls() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        tools = [WEATHER_TOOL, OTHER_TOOL]
        r = await client.post(chat("weather? CALL_TOOL", tools=tools))
        choice = r.json["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        args = json.loads(call["function"]["arguments"])
        assert validates(args, WEATHER_TOOL["function"]["parameters"])  # type: ignore[index]
        r = await client.post(chat("plain", tools=tools))
        assert r.json["choices"][0]["finish_reason"] == "stop" and r.content
        r = await client.post(chat("plain", tools=tools, tool_choice="required"))
        assert r.json["choices"][0]["finish_reason"] == "tool_calls"
        named = {"type": "function", "function": {"name": "lookup"}}
        r = await client.post(chat("plain", tools=tools, tool_choice=named))
        call = r.json["choices"][0]["message"]["tool_calls"][0]
        assert call["function"]["name"] == "lookup"
        assert isinstance(json.loads(call["function"]["arguments"])["id"], int)
        r = await client.post(chat("CALL_TOOL", tools=tools, tool_choice="none"))
        assert r.json["choices"][0]["finish_reason"] == "stop"
        # A tool result turn is valid input.
        messages = [
            *user("CALL_TOOL"),
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": '{"t": 3}'},
        ]
        assert (await client.post({"messages": messages, "tools": tools})).status == 200

    run_with(SimConfig(), scenario)


def test_images_are_counted_and_bad_data_urls_refused() -> None:
    def image(url: str) -> dict[str, Any]:
        return {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                    ],
                }
            ]
        }

    async def scenario(sim: Simulator, client: Client) -> None:
        assert (await client.post(image(f"data:image/png;base64,{PNG_1PX}"))).status == 200
        assert (await client.post(image("https://example.com/cat.jpg"))).status == 200
        for bad in (
            "data:image/png;base64,@@@not base64",
            "data:text/plain;base64,aGk=",
            "ftp://example.com/x.png",
        ):
            r = await client.post(image(bad))
            assert r.status == 400 and "image_url" in r.error["param"], bad
        assert (sim.stats.images_data_url, sim.stats.images_url) == (1, 1)
        r = await client.post(image(f"data:image/png;base64,{PNG_1PX}"))
        assert r.content == answer_text(user("what is this?"))
        assert r.json["usage"]["prompt_tokens"] == count_prompt_tokens(
            image(f"data:image/png;base64,{PNG_1PX}")["messages"]
        )

    run_with(SimConfig(), scenario)


# --- inspection, threads, subprocess ---------------------------------------------------------


def test_stats_and_reset_endpoints() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.status(500))
        await client.post(chat("a"))
        await client.post(chat("b"))
        stats = (await client.get("/_stats")).json
        assert stats["requests"] == 2 and stats["ok"] == 1
        assert stats["status_counts"] == {"500": 1, "200": 1}
        assert stats["billed_by_prompt"] == {"b": 1} and len(stats["arrivals"]) == 2
        async with client.session.post(sim.base_url.removesuffix("/v1") + "/_reset") as r:
            assert r.status == 200
        assert (await client.get("/_stats")).json["requests"] == 0
        assert sim.stats.requests == 0

    run_with(SimConfig(), scenario)


def test_alternative_paths() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        root = sim.base_url.removesuffix("/v1")
        for path in ("/chat/completions", "/api/v1/chat/completions"):
            async with client.session.post(root + path, json=chat()) as r:
                assert r.status == 200

    run_with(SimConfig(), scenario)


def test_simulator_thread_scripts_from_another_thread() -> None:
    with SimulatorThread(SimConfig(seed=3)) as sim:
        sim.script(Step.status(429))
        sim.rule("flaky", Step.status(502), times=1)

        async def calls() -> list[int]:
            async with aiohttp.ClientSession() as session:
                client = Client(session, sim.base_url)
                return [(await client.post(chat(p))).status for p in ("a", "flaky", "flaky", "b")]

        assert asyncio.run(calls()) == [429, 502, 200, 200]
        assert sim.stats.requests == 4 and sim.stats.billed_by_prompt == {"flaky": 1, "b": 1}
        sim.reset_stats()
        assert sim.stats.requests == 0


def test_serve_in_a_subprocess_prints_its_url_and_stops_on_sigterm() -> None:
    code = "from batchrun.simulator import serve, SimConfig; serve(SimConfig(), port=0)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.fullmatch(r"batchrun simulator listening on (http://127\.0\.0\.1:\d+/v1)\n", line)
            assert match, line

            async def call() -> Reply:
                async with aiohttp.ClientSession() as session:
                    return await Client(session, match.group(1)).post(chat("sub"))

            reply = asyncio.run(call())
            assert reply.status == 200 and reply.content == answer_text(user("sub"))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_malformed_schemas_and_tools_never_crash_the_server() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        odd = {
            "type": "object",
            "required": True,
            "properties": {
                "n": {"type": "integer", "minimum": "5"},
                "s": {"type": "string", "maxLength": -1},
                "a": {"type": "array", "minItems": "x"},
                "r": {"$ref": "#/nowhere"},
            },
        }
        fmt = {"type": "json_schema", "json_schema": {"name": "odd", "schema": odd}}
        r = await client.post(chat("odd", response_format=fmt))
        assert r.status == 200 and isinstance(json.loads(r.content or ""), dict)
        for tools in ([5], [{"type": "function", "function": 5}], "x"):
            assert (await client.post(chat(tools=tools))).status == 400
        r = await client.post(chat(tools=[WEATHER_TOOL], tool_choice={"function": 5}))
        assert r.status == 400 and r.error["param"] == "tool_choice"

    run_with(SimConfig(), scenario)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
PARAMS = [
    "model",
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "n",
    "stream",
    "response_format",
    "tools",
    "tool_choice",
    "frequency_penalty",
    "presence_penalty",
    "seed",
]
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool", "bot"]),
        "content": JSON | st.text(max_size=30),
    },
    optional={"tool_call_id": JSON, "tool_calls": JSON},
)
SCHEMA_WORDS = st.sampled_from(
    [
        "type",
        "properties",
        "items",
        "required",
        "enum",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "minItems",
        "maxItems",
        "maxLength",
        "anyOf",
        "allOf",
        "$ref",
        "const",
        "format",
        "object",
        "string",
    ]
)
SCHEMAS = st.recursive(
    JSON, lambda inner: st.dictionaries(SCHEMA_WORDS, inner, max_size=4), max_leaves=16
).filter(lambda v: isinstance(v, dict))
VALID_MESSAGES = st.just([{"role": "user", "content": "CALL_TOOL please"}])
BODIES = (
    st.fixed_dictionaries(
        {"messages": st.lists(MESSAGE, max_size=3) | JSON}, optional={name: JSON for name in PARAMS}
    )
    | st.fixed_dictionaries(
        {
            "messages": VALID_MESSAGES,
            "response_format": st.builds(
                lambda schema: {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
                SCHEMAS,
            ),
        }
    )
    | st.fixed_dictionaries(
        {
            "messages": VALID_MESSAGES,
            "tools": st.lists(
                st.builds(
                    lambda schema: {"type": "function", "function": {"name": "f", "parameters": schema}},
                    SCHEMAS,
                ),
                min_size=1,
                max_size=2,
            ),
        }
    )
)


def test_arbitrary_bodies_get_an_answer_or_a_clean_4xx() -> None:
    async def post(session: aiohttp.ClientSession, url: str, body: Any) -> Reply:
        # Stdlib json: it encodes integers beyond 64 bits, which the server must refuse cleanly.
        return await Client(session, url).post(json.dumps(body).encode())

    with SimulatorThread() as sim, asyncio.Runner() as runner:
        session = runner.run(_new_session())

        @settings(max_examples=150, deadline=None, database=None)
        @given(BODIES)
        def check(body: dict[str, Any]) -> None:
            reply = runner.run(post(session, sim.base_url, body))
            assert reply.status in (200, 400), (reply.status, reply.raw, body)
            doc = reply.json
            assert ("choices" in doc) if reply.status == 200 else ("error" in doc)

        try:
            check()
        finally:
            runner.run(session.close())


async def _new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()
