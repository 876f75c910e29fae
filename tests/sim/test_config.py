"""SimConfig checks and scripting: the FIFO script, rules, and their priority over random faults."""

from __future__ import annotations

import pytest

from batchrun.sim import (
    SimConfig,
    Simulator,
    Step,
)

from .helpers import (
    Client,
    chat,
    run_with,
    user,
)


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


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SimConfig(error_style="xml")
    with pytest.raises(ValueError):
        SimConfig(fail_rate=0.7, drop_rate=0.7)
