"""The limiter on a fake clock: exact pacing, no burst, the provider's book, 429s and learning."""

from __future__ import annotations

import asyncio
import random
from collections import deque

import pytest

from batchrun.sending.limiter import SAFETY, SLICE, Limiter
from batchrun.sending.limits.strict import (
    JITTER,
    MAX_JITTER,
    PROBE_AFTER,
    PROBE_BACKOFF,
    WINDOW,
)
from batchrun.sim.windows import Bucket, FixedWindow, Window


class FakeClock:
    """A clock the test moves; `sleep` advances it instead of waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


def limiter(rpm: float | None = None, tpm: float | None = None,
            concurrency: int | None = None) -> tuple[Limiter, FakeClock]:
    clock = FakeClock()
    return Limiter(rpm, tpm, concurrency, clock=clock, sleep=clock.sleep), clock


def starts(lim: Limiter, clock: FakeClock, sizes: list[int]) -> list[float]:
    """Start one request per size as early as the limiter allows; returns the start times."""
    out = []
    for tokens in sizes:
        clock.t += lim.wait_for(tokens)
        out.append(lim.take(tokens))
    return out


def serve(lim: Limiter, clock: FakeClock, server: Window | FixedWindow | Bucket,
          sizes: list[int], jitter: float = 0.0) -> int:
    """Start one request per size as early as the limiter allows, each arriving at the
    provider's allowance (the simulator's own) up to `jitter` seconds late; a 429 comes back at
    once and its row is sent again later. Returns how many the provider refused."""
    rng = random.Random(3)
    arrived = -1.0
    refused = 0
    pending = deque(sizes)
    while pending:
        tokens = pending.popleft()
        clock.t += lim.wait_for(tokens)
        sent = lim.take(tokens)
        arrived = max(arrived, sent + rng.uniform(0, jitter))  # in order, a little late
        wait = server.wait(arrived, tokens)
        lim.observe({})
        if wait:
            refused += 1
            lim.rate_limited_by_server(wait, sent)
            pending.append(tokens)
        else:
            server.charge(arrived, tokens)
        clock.t += 1e-4  # no two starts in the same instant
    return refused


def most_in_window(times: list[float], weights: list[int], window: float) -> int:
    """The largest total weight of starts inside any half-open window [t, t + window)."""
    best, total, lo = 0, 0, 0
    for hi, t in enumerate(times):
        total += weights[hi]
        while times[lo] <= t - window:
            total -= weights[lo]
            lo += 1
        best = max(best, total)
    return best


# --- pacing -----------------------------------------------------------------------------------


def test_first_requests_are_paced_not_burst() -> None:
    lim, clock = limiter(rpm=600)
    t0 = clock.t
    times = starts(lim, clock, [1] * 5)
    gap = 60 / (600 * SAFETY)
    assert times == pytest.approx([t0 + i * gap for i in range(5)])


@pytest.mark.parametrize("window", [0.25, 1.0, 1.5, 7.0, 60.0])
def test_rpm_pacing_is_exact_over_any_window(window: float) -> None:
    rpm = 6000
    lim, clock = limiter(rpm=rpm)
    times = starts(lim, clock, [1] * 12_000)  # two minutes of starts
    allowed = rpm * window / 60
    most = most_in_window(times, [1] * len(times), window)
    # The limit in any whole number of seconds (the strictest plausible window is one second);
    # in any other window, plus at most the one request that opens it.
    assert most <= allowed + (0 if window.is_integer() else 1)
    assert most >= int(allowed * SAFETY)  # and not slower than the pace asked for
    assert times[-1] - times[0] == pytest.approx((len(times) - 1) * 60 / (rpm * SAFETY))


@pytest.mark.parametrize("window", [1.0, 10.0, 60.0])
def test_tpm_pacing_is_exact_over_any_window(window: float) -> None:
    # 15,000 tokens a second; requests of at most 2% of that, so that whole requests cost too
    # little of a second for the run to try without the rule (see the coarse ones below).
    tpm = 900_000
    rng = random.Random(7)
    sizes = [rng.randint(20, 300) for _ in range(60_000)]
    lim, clock = limiter(tpm=tpm)
    times = starts(lim, clock, sizes)
    most = most_in_window(times, sizes, window)
    assert most <= tpm * window / 60  # whole seconds: never over, not even by one request
    whole = 1 - max(sizes) / (tpm / 60)  # the least of a second that whole requests fill
    assert most >= tpm * window / 60 * SAFETY * whole - max(sizes)
    # No start is later than the pace (each waits for the reservations before it) or the
    # window rule (until a second's allowance has room for it) needs: the run loses at most
    # one request's worth of each second to whole requests.
    gcra = sum(sizes[:-1]) * 60 / (tpm * SAFETY)
    assert gcra <= times[-1] - times[0] <= gcra / whole


@pytest.mark.parametrize(("per_word", "size"), [(0.5, 84), (0.6, 88), (1.0, 104), (3.0, 184)])
def test_requests_of_a_tenth_of_a_second_allowance_keep_to_whole_requests(
        per_word: float, size: int) -> None:
    # Issue 26: 60,000 TPM enforced over 1-second sliding windows, requests of 40 words charged
    # prompt + 64 by the provider's tokenizer: 5 to 11 fit in a window. The pace alone let one
    # more into a window about once a second; arrivals here come up to 20 ms late.
    lim, clock = limiter(tpm=60_000)
    server = Window(60_000, 1.0, "tokens")
    refused = serve(lim, clock, server, [size] * 1200, jitter=0.02)
    fit = 1000 // size  # whole requests in a second's allowance
    # Each try without the rule (below) costs exactly one 429; nothing else does.
    assert refused == lim.strict.failed == lim.strict.tries
    assert lim.strict.tries <= 1 + (clock.t - 1000 - PROBE_AFTER) // PROBE_BACKOFF
    # And the run takes all the whole requests a window allows, less JITTER of it.
    assert clock.t - 1000 <= 1200 / fit * (WINDOW + JITTER) * 1.01


def test_arrivals_that_come_closer_together_than_their_starts_widen_the_window() -> None:
    # Arrivals up to 50 ms late (a loaded machine, a long way to the provider): more than the
    # JITTER held back at first. Each 429 for a start that filled its window says, in its
    # retry-after, how much closer together the arrivals came: the window grows by it.
    lim, clock = limiter(tpm=60_000)
    refused = serve(lim, clock, Window(60_000, 1.0, "tokens"), [88] * 2400, jitter=0.05)
    assert JITTER < lim.strict.jitter <= MAX_JITTER
    assert refused - lim.strict.failed <= 0.005 * 2400


@pytest.mark.parametrize("shape", [FixedWindow, Bucket])
def test_a_provider_counting_over_longer_windows_or_a_bucket_gets_the_whole_pace(
        shape: type[FixedWindow | Bucket]) -> None:
    # The same coarse requests; the provider counts over 10-second windows, or a bucket that
    # holds one second's allowance. The run tries without the whole-request rule, and keeps to
    # the pace alone: a sixth faster here, with no 429.
    lim, clock = limiter(tpm=60_000)
    server = shape(60_000, 10.0 if shape is FixedWindow else 1.0, "tokens")
    t0 = clock.t
    assert serve(lim, clock, server, [184] * 500, jitter=0.02) == 0
    assert lim.strict.lenient and lim.strict.tries == 1
    # 500 requests at the pace: 5 s of whole requests (5 a second), then 5.3 a second.
    assert clock.t - t0 <= PROBE_AFTER + (500 - 5 * PROBE_AFTER) * 184 * 60 / (60_000 * SAFETY)


def test_headers_that_show_a_longer_window_let_the_run_try_without_the_rule_at_once() -> None:
    # A reset of 9.5 s: the provider's allowance comes back over ten seconds, not one.
    lim, clock = limiter(tpm=60_000)
    lim.observe({"x-ratelimit-limit-tokens": "60000", "x-ratelimit-remaining-tokens": "59816",
                 "x-ratelimit-reset-tokens": "9.5s"})
    times = starts(lim, clock, [184] * 10)
    assert lim.strict.lenient and times[-1] - times[0] < PROBE_AFTER
    # A reset within a second shows nothing: the run stays with whole requests per second
    # until it has been calm for PROBE_AFTER.
    strict, clock = limiter(tpm=60_000)
    strict.observe({"x-ratelimit-limit-tokens": "60000", "x-ratelimit-remaining-tokens": "59816",
                    "x-ratelimit-reset-tokens": "800ms"})
    times = starts(strict, clock, [184] * 10)
    assert not strict.strict.lenient and most_in_window(times, [184] * 10, 1.0) <= 1000


def test_a_request_above_a_second_allowance_goes_at_its_pace() -> None:
    lim, clock = limiter(tpm=6000)  # 100 tokens a second; each request needs 5 s of them
    times = starts(lim, clock, [500] * 4)
    gap = 500 * 60 / (6000 * SAFETY)
    assert times == pytest.approx([times[0] + i * gap for i in range(4)])


def test_both_clocks_bind_the_later_start() -> None:
    lim, clock = limiter(rpm=60, tpm=600)  # 1 request/s, 10 tokens/s (before SAFETY)
    t0 = clock.t
    times = starts(lim, clock, [5, 50, 5])
    assert times[1] - t0 == pytest.approx(60 / (60 * SAFETY))  # requests bind
    assert times[2] - times[1] == pytest.approx(50 * 60 / (600 * SAFETY))  # tokens bind


def test_timer_overshoot_does_not_slow_the_run_but_idling_banks_no_burst() -> None:
    lim, clock = limiter(rpm=6000)
    gap = 60 / (6000 * SAFETY)
    times = []
    for _ in range(1000):
        clock.t += lim.wait_for(1) + gap * 0.3  # every sleep wakes 30% of an interval late
        times.append(lim.take(1))
    # Lateness is absorbed: 1000 starts span 999 intervals plus a lateness for each second's
    # worth of them, not 999 * 1.3. (The pace keeps its schedule; the window rule counts the
    # starts as they went, so a second's first start, late, leaves the window that much later.)
    assert 999.3 * gap <= times[-1] - times[0] <= (999.3 + 0.3 * (1000 / 100 + 2)) * gap
    clock.t += 30.0  # a long lull
    times = starts(lim, clock, [1] * 50)
    assert most_in_window(times, [1] * 50, 0.1) <= 0.1 / gap + 2


def test_reservation_stands_for_the_window_whatever_the_answer_used() -> None:
    # A request reserves prompt + max_tokens; a short answer hands nothing back.
    lim, clock = limiter(tpm=6000)
    lim.take(1000)
    lim.observe({"content-type": "application/json"})  # an answer of 12 tokens: no refund
    assert lim.wait_for(1000) == pytest.approx(1000 * 60 / (6000 * SAFETY))


def test_acquire_waits_on_the_injected_clock_and_returns_the_start() -> None:
    lim, clock = limiter(rpm=120)

    async def main() -> list[float]:
        return [await lim.acquire(10) for _ in range(3)]

    times = asyncio.run(main())
    assert times == pytest.approx([1000.0, 1000.0 + 0.5 / SAFETY, 1000.0 + 1.0 / SAFETY])


def test_an_unpaced_start_goes_at_once_but_whatever_holds_starts_still_holds_it() -> None:
    """With no limit known, starts skip the gate; a pause, the provider's book, a learned cap
    or a start already waiting at the gate still hold the next one."""
    lim, clock = limiter(concurrency=4)

    async def main() -> list[float]:
        got = [await lim.acquire(10), await lim.acquire(10)]  # the open way: no time passes
        assert lim.gate.in_flight == 2 and not lim.gate.busy
        assert len(lim.starts) == 2  # counted for the measured pace all the same
        lim.release()
        # A 429 whose headers say the window is spent pauses every start for its retry-after.
        lim.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1ms"})
        assert lim.rate_limited_by_server(2.0, sent_at=clock.t)
        got.append(await lim.acquire(10))
        lim.release()
        lim.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3s"})
        got.append(await lim.acquire(10))  # no room left until the provider's reset
        return got

    assert asyncio.run(main()) == pytest.approx([1000.0, 1000.0, 1002.0, 1005.0])


def test_a_start_waiting_at_the_gate_is_not_overtaken_by_an_open_one() -> None:
    lim, clock = limiter(concurrency=1)

    async def main() -> list[str]:
        order: list[str] = []

        async def worker(name: str) -> None:
            await lim.acquire(1)
            order.append(name)

        await lim.acquire(1)  # the one slot is taken: the next start waits at the gate
        waiting = asyncio.create_task(worker("waiting"))
        await asyncio.sleep(0)
        assert lim.gate.busy
        lim.release()
        lim.cap.limit = lim.cap.ceiling = 2  # room for two now, but not past the gate
        await worker("late")
        await waiting
        return order

    assert asyncio.run(main()) == ["waiting", "late"]


def test_close_lets_waiting_workers_through_at_once() -> None:
    lim, clock = limiter(rpm=1)
    lim.take(1)
    lim.observe({"x-ratelimit-remaining-requests": "0"})
    assert lim.rate_limited_by_server(3600)

    async def main() -> float:
        lim.close()
        return await lim.acquire(1)

    assert asyncio.run(main()) == 1000.0  # no hour-long wait once the run is stopping


def test_a_request_larger_than_the_token_limit_is_named_before_sending() -> None:
    lim, _ = limiter(tpm=1000)
    assert lim.oversize(1000) is None
    reason = lim.oversize(1500)
    assert reason is not None and "1500" in reason and "--max-tokens" in reason
    assert limiter()[0].oversize(10**9) is None  # no limit, nothing is too large
    learned, _ = limiter()
    learned.observe({"x-ratelimit-limit-tokens": "800"})
    assert learned.oversize(900) is not None


# --- the provider's headers -------------------------------------------------------------------


@pytest.mark.parametrize(("reset", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("12ms", 0.012), ("1m30.5s", 90.5), ("2", 2.0),
])
def test_no_remaining_requests_holds_until_the_reset(reset: str, seconds: float) -> None:
    lim, clock = limiter()
    lim.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": reset})
    assert lim.wait_for(1) == pytest.approx(seconds)
    clock.t += seconds
    assert lim.wait_for(1) == 0.0  # after the reset our own books rule again


def test_limit_headers_lower_a_ceiling_set_too_high_at_once() -> None:
    lim, _ = limiter(rpm=12_000, tpm=2_000_000)
    lim.observe({"x-ratelimit-limit-requests": "6000", "x-ratelimit-limit-tokens": "150000",
                 "x-ratelimit-remaining-requests": "5999", "x-ratelimit-remaining-tokens": "149000",
                 "x-ratelimit-reset-requests": "10ms", "x-ratelimit-reset-tokens": "400ms"})
    assert (lim.rpm, lim.tpm) == (6000, 150_000)
    lower, _ = limiter(rpm=100)
    lower.observe({"x-ratelimit-limit-requests": "6000"})
    assert lower.rpm == 100  # a user's lower limit (sharing a key) is kept


def test_no_configured_limit_adopts_the_header_limit() -> None:
    lim, clock = limiter()
    lim.observe({"x-ratelimit-limit-requests": "600"})
    times = starts(lim, clock, [1] * 3)
    assert times[2] - times[0] == pytest.approx(2 * 60 / (600 * SAFETY))


def test_remaining_tokens_below_the_next_need_holds_until_the_reset() -> None:
    lim, clock = limiter()  # no limits known: only the provider's book
    lim.observe({"x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "2s"})
    assert lim.wait_for(50) == 0.0  # fits in what is left
    assert lim.wait_for(400) == pytest.approx(2.0)  # does not: wait for the reset


def test_remaining_tokens_count_what_we_started_since() -> None:
    lim, clock = limiter()
    lim.observe({"x-ratelimit-remaining-tokens": "1000", "x-ratelimit-reset-tokens": "10s"})
    lim.take(400)
    lim.take(400)
    assert lim.wait_for(200) == 0.0
    assert lim.wait_for(400) == pytest.approx(10.0)  # 200 left by the provider's book


def test_remaining_tokens_refill_until_the_reset() -> None:
    # OpenAI: the reset is when the allowance is whole again, so 5,900 tokens come back in 10 s.
    lim, clock = limiter()
    lim.observe({"x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "100",
                 "x-ratelimit-reset-tokens": "10s"})
    assert lim.wait_for(400) == pytest.approx(300 / 590)  # 300 short at 590 tokens/s


def test_remaining_is_truth_over_our_books_when_it_says_less() -> None:
    # Our pace alone would start now; the provider says its window is spent by someone else.
    lim, clock = limiter(tpm=600_000)
    lim.observe({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "850ms"})
    assert lim.wait_for(10) == pytest.approx(0.85)


def test_unparseable_headers_are_ignored() -> None:
    lim, _ = limiter(rpm=60)
    lim.observe({"x-ratelimit-limit-requests": "lots", "x-ratelimit-remaining-requests": "inf",
                 "x-ratelimit-reset-requests": "soon"})
    assert lim.rpm == 60 and lim.wait_for(1) == 0.0


# --- 429s -------------------------------------------------------------------------------------


def limited(lim: Limiter, sent_at: float | None, retry_after: float | None = 2.0,
            headers: dict[str, str] | None = None) -> bool:
    """A 429 comes back, as the engine reports it: the answer first, then the 429."""
    lim.observe(headers or {})
    return lim.rate_limited_by_server(retry_after, sent_at=sent_at)


def answered(lim: Limiter, clock: FakeClock, n: int) -> None:
    """`n` answers come back, then time passes: later 429s are not in the same bunch."""
    for _ in range(n):
        lim.observe({})
    clock.t += SLICE


def test_a_storm_of_429s_pauses_everyone_cuts_the_rate_and_it_recovers() -> None:
    lim, clock = limiter(rpm=600)
    gap = 60 / (600 * SAFETY)
    times = starts(lim, clock, [1] * 60)  # ~6 s at the pace
    answered(lim, clock, 50)
    for sent in times[-4:-1]:  # three 429s in a row may still be noise
        assert not limited(lim, sent)
    assert lim.wait_for(1) <= gap and lim.rpm == 600 and lim.pauses == 0
    assert limited(lim, times[-1])  # the fourth is a storm: every start waits out its retry-after
    assert lim.wait_for(1) == pytest.approx(2.0)
    cut, wall = lim.rpm, lim.requests.wall
    # The wall is what the server took: the starts of the last seconds less the refused ones.
    assert wall is not None and wall < 600 * 17 / 19 / SAFETY
    assert cut == pytest.approx(wall * 0.9) and (lim.pauses, lim.cuts) == (1, 1)
    # 429s for requests sent before the cut describe the old pace: not evidence, not even four.
    clock.t += 0.5
    for sent in times[-8:-4]:
        assert not limited(lim, sent, retry_after=3.0)
    assert lim.rpm == cut and lim.wait_for(1) == pytest.approx(1.5)
    clock.t += 1.5
    paced = starts(lim, clock, [1] * 3)
    assert paced[2] - paced[1] >= 60 / (cut * SAFETY) - 1e-9  # the slower pace holds
    clock.t += 3.0
    lim.wait_for(1)
    assert wall * SAFETY <= lim.rpm < 600  # back at the wall within seconds
    clock.t += 60.0
    lim.wait_for(1)
    assert lim.rpm == 600  # and, probing above it with no 429, back to the ceiling


def test_stray_429s_among_answers_neither_pause_nor_cut() -> None:
    # Providers answer 429 now and then at any pace: 2% here, for a long run. Workers in step
    # get their answers in bunches, and the 429s of the requests sent next come back at once:
    # three strays in a row after a bunch of 150 answers are still noise.
    lim, clock = limiter(rpm=6000)
    for sent in starts(lim, clock, [1] * 6000)[149::150]:
        for _ in range(147):
            lim.observe({})
        for _ in range(3):
            assert not limited(lim, sent, retry_after=0.5)
        clock.t += 0.03
    assert (lim.rpm, lim.pauses, lim.cuts) == (6000, 0, 0)
    assert lim.wait_for(1) <= 60 / (6000 * SAFETY)


def test_the_evidence_is_counted_in_answers_not_in_time() -> None:
    # While the run is paused few answers come back: the evidence neither fades nor inflates.
    lim, clock = limiter(rpm=600)
    times = starts(lim, clock, [1] * 20)
    for sent in times[:3]:
        assert not limited(lim, sent)
    clock.t += 60.0  # a minute with no answer at all
    assert limited(lim, times[3])  # the fourth 429 in a row is still a storm
    lim2, clock2 = limiter(rpm=600)
    times = starts(lim2, clock2, [1] * 20)
    for sent in times[:3]:
        assert not limited(lim2, sent)
    answered(lim2, clock2, 40)  # successes between say it was noise after all
    assert not limited(lim2, times[3])


def test_a_429_with_room_left_in_its_headers_is_a_stray() -> None:
    lim, clock = limiter(tpm=100_000)
    sent = lim.take(500)
    room = {"x-ratelimit-limit-tokens": "100000", "x-ratelimit-remaining-tokens": "60000",
            "x-ratelimit-reset-tokens": "20s"}
    assert not limited(lim, sent, retry_after=1.0, headers=room)
    assert lim.pauses == 0
    # The same 429 saying fewer tokens remain than a request needs: the window is spent.
    spent = {**room, "x-ratelimit-remaining-tokens": "300"}
    assert limited(lim, sent, retry_after=1.0, headers=spent)
    assert lim.pauses == 1 and lim.cuts == 0 and lim.tpm == 100_000  # a pause, not yet a cut


def walled() -> tuple[Limiter, FakeClock]:
    """A limiter told 12,000 RPM that 429s have taught a wall (one cut)."""
    lim, clock = limiter(rpm=12_000)
    times = starts(lim, clock, [1] * 400)
    answered(lim, clock, 300)
    for sent in times[-4:]:
        limited(lim, sent, retry_after=0.01)
    return lim, clock


def test_a_429_while_probing_above_the_wall_cuts_a_little_and_keeps_the_wall() -> None:
    lim, clock = walled()
    wall = lim.requests.wall
    assert wall is not None and lim.cuts == 1
    clock.t += 60.0
    lim.wait_for(1)  # climbed back, and probing above the wall
    probe = lim.rpm
    assert probe is not None and probe > wall * SAFETY and lim.requests.probing
    assert limited(lim, lim.take(1), retry_after=0.01)  # one 429 up here is the answer
    assert lim.rpm == pytest.approx(probe * 0.9) and lim.requests.wall == max(wall, probe)


def test_each_probe_the_wall_refuses_again_halves_how_fast_the_next_one_climbs() -> None:
    # No headers: only probing finds out whether the wall moved. A provider that refuses every
    # probe at the same wall is asked half as often each time, not every few seconds for ever.
    lim, clock = walled()
    pace = lim.requests

    def climb(seconds: float) -> float:
        """The pace after `seconds` more, from the start of a probe at the wall."""
        clock.t += seconds
        lim.wait_for(1)
        assert lim.rpm is not None
        return lim.rpm

    for refused in range(3):
        clock.t += 60.0
        lim.wait_for(1)
        assert pace.probing
        pace.rate = pace.wall * SAFETY  # at the start of a probe: the step after is the first
        pace.changed_at = clock.t
        before = pace.rate
        gained = climb(2.0 ** refused) - before
        assert gained == pytest.approx(0.01 * pace.wall)  # one step in 2**refused seconds
        assert climb(2.0 ** refused * 0.99) == pytest.approx(before + gained)  # not two
        assert limited(lim, lim.take(1), retry_after=0.01)  # refused again at the same wall
        assert pace.refused_probes == refused + 1


def test_429_without_retry_after_pauses_one_second() -> None:
    lim, clock = limiter()
    sent = lim.take(1)
    for _ in range(4):
        limited(lim, sent, retry_after=None)
    assert lim.wait_for(1) == pytest.approx(1.0)


class WindowServer:
    """A strict provider: at most `per_minute * window / 60` arrivals in any `window` seconds,
    every arrival counted (refused ones too, as OpenAI does); 429 says when a slot frees."""

    def __init__(self, per_minute: float, window: float = 1.0) -> None:
        self.allowed = per_minute * window / 60
        self.window = window
        self.arrivals: deque[float] = deque()
        self.ok: list[float] = []
        self.refused: list[float] = []

    def arrive(self, now: float) -> float | None:
        """None when accepted, else the retry-after in seconds."""
        while self.arrivals and self.arrivals[0] <= now - self.window:
            self.arrivals.popleft()
        self.arrivals.append(now)
        if len(self.arrivals) <= self.allowed:
            self.ok.append(now)
            return None
        self.refused.append(now)
        return self.arrivals[0] + self.window - now


def drive(lim: Limiter, clock: FakeClock, server: WindowServer, seconds: float) -> None:
    """Requests start as soon as the limiter lets them; a 429 comes back at once."""
    end = clock.t + seconds
    while clock.t < end:
        clock.t += lim.wait_for(1)
        sent = lim.take(1)
        retry_after = server.arrive(clock.t)
        lim.observe({})
        if retry_after is not None:
            lim.rate_limited_by_server(retry_after, sent)
        clock.t += 1e-4  # no two starts in the same instant, even unpaced


@pytest.mark.parametrize("configured", [12_000, None])
def test_429s_alone_teach_the_real_limit_within_seconds(configured: float | None) -> None:
    # A provider with no rate-limit headers (vLLM, LLMost) enforcing 6,000 RPM per second.
    lim, clock = limiter(rpm=configured)
    server = WindowServer(6000)
    t0 = clock.t
    drive(lim, clock, server, 40.0)
    learned = [t for t in server.refused if t > t0 + 10]
    late_ok = [t for t in server.ok if t > t0 + 10]
    # After 10 s, at most ~1% of requests are refused and the run uses ~90%+ of the limit.
    assert len(learned) <= 0.01 * len(late_ok)
    assert len(late_ok) / 30.0 >= 0.9 * 100
    assert 0.85 * 6000 <= lim.rpm <= 1.1 * 6000


def test_headers_teach_the_real_limit_from_the_first_answer() -> None:
    lim, clock = limiter(rpm=12_000)
    server = WindowServer(6000)
    lim.take(1)
    server.arrive(clock.t)
    lim.observe({"x-ratelimit-limit-requests": "6000"})
    drive(lim, clock, server, 20.0)
    assert server.refused == []
    assert len(server.ok) >= 20 * 100 * SAFETY - 1


# --- requests in flight -----------------------------------------------------------------------


def test_the_concurrency_cap_holds_starts_until_a_request_is_released() -> None:
    lim, clock = limiter(concurrency=2)

    async def main() -> list[str]:
        events: list[str] = []

        async def worker(name: str) -> None:
            await lim.acquire(1)
            events.append(f"start {name}")

        first = [asyncio.create_task(worker(n)) for n in "abc"]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        events.append(f"in flight {lim.gate.in_flight}")
        lim.release()
        await asyncio.gather(*first)
        return events

    assert asyncio.run(main()) == ["start a", "start b", "in flight 2", "start c"]


def test_a_concurrency_429_lowers_the_cap_not_the_rate_and_it_creeps_back() -> None:
    lim, clock = limiter(rpm=600, concurrency=16)
    lim.gate.in_flight = 10  # as `acquire` counts them
    lim.release()  # the refused request comes back first
    lim.rate_limited_by_server(0.2, sent_at=clock.t, concurrent=True)
    lim.rate_limited_by_server(0.2, sent_at=clock.t, concurrent=True)
    assert lim.cap.limit == 9 and lim.rpm == 600
    clock.t += 5.0
    lim.gate.in_flight = 0
    assert not lim.cap.full(0, clock.t) and lim.cap.limit == 10  # one more every 5 s, up to 16
    clock.t += 100.0
    for _ in range(20):
        clock.t += 5.0
        lim.cap.full(0, clock.t)
    assert lim.cap.limit == 16


def test_recalibrated_token_estimates_book_the_difference_for_recent_starts() -> None:
    # Ten starts booked at 20 tokens; the provider turns out to count twice that.
    lim, clock = limiter(tpm=6000)
    starts(lim, clock, [20] * 10)
    before = lim.tokens.tat
    lim.recalibrated(2.0)
    assert lim.tokens.tat == pytest.approx(before + 200 * 60 / (6000 * SAFETY))
    assert lim.wait_for(40) == pytest.approx(lim.tokens.tat - clock.t)
    assert lim.starts.tokens() == [40] * 10  # and measured at the new estimate
    # Counting half of it frees the clock, but banks no burst.
    lim.recalibrated(0.25)
    assert lim.wait_for(10) <= 60 / (6000 * SAFETY)


def test_what_was_learned_at_the_old_estimate_is_rescaled_with_it() -> None:
    # The run's first 429s come back before its first answers: the pace is cut on bookings at
    # our own estimate. Then the answers show the provider counting 1.5x that. The wall and the
    # cut pace were measured in the old units: they are rescaled, not learned again.
    lim, clock = limiter(tpm=600_000)  # far too high: only 429s teach it
    times = []
    for _ in range(50):  # the workers manage 20 starts a second
        clock.t += max(lim.wait_for(100), 0.05)
        times.append(lim.take(100))
    answered(lim, clock, 20)
    for sent in times[-4:]:
        limited(lim, sent)
    wall, rate = lim.tokens.wall, lim.tokens.rate
    assert wall is not None and rate is not None and lim.cuts == 1
    lim.recalibrated(1.5)
    assert lim.tokens.wall == pytest.approx(1.5 * wall)
    assert lim.tokens.rate == pytest.approx(1.5 * rate)
    # A limit the provider stated is its own count: a rescaled pace stays under it.
    capped, clock = limiter(tpm=60_000)
    times = starts(capped, clock, [500] * 30)
    answered(capped, clock, 20)
    for sent in times[-4:]:
        limited(capped, sent)
    assert capped.tokens.wall is not None and capped.tokens.rate is not None
    capped.recalibrated(4.0)
    assert capped.tokens.rate <= 60_000
    # So is what the provider's book says we started since its last answer.
    booked, clock = limiter()
    booked.observe({"x-ratelimit-remaining-tokens": "1000", "x-ratelimit-reset-tokens": "10s"})
    booked.take(400)
    assert booked.wait_for(500) == 0.0
    booked.recalibrated(1.5)  # the 400 were 600 as the provider counts
    assert booked.wait_for(500) == pytest.approx(10.0)
