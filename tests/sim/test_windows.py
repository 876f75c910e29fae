"""Rate limits: RPM and TPM windows (sliding, fixed) and buckets, concurrency, the x-ratelimit-* headers."""

from __future__ import annotations

import asyncio
import math

import pytest

from batchrun.protocol.tokens import count_prompt_tokens
from batchrun.sim import (
    SimConfig,
    Simulator,
    format_duration,
)
from batchrun.sim.windows import Bucket, FixedWindow

from .helpers import (
    GO_DURATION,
    Client,
    chat,
    go_seconds,
    run_with,
    user,
)


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


@pytest.mark.parametrize("ratio", [0.5, 2.0])
def test_tokenizer_ratio_counts_prompts_unlike_ours_in_usage_tpm_headers_and_billing(ratio: float) -> None:
    text = "A review that goes on for a while. " * 40
    ours = count_prompt_tokens(user(text))
    theirs = round(ours * ratio)
    charge = theirs + 10  # prompt + max_tokens, in the server's own count
    tpm = 2 * charge  # a 60-s window: exactly two requests fit, whatever our estimate says

    async def scenario(sim: Simulator, client: Client) -> None:
        first = await client.post(chat(text, max_tokens=10))
        assert first.status == 200
        usage = first.json["usage"]
        assert usage["prompt_tokens"] == theirs != ours
        assert usage["total_tokens"] == theirs + usage["completion_tokens"]
        assert first.headers["x-ratelimit-remaining-tokens"] == str(tpm - charge)
        assert (await client.post(chat(text, max_tokens=10))).status == 200
        refused = await client.post(chat(text, max_tokens=10))
        assert refused.status == 429 and f"Requested {charge}." in refused.error["message"]
        # Billing follows the server's count, as the usage it reported: exact, once per answer.
        stats = sim.stats
        assert stats.billed_prompt_tokens == 2 * theirs
        assert stats.billed_total_tokens == 2 * usage["total_tokens"]
        assert stats.billed_by_prompt == {text: 2}

    run_with(SimConfig(tpm=tpm, tokenizer_ratio=ratio), scenario)


def test_tokenizer_ratio_of_one_is_our_count_exactly() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("exactly ours"))
        assert r.json["usage"]["prompt_tokens"] == count_prompt_tokens(user("exactly ours"))

    run_with(SimConfig(tokenizer_ratio=1.0), scenario)


# --- the three shapes of a limit (issue 26) ----------------------------------------------------


def test_a_fixed_window_gives_all_of_its_allowance_back_at_its_end() -> None:
    window = FixedWindow(600, 10.0, "requests")  # 100 in each 10-second window
    assert window.limit == 100
    for i in range(100):
        assert window.wait(23.0 + i * 0.01, 1) == 0.0
        window.charge(23.0 + i * 0.01, 1)
    # Full until the window (20-30 s) ends, then all of it at once: no sliding.
    assert window.wait(29.5, 1) == pytest.approx(0.5)
    assert window.headers(29.5)["x-ratelimit-reset-requests"] == "500ms"
    assert window.wait(30.0, 100) == 0.0
    assert window.headers(30.0)["x-ratelimit-remaining-requests"] == "600"


def test_a_bucket_refills_continuously_up_to_what_it_holds() -> None:
    bucket = Bucket(6000, 1.0, "tokens")  # holds 100 tokens, refilled at 100 a second
    bucket.charge(5.0, 80)
    assert bucket.wait(5.0, 30) == pytest.approx(0.1)  # 10 short, at 100 a second
    assert bucket.wait(5.1, 30) == 0.0
    headers = bucket.headers(5.1)  # 70 missing: per-minute units, and full again in 0.7 s
    assert headers["x-ratelimit-remaining-tokens"] == str(30 * 60)
    assert headers["x-ratelimit-reset-tokens"] == "700ms"
    assert bucket.wait(60.0, 100) == 0.0  # never more than it holds
    assert bucket.wait(60.0, 101) == pytest.approx(0.01)


@pytest.mark.parametrize("shape", ["fixed", "bucket"])
def test_the_shapes_refuse_with_429_and_headers_like_the_sliding_window(shape: str) -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(math.ceil(loop.time()) - loop.time() + 0.02)  # a window's start
        replies = [await client.post(chat(str(i))) for i in range(11)]
        assert [r.status for r in replies] == [200] * 10 + [429]
        refused = replies[-1]
        assert refused.error["type"] == "requests" and "Limit 600" in refused.error["message"]
        wait = int(refused.headers["retry-after-ms"]) / 1000
        # The fixed window's end is most of a second away; the bucket has room again once two
        # requests' worth is back (the refused arrival counts too), in 0.2 s.
        assert 0.7 < wait <= 1.0 if shape == "fixed" else 0.1 < wait <= 0.2
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        await asyncio.sleep(wait)
        assert (await client.post(chat("again"))).status == 200

    run_with(SimConfig(rpm=600, window_s=1, limit_shape=shape), scenario)


def test_an_unknown_limit_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="limit_shape must be one of sliding, fixed, bucket"):
        SimConfig(limit_shape="leaky")
