"""Per-model context lengths, unknown models, cached and reasoning token details, usage.cost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from batchrun.protocol.tokens import count_prompt_tokens
from batchrun.sim import CACHE_BLOCK, Account, SimConfig, Simulator, expected_answer, price_of

from .helpers import Client, batch_api, chat, jsonl, request_line, run_with, user

SMALL_BIG = SimConfig(models=("small", "big", "other"), context_lengths={"small": 2000, "big": 100_000})
SYSTEM = "You are a careful assistant. " * 140  # 4,060 bytes: a prefix shared by every row


def rows(text: str, model: str = "sim-1", **params: object) -> dict[str, object]:
    messages = [{"role": "system", "content": SYSTEM}, *user(text)]
    return {"model": model, "messages": messages, **params}


def split(usage: dict[str, Any]) -> tuple[int, int, int]:
    """Prompt, cached and completion tokens of a usage."""
    return (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"],
            usage["completion_tokens"])


def test_context_length_per_model_counts_the_prompt_and_max_tokens() -> None:
    text = "word " * 1500  # ~1,880 tokens: fits small alone, not with 500 more
    prompt = count_prompt_tokens(user(text))

    async def scenario(sim: Simulator, client: Client) -> None:
        assert (await client.post(chat(text, model="small"))).status == 200
        r = await client.post(chat(text, model="small", max_tokens=500))
        assert r.status == 400 and r.error["code"] == "context_length_exceeded"
        assert r.error["type"] == "invalid_request_error"
        assert r.error["message"] == (
            f"This model's maximum context length is 2000 tokens. However, you requested "
            f"{prompt + 500} tokens ({prompt} in the messages, 500 in the completion). Please "
            "reduce the length of the messages or completion.")
        r = await client.post(chat(text * 2, model="small"))
        assert r.status == 400 and f"your messages resulted in {2 * prompt - 7} tokens" in r.error["message"]
        assert (await client.post(chat(text * 2, model="big", max_tokens=500))).status == 200
        # A model without a context length of its own has the default 128k.
        assert (await client.post(chat(text * 10, model="other"))).status == 200
        assert sim.stats.status_counts == {200: 3, 400: 2}

    assert 2 * prompt - 7 == count_prompt_tokens(user(text * 2))
    run_with(SMALL_BIG, scenario)


def test_unknown_model_gets_404_model_not_found() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("hi", model="huge"))
        assert r.status == 404 and r.error["code"] == "model_not_found"
        assert "`huge` does not exist" in r.error["message"]
        assert sim.stats.status_counts == {404: 1} and sim.stats.by_key[""].status_counts == {404: 1}

    run_with(SMALL_BIG, scenario)

    async def any_model(sim: Simulator, client: Client) -> None:  # none listed: any is served
        assert (await client.post(chat("hi", model="huge"))).status == 200

    run_with(SimConfig(context_lengths={"small": 2000}), any_model)


def test_cached_tokens_are_the_prefix_the_key_sent_before_in_128_token_blocks() -> None:
    a, b = {"Authorization": "Bearer sk-a"}, {"Authorization": "Bearer sk-b"}
    config = SimConfig(prompt_cache=True, cache_min_tokens=512, accounts=(Account("sk-a"), Account("sk-b")))
    # The shared bytes: the system message's framing (16 bytes), SYSTEM, the user message's
    # framing; a block is 128 tokens of 4 bytes.
    shared_blocks = (16 + len(SYSTEM) + 16) // (CACHE_BLOCK * 4)

    async def scenario(sim: Simulator, client: Client) -> None:
        first = await client.post(rows("alpha"), headers=a)
        assert first.json["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        second = (await client.post(rows("gamma"), headers=a)).json["usage"]
        assert second["prompt_tokens_details"]["cached_tokens"] == shared_blocks * CACHE_BLOCK == 896
        assert second["prompt_tokens"] == first.json["usage"]["prompt_tokens"]  # cached ones included
        # Each key has a cache of its own.
        other = (await client.post(rows("gamma"), headers=b)).json["usage"]
        assert other["prompt_tokens_details"]["cached_tokens"] == 0
        # The same prompt again: all of its whole blocks.
        again = (await client.post(rows("gamma"), headers=b)).json["usage"]
        assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] // 128 * 128
        # Under cache_min_tokens nothing is cached, however often it is sent.
        short = [(await client.post(chat("short"), headers=a)).json["usage"] for _ in range(2)]
        assert short[1]["prompt_tokens_details"] == {"cached_tokens": 0}
        assert sim.stats.by_key["sk-a"].billed_cached_tokens == 896
        assert sim.stats.billed_cached_tokens == 896 + again["prompt_tokens"] // 128 * 128

    run_with(config, scenario)


def test_cached_share_and_no_details_unless_configured() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        usage = (await client.post(rows("q"))).json["usage"]
        assert usage["prompt_tokens_details"] == {"cached_tokens": int(usage["prompt_tokens"] * 0.3)}
        assert "completion_tokens_details" not in usage and "cost" not in usage

    run_with(SimConfig(cached_share=0.3), scenario)

    async def plain(sim: Simulator, client: Client) -> None:
        usage = (await client.post(rows("q"))).json["usage"]
        assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}

    run_with(SimConfig(), plain)


def test_reasoning_tokens_are_a_share_of_completion_tokens() -> None:
    config = SimConfig(reasoning_models=("thinker",), reasoning_share=0.75)

    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("why?", model="thinker"))
        content, _ = expected_answer(user("why?"))
        visible = len(content.split())
        usage = r.json["usage"]
        assert r.content == content  # the answer itself is the same
        assert usage["completion_tokens_details"] == {"reasoning_tokens": 3 * visible}
        assert usage["completion_tokens"] == 4 * visible
        assert usage["total_tokens"] == usage["prompt_tokens"] + 4 * visible
        # Another model of the same provider reasons not at all, and says so.
        plain = (await client.post(chat("why?", model="sim-1"))).json["usage"]
        assert plain["completion_tokens_details"] == {"reasoning_tokens": 0}
        assert plain["completion_tokens"] == visible
        # max_tokens caps the answer and the reasoning together: 2 visible tokens of 8.
        capped = await client.post(chat("why?", model="thinker", max_tokens=8))
        finish = capped.json["choices"][0]["finish_reason"]
        assert (capped.content, finish) == expected_answer(user("why?"), 2)
        assert capped.json["usage"]["completion_tokens"] == 8
        assert sim.stats.billed_reasoning_tokens == 3 * visible + 6
        assert sim.stats.billed_completion_tokens == 4 * visible + visible + 8

    run_with(config, scenario)


def test_usage_cost_is_the_price_math_and_spends_credits() -> None:
    config = SimConfig(
        report_cost=True, cached_share=0.5, prices={"sim-1": (1.0, 0.25, 4.0)},
        reasoning_models=("sim-large",), accounts=(Account("sk-a", credits=1.0),),
    )
    key = {"Authorization": "Bearer sk-a"}

    async def scenario(sim: Simulator, client: Client) -> None:
        usage = (await client.post(rows("q1"), headers=key)).json["usage"]
        p, c, o = split(usage)
        assert c == p // 2 and c > 0
        assert usage["cost"] == pytest.approx(((p - c) * 1.0 + c * 0.25 + o * 4.0) / 1e6, rel=1e-12)
        # Without a price of its own: batchrun's table (sim-large: 5 and 15), cached at half.
        big = (await client.post(rows("q2", model="sim-large"), headers=key)).json["usage"]
        p2, c2, o2 = split(big)
        assert o2 > big["completion_tokens_details"]["reasoning_tokens"] > 0  # billed as output
        assert big["cost"] == pytest.approx(((p2 - c2) * 5.0 + c2 * 2.5 + o2 * 15.0) / 1e6, rel=1e-12)
        assert price_of(config, "sim-large").cached_input_per_million == 2.5
        spent = usage["cost"] + big["cost"]
        assert sim.stats.billed_usd == pytest.approx(spent, rel=1e-12)
        assert sim.stats.by_key["sk-a"].spent_usd == pytest.approx(spent, rel=1e-12)
        assert sim.balance("sk-a") == pytest.approx(1.0 - spent, rel=1e-12)

    run_with(config, scenario)


def test_batch_api_lines_report_the_same_usage_details() -> None:
    config = SimConfig(cached_share=0.5, reasoning_models=("sim-large",), report_cost=True)

    async def scenario() -> None:
        async with batch_api(config) as (sim, api, _):
            created = await api.submit(jsonl([request_line("r1", "row one", model="sim-large")]))
            batch = await api.wait(created["id"])
            [line] = await api.lines(batch["output_file_id"])
            usage = line["response"]["body"]["usage"]
            assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] // 2
            assert usage["completion_tokens_details"]["reasoning_tokens"] > 0
            assert usage["cost"] == pytest.approx(sim.stats.billed_usd) and usage["cost"] > 0

    asyncio.run(scenario())


def test_usage_config_is_checked() -> None:
    with pytest.raises(ValueError, match="reasoning_share"):
        SimConfig(reasoning_share=1.0)
    with pytest.raises(ValueError, match="cached_share"):
        SimConfig(cached_share=1.5)
    with pytest.raises(ValueError, match="context lengths"):
        SimConfig(context_lengths={"small": 0})
    with pytest.raises(ValueError, match="three amounts"):
        SimConfig(prices={"sim-1": (1.0, 2.0)})  # type: ignore[dict-item]
