"""Several keys: each with its own limits, credits (402 once used up) and counters."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from batchrun.sim import Account, SimConfig, Simulator, SimulatorThread, price_of

from .helpers import Client, Reply, chat, run_with

A, B = "sk-sim-key-a-111", "sk-sim-key-b-222"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def cost_of(reply: Reply, config: SimConfig) -> float:
    usage = reply.json["usage"]
    return price_of(config, reply.json["model"]).cost(usage["prompt_tokens"], usage["completion_tokens"])


def test_two_keys_are_limited_independently() -> None:
    config = SimConfig(window_s=1, accounts=(Account(A, rpm=120), Account(B, rpm=300, tpm=600_000)))

    async def scenario(sim: Simulator, client: Client) -> None:
        a = [await client.post(chat(f"a{i}"), headers=bearer(A)) for i in range(3)]
        assert [r.status for r in a] == [200, 200, 429]  # 2 a second for A
        refused = a[-1]
        assert refused.error["code"] == "rate_limit_exceeded" and "Limit 120" in refused.error["message"]
        assert 0 < int(refused.headers["retry-after-ms"]) <= 1000
        assert a[0].headers["x-ratelimit-limit-requests"] == "120"
        # B still has its 5 a second, though A is spent: its headers are its own.
        b = [await client.post(chat(f"b{i}"), headers=bearer(B)) for i in range(6)]
        assert [r.status for r in b] == [200] * 5 + [429]
        assert b[0].headers["x-ratelimit-limit-requests"] == "300"
        assert b[0].headers["x-ratelimit-limit-tokens"] == "600000"
        stats = sim.stats.by_key
        assert (stats[A].requests, stats[A].ok, stats[A].rate_limited) == (3, 2, 1)
        assert (stats[B].requests, stats[B].ok, stats[B].rate_limited) == (6, 5, 1)
        assert stats[A].status_counts == {200: 2, 429: 1}
        assert sim.stats.requests == 9 and sim.stats.rate_limited == 2

    run_with(config, scenario)


def test_a_key_counts_over_its_own_window_and_shape() -> None:
    # A bucket of half a second's worth (one request), refilled at 2 a second; the simulator's
    # own limits are per minute and far away.
    config = SimConfig(rpm=6000, accounts=(Account(A, rpm=120, window_s=0.5, limit_shape="bucket"),))

    async def scenario(sim: Simulator, client: Client) -> None:
        first = await client.post(chat("a"), headers=bearer(A))
        second = await client.post(chat("b"), headers=bearer(A))
        assert (first.status, second.status) == (200, 429)
        wait = int(second.headers["retry-after-ms"])
        assert 500 < wait <= 1000  # the refused arrival counts too: two to refill at 2 a second
        await asyncio.sleep(wait / 1000)
        assert (await client.post(chat("c"), headers=bearer(A))).status == 200

    run_with(config, scenario)


def test_a_keys_token_limit_and_the_simulators_own_limit_both_apply() -> None:
    # The simulator's rpm (every key together) is 6 a second; A's tpm admits ~one request.
    config = SimConfig(rpm=360, window_s=1, accounts=(Account(A, tpm=90_000), Account(B)))

    async def scenario(sim: Simulator, client: Client) -> None:
        assert (await client.post(chat("a", max_tokens=1000), headers=bearer(A))).status == 200
        r = await client.post(chat("a2", max_tokens=1000), headers=bearer(A))
        assert r.status == 429 and r.error["type"] == "tokens"
        # The refused request was charged to nothing: B's five still fit the shared six.
        statuses = [(await client.post(chat(f"b{i}"), headers=bearer(B))).status for i in range(5)]
        assert statuses == [200, 200, 200, 200, 429]  # the shared 6 a second, A's 2 included

    run_with(config, scenario)


def test_a_keys_concurrency_cap() -> None:
    config = SimConfig(latency=0.3, accounts=(Account(A, max_concurrency=1), Account(B)))

    async def scenario(sim: Simulator, client: Client) -> None:
        replies = await asyncio.gather(
            *(client.post(chat(f"a{i}"), headers=bearer(A)) for i in range(2)),
            *(client.post(chat(f"b{i}"), headers=bearer(B)) for i in range(3)),
        )
        assert sorted(r.status for r in replies[:2]) == [200, 429]
        assert [r.status for r in replies[2:]] == [200] * 3
        assert sim.stats.by_key[A].max_in_flight == 2 and sim.stats.by_key[B].max_in_flight == 3

    run_with(config, scenario)


def test_credits_run_out_then_every_request_gets_402() -> None:
    config = SimConfig(accounts=(Account(A, credits=0.0001), Account(B, credits=1.0)))

    async def scenario(sim: Simulator, client: Client) -> None:
        answered: list[Reply] = []
        while True:
            r = await client.post(chat(f"row {len(answered)}"), headers=bearer(A))
            if r.status != 200:
                break
            answered.append(r)
            assert len(answered) < 100
        # Served while the balance was positive; the last answer may take it below zero.
        spent = sum(cost_of(r, config) for r in answered)
        assert spent >= 0.0001 and spent - cost_of(answered[-1], config) < 0.0001
        assert sim.balance(A) == pytest.approx(0.0001 - spent)
        assert r.status == 402
        assert r.error["type"] == "insufficient_quota" and r.error["code"] == "insufficient_quota"
        assert r.error["message"].startswith("Insufficient credits")
        assert A not in r.raw.decode()
        # It stays 402, and the other key is served.
        assert [(await client.post(chat("again"), headers=bearer(A))).status for _ in range(3)] == [402] * 3
        assert (await client.post(chat("b"), headers=bearer(B))).status == 200
        mine = sim.stats.by_key[A]
        assert mine.ok == len(answered) and mine.no_credits == 4
        assert mine.spent_usd == pytest.approx(spent)
        assert sim.stats.billed_by_prompt.get("again") is None

    run_with(config, scenario)


def test_no_credits_in_llmost_style() -> None:
    config = SimConfig(error_style="llmost", accounts=(Account(A, credits=0),))

    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat(), headers=bearer(A))
        assert r.status == 402 and r.error["code"] == 402
        assert "Insufficient credits" in r.error["message"]

    run_with(config, scenario)


def test_unknown_or_missing_key_gets_401_and_api_key_is_one_more_key() -> None:
    config = SimConfig(api_key="sk-plain", accounts=(Account(A, rpm=60),))

    async def scenario(sim: Simulator, client: Client) -> None:
        assert (await client.post(chat())).status == 401
        r = await client.post(chat(), headers=bearer("sk-unknown"))
        assert r.status == 401 and r.error["code"] == "invalid_api_key"
        assert (await client.post(chat(), headers=bearer(A))).status == 200
        assert (await client.post(chat(), headers=bearer("sk-plain"))).status == 200
        assert set(sim.stats.by_key) == {A, "sk-plain"}  # no counters for refused keys
        assert sim.balance(A) is None  # no credits set: unlimited

    run_with(config, scenario)


def test_without_keys_everyone_shares_one_keyless_account() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        await client.post(chat("a"))
        await client.post(chat("b"), headers=bearer("sk-anything"))
        assert sim.stats.by_key[""].ok == 2 and sim.stats.ok == 2

    run_with(SimConfig(), scenario)


def test_per_key_stats_through_the_thread_harness_and_stats_endpoint() -> None:
    config = SimConfig(accounts=(Account(A, credits=5.0),))
    with SimulatorThread(config) as sim:

        async def calls() -> dict[str, object]:
            async with aiohttp.ClientSession() as session:
                client = Client(session, sim.base_url)
                reply = await client.post(chat("hello"), headers=bearer(A))
                assert reply.status == 200
                return dict((await client.get("/_stats")).json)

        stats = asyncio.run(calls())
        by_key = stats["by_key"]
        assert isinstance(by_key, dict) and by_key[A]["ok"] == 1
        assert by_key[A]["spent_usd"] == pytest.approx(sim.stats.billed_usd)
        assert sim.balance(A) == pytest.approx(5.0 - sim.stats.by_key[A].spent_usd)
        sim.reset_stats()
        assert sim.stats.by_key == {} and sim.balance(A) < 5.0  # credits stay spent


def test_account_config_is_checked() -> None:
    with pytest.raises(ValueError, match="key of its own"):
        SimConfig(accounts=(Account(A), Account(A)))
    with pytest.raises(ValueError, match="limit_shape"):
        Account(A, limit_shape="leaky")
    with pytest.raises(ValueError, match="credits"):
        Account(A, credits=-1)
