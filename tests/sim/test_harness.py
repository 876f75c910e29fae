"""The harness: a simulator on its own thread, and `serve` in a subprocess."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp

from batchrun.protocol.tokens import count_prompt_tokens
from batchrun.sim import (
    SimConfig,
    SimulatorThread,
    Step,
    answer_text,
)

from .helpers import (
    BatchAPI,
    Client,
    Reply,
    chat,
    jsonl,
    request_line,
    sim_process,
    simulate_command,
    user,
)


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
    code = "from batchrun.sim import serve, SimConfig; serve(SimConfig(), port=0)"
    with sim_process([sys.executable, "-c", code]) as base_url:

        async def call() -> Reply:
            async with aiohttp.ClientSession() as session:
                return await Client(session, base_url).post(chat("sub"))

        reply = asyncio.run(call())
        assert reply.status == 200 and reply.content == answer_text(user("sub"))


def test_simulate_command_takes_the_stray_429_and_tokenizer_flags() -> None:
    flags = ["--rpm", "600", "--stray-429-rate", "0.5", "--tokenizer-ratio", "2", "--no-batch-api"]
    with simulate_command(*flags) as base_url:

        prompts = [f"flag number {i} " * (i + 1) for i in range(20)]

        async def calls() -> list[Reply]:
            async with aiohttp.ClientSession() as session:
                client = Client(session, base_url)
                return [await client.post(chat(p)) for p in prompts]

        replies = asyncio.run(calls())
        assert {r.status for r in replies} == {200, 429}
        assert asyncio.run(_get(base_url, "/batches")).status == 404  # --no-batch-api
        for prompt, r in zip(prompts, replies, strict=True):
            limit_headers = [k for k in r.headers if k.lower().startswith("x-ratelimit")]
            if r.status == 429:
                assert not limit_headers and r.headers["retry-after"] == "1"
            else:
                assert limit_headers
                assert r.json["usage"]["prompt_tokens"] == 2 * count_prompt_tokens(user(prompt))


async def _get(base_url: str, path: str) -> Reply:
    async with aiohttp.ClientSession() as session:
        return await BatchAPI(session, base_url).get(path)


def test_simulate_command_serves_batches_for_the_given_duration() -> None:
    with simulate_command("--batch-duration", "0.5") as base_url:
        async def run_batch() -> tuple[float, dict[str, Any]]:
            async with aiohttp.ClientSession() as session:
                api = BatchAPI(session, base_url)
                loop = asyncio.get_running_loop()
                started = loop.time()
                created = await api.submit(jsonl([request_line(f"r{i}", f"row {i}") for i in range(5)]))
                batch = await api.wait(created["id"])
                return loop.time() - started, batch

        took, batch = asyncio.run(run_batch())
        assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 5
        assert took >= 0.4
