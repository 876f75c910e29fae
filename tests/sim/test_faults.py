"""Faults: error styles, drops, hangs, garbage, trickles, huge bodies, finish reasons, random faults."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from batchrun.sim import (
    SimConfig,
    Simulator,
    Step,
    answer_text,
)

from .helpers import (
    Client,
    Reply,
    chat,
    run_with,
    served,
    settle,
    user,
)


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


def test_drop_closes_the_connection_without_a_response() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.drop())
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await client.post(chat())
        assert sim.stats.dropped == 1 and sim.stats.status_counts == {}
        assert (await client.post(chat())).status == 200

    run_with(SimConfig(), scenario)


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
        config = SimConfig(fail_rate=0.3, garbage_rate=0.2, stray_429_rate=0.2, seed=7)
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


def _limit_headers(reply: Reply) -> list[str]:
    return [k for k in reply.headers if k.lower().startswith("x-ratelimit")]


def test_stray_429s_come_at_any_pace_without_limit_headers_and_are_charged_to_nothing() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        strays = [await client.post(chat(f"busy {i}", max_tokens=10)) for i in range(8)]
        for r in strays:
            assert r.status == 429 and r.headers["retry-after"] == "1"
            assert "retry-after-ms" not in r.headers and not _limit_headers(r)
            assert r.error["code"] == "rate_limit_exceeded" and "overloaded" in r.error["message"]
        # A scripted request is not thrown a stray: it shows the windows are untouched by the eight.
        sim.script(Step.ok())
        answered = await client.post(chat("scripted", max_tokens=10))
        assert answered.status == 200
        assert answered.headers["x-ratelimit-remaining-requests"] == "4"  # 5 a minute, 1 used
        charge = answered.json["usage"]["prompt_tokens"] + 10
        assert answered.headers["x-ratelimit-remaining-tokens"] == str(1000 - charge)
        stats = sim.stats
        assert (stats.stray_429s, stats.rate_limited, stats.ok) == (8, 8, 1)
        assert stats.billed_by_prompt == {"scripted": 1}

    run_with(SimConfig(rpm=5, tpm=1000, stray_429_rate=1.0), scenario)


def test_stray_429s_at_a_rate_leave_the_other_faults_of_a_seed_alone() -> None:
    async def statuses(stray: float) -> list[int]:
        config = SimConfig(fail_rate=0.3, stray_429_rate=stray, seed=5)
        async with served(config) as (sim, client):
            out = [(await client.post(chat(str(i)))).status for i in range(120)]
            assert sim.stats.stray_429s == out.count(429)
            return out

    plain = asyncio.run(statuses(0.0))
    with_strays = asyncio.run(statuses(0.2))
    assert 429 not in plain and 10 <= with_strays.count(429) <= 40
    rest = [s for s in with_strays if s != 429]
    assert rest == plain[: len(rest)]  # the fault dice did not move
    assert with_strays == asyncio.run(statuses(0.2))  # and the strays follow the seed


def test_stray_429_in_the_llmost_style() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat())
        assert r.status == 429 and r.error["code"] == 429 and "overloaded" in r.error["message"]
        assert r.error["metadata"] == {"provider": "simulator"}

    run_with(SimConfig(stray_429_rate=1.0, error_style="llmost"), scenario)
