"""The harness: a simulator on its own thread, and `serve` in a subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import aiohttp

from batchrun.sim import (
    SimConfig,
    SimulatorThread,
    Step,
    answer_text,
)

from .helpers import (
    ROOT,
    Client,
    Reply,
    chat,
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
