"""`batchrun simulate`'s flags for keys, models, context lengths, usage details and cost."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from batchrun.sim import flags

from ..helpers import run_cli
from .helpers import Client, Reply, chat, simulate_command

KEY_A, KEY_B = "sk-flag-a-123", "sk-flag-b-456"


def test_simulate_serves_keys_models_contexts_and_cost_from_its_flags() -> None:
    with simulate_command(
        "--window", "1",
        "--key-env", "SIM_KEY_A:rpm=120,credits=0.00002", "--key-env", "SIM_KEY_B:tpm=600000",
        "--model", "small", "--model", "big", "--context", "small=200",
        "--reasoning-model", "big", "--reasoning-share", "0.5", "--cached-share", "0.5",
        "--price", "small=1,0.5,2", "--report-cost", env={"SIM_KEY_A": KEY_A, "SIM_KEY_B": KEY_B},
    ) as base_url:
        a, b = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}

        async def calls() -> list[Reply]:
            async with aiohttp.ClientSession() as session:
                client = Client(session, base_url)
                return [
                    await client.post(chat("a", model="small"), headers=a),
                    await client.post(chat("a", model="small"), headers=a),
                    await client.post(chat("a", model="small"), headers=a),  # A: 2 a second
                    await client.post(chat("b " * 900, model="small"), headers=b),  # > 200
                    await client.post(chat("b", model="huge"), headers=b),
                    await client.post(chat("b", model="big"), headers=b),
                    await client.post(chat("b"), headers={"Authorization": "Bearer sk-other"}),
                ]

        first, second, third, long, unknown, big, stranger = asyncio.run(calls())
        usage = first.json["usage"]
        assert first.status == 200 and first.headers["x-ratelimit-limit-requests"] == "120"
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        assert cached == usage["prompt_tokens"] // 2
        assert usage["cost"] == pytest.approx(
            ((usage["prompt_tokens"] - cached) * 1 + cached * 0.5 + usage["completion_tokens"] * 2) / 1e6)
        # A's credits (20 micro-dollars) are spent by its first answer, so no 429 but a 402.
        assert (second.status, third.status) == (402, 402)
        assert long.status == 400 and long.error["code"] == "context_length_exceeded"
        assert unknown.status == 404 and unknown.error["code"] == "model_not_found"
        assert big.status == 200
        assert big.json["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
        assert stranger.status == 401


@pytest.mark.parametrize(("args", "needle"), [
    (["--key-env", "NOT_SET_ANYWHERE"], "--key-env 'NOT_SET_ANYWHERE': that environment variable is not set"),
    (["--key-env", "SIM_KEY_A:rpm=fast"], "--key-env SIM_KEY_A: rpm='fast' is not a number"),
    (["--key-env", "SIM_KEY_A:burst=3"], "--key-env SIM_KEY_A: 'burst=3' is not one of"),
    (["--key-env", "SIM_KEY_A", "--key-env", "SIM_KEY_A"], "each account needs a key of its own"),
    (["--context", "small"], "--context 'small': expected MODEL=N"),
    (["--price", "small=1,2"], "--price 'small=1,2': expected MODEL=IN,CACHED,OUT"),
])
def test_simulate_refuses_bad_flag_values_in_one_line(args: list[str], needle: str) -> None:
    env = {**os.environ, "SIM_KEY_A": KEY_A}
    result = run_cli("simulate", "--port", "0", *args, env=env)
    assert result.returncode == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert KEY_A not in result.stderr and "Traceback" not in result.stderr


def test_key_env_reads_every_option() -> None:
    account = flags.account("K:rpm=60,tpm=1000,concurrency=2,window=1.5,shape=bucket,credits=0.25",
                            {"K": "sk-k"})
    assert (account.key, account.rpm, account.tpm, account.max_concurrency) == ("sk-k", 60, 1000, 2)
    assert (account.window_s, account.limit_shape, account.credits) == (1.5, "bucket", 0.25)
    assert flags.contexts(("org/model=4096",)) == {"org/model": 4096}
    assert flags.contexts(()) is None and flags.prices(()) is None
