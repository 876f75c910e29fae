"""Limiter: smooth pacing of request starts under requests- and tokens-per-minute limits, and a
cap on requests in flight.

Each limit is a clock (GCRA, the "virtual scheduling" form of a leaky bucket with no burst): the
request clock advances 60/rpm per request, the token clock tokens*60/tpm per request, where a
request's tokens are its (calibrated) prompt estimate plus `max_tokens`, held for good (providers
charge that at arrival, not the answer's length). A request starts when both clocks allow it, so
in any window of any length the run sends at most the limit plus one request: no start-up burst
for a strict provider to punish. Starts pass one gate in turn, so a pause or a rate cut applies to
the very next start, not only after requests already booked at the old pace.

Rates adapt for the whole run. `x-ratelimit-limit-*` headers lower a configured limit that is too
high (or set one where none was given); `x-ratelimit-remaining-*` with its reset is the provider's
own book: when it leaves less room than the next request needs, starts hold until enough frees up.

A 429 about rate slows the whole run only on evidence that the run is too fast. Busy providers and
gateways answer 1-2% of requests with 429 at any pace; such a stray 429 delays only its own row
(the caller waits out its retry-after): pausing every start and cutting the pace for each would
spiral the run down to a crawl.
The evidence is (1) 429s that are more than noise among the recent answers, judged by a running
score over answers, not over time (Page's CUSUM test: a pause, when few answers come back, neither
makes one 429 look like a storm nor forgets a real one), and still so if every request in flight
answers ok (429s come back before the answers of requests sent with them); (2) the 429's headers
saying the window is spent; (3) a 429 while the pace probes above a rate that 429s taught before.
Then every start pauses for the retry-after, and on (1) and (3) the pace is cut below what the
server really took over the last seconds (the "wall"); it climbs back to the wall in a few seconds
and then probes slowly above it, so a run with no headers and no configured limit finds the real
one. A 429 about concurrent requests lowers the cap on requests in flight to what the server
allowed instead.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from multidict import istr

from batchrun.protocol.retry import parse_duration

# Pace a hair under the limit: arrival jitter must not push a strict sliding window over.
SAFETY = 0.97
DECREASE = 0.7  # the cut when the server took all we sent and still said 429
TOUCH = 0.9  # the cut when the wall is known: learned before, or measured now
RECOVER_EVERY = 1.0  # seconds between increases after the last cut
SETTLE = 1.0  # seconds after a cut when another is only a touch (the server's window drains)
CLIMB_STEP = 0.1  # fraction of the wall regained per step while below SAFETY * wall
PROBE_STEP = 0.01  # fraction of the wall added per step above that, looking for room
MEASURE_SPAN = 2.0  # seconds of starts that say how fast the run really goes
# The evidence score (CUSUM): each answer moves it by the log-likelihood ratio of "429s are STORM
# of the answers" against "they are NOISE", floored at 0; ALARM is the evidence. From nothing,
# four 429s in a row reach it. With 2% stray 429s a run of 3,000 answers crosses it by chance
# about once in a hundred runs (1%: never seen in 2,000 simulated runs).
NOISE = 0.02  # the share of 429s a provider makes at any pace
STORM = 0.25  # a share of 429s that says the run is too fast
LIMITED_WEIGHT = math.log(STORM / NOISE)  # +2.53 for a 429
ANSWER_WEIGHT = math.log((1 - STORM) / (1 - NOISE))  # -0.27 for any other answer
ALARM = 10.0
# Answers come back in bunches (workers in step, 429s faster than answers): the score is floored
# only between slices of this long, so a bunch's successes and its stray 429s weigh together.
SLICE = 0.05
CONCURRENCY_RECOVER_EVERY = 5.0  # seconds between raising a learned concurrency cap by one
DEFAULT_PAUSE = 1.0  # a 429 without retry-after pauses this long
# A start this late for its slot keeps the schedule, so a busy event loop does not slow the run;
# catching up adds at most half of what SAFETY holds back in the shortest window in use (1 s).
LATE = (1 - SAFETY) / 2
SNAPSHOT_LIFE = 1.0  # a remaining count sent without its reset is trusted this long


class _Clock:
    """One limit (requests or tokens per minute): its pace, what it learned, the server's book."""

    def __init__(self, per_minute: float | None) -> None:
        self.ceiling = per_minute  # the most we may use: configured, lowered by headers
        self.rate = per_minute  # current pace (None: unpaced), at most the ceiling
        self.wall: float | None = None  # the rate a 429 told us is too much
        self.tat = -math.inf  # theoretical start of the next request (GCRA)
        self.changed_at = -math.inf  # last cut or recovery step
        # The provider's book as of its last answer: room left, when that was, when it resets.
        self._room = 0.0
        self._room_at = 0.0
        self.room_until = -math.inf
        self._refill: float | None = None  # per second, by the provider's limit and reset
        self._spent = 0.0  # what we started since that answer

    def interval(self, amount: float) -> float:
        return amount * 60.0 / (self.rate * SAFETY) if self.rate else 0.0

    def ready(self, amount: float, now: float) -> float:
        """Earliest start for `amount` by our pace and by the provider's book."""
        start = self.tat
        if now < self.room_until:
            refill = self._refill
            room = self._room - self._spent + (now - self._room_at) * (refill or 0.0)
            if room < amount:
                # The allowance comes back steadily until the reset, when all of it is back.
                free_at = now + (amount - room) / refill if refill else self.room_until
                start = max(start, min(free_at, self.room_until))
        return start

    def take(self, amount: float, now: float) -> None:
        """Book a start now. A start a little late for its slot keeps the schedule (timer
        overshoot must not slow the run down); an idle clock banks nothing: no burst, ever."""
        step = self.interval(amount)
        on_time = now - self.tat <= LATE
        self.tat = (self.tat if on_time else now) + step
        self._spent += amount

    def adopt_limit(self, limit: float) -> None:
        """The provider states its per-minute limit: ours may not be higher."""
        if self.ceiling is None or limit < self.ceiling:
            self.ceiling = limit
        if self.rate is None or self.rate > self.ceiling:
            self.rate = self.ceiling

    def snapshot(self, remaining: float, reset: float | None, limit: float | None,
                 now: float) -> None:
        """The provider's remaining allowance as of now, valid until its reset."""
        self._room, self._room_at, self._spent = remaining, now, 0.0
        self.room_until = now + (reset if reset is not None else SNAPSHOT_LIFE)
        # OpenAI's reset is when the allowance is whole again, so it refills at this pace.
        self._refill = None
        if limit and reset and limit > remaining:
            self._refill = (limit - remaining) / reset

    def cut(self, measured: float | None, now: float, again: bool = False) -> None:
        """Slow down below what the server took when it said 429 (`measured`, per minute);
        `again`: soon after the last cut, while its window still drains the faster past."""
        pace = self.rate
        took = measured / SAFETY if measured else None  # in the units of `rate`
        # What the server took is the wall: below our pace when the run is too fast; above it
        # just after a cut, as its window still holds the faster past; and with a pace far
        # above what the workers manage, the pace says nothing.
        current = took if took is not None else pace
        if current is None:
            return
        if self.wall is not None and (again or current >= self.wall * TOUCH):
            # Near the wall we already learned, a 429 only confirms it: a small step back is
            # enough, and the wall stays (stray 429s must not wear it down, cut after cut).
            self.wall, step = max(self.wall, current), TOUCH
        elif took is not None and pace is not None and took < pace:
            # The server refused part of our pace: what it took is a measured wall, just under.
            self.wall, step = current, TOUCH
        else:
            # It took all we sent (a window that let a burst through), or we cannot tell.
            self.wall, step = current, DECREASE
        self.rate = max(current * step, 1e-3)
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling * step)
        self.changed_at = max(self.changed_at, now)

    @property
    def probing(self) -> bool:
        """Is the pace above where it climbs back to after a cut, looking for room?"""
        return self.wall is not None and self.rate is not None and self.rate > self.wall * SAFETY

    def recover(self, now: float) -> None:
        """Climb back to the wall quickly, then probe above it slowly, never past the ceiling."""
        if self.wall is None or self.rate is None:
            return
        steps = int((now - self.changed_at) / RECOVER_EVERY)
        if steps <= 0:
            return
        self.changed_at += steps * RECOVER_EVERY
        for _ in range(min(steps, 1000)):
            below = self.wall * SAFETY
            if self.rate < below:
                self.rate = min(below, self.rate + CLIMB_STEP * self.wall)
            else:
                self.rate += PROBE_STEP * self.wall
            if self.ceiling is not None and self.rate >= self.ceiling:
                self.rate = self.ceiling
                break


class Limiter:
    """Hands out start times for requests; one per run, shared by all workers."""

    def __init__(self, rpm: float | None, tpm: float | None, concurrency: int | None = None,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[object]] | None = None) -> None:
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self.requests = _Clock(rpm)
        self.tokens = _Clock(tpm)
        self.concurrency = concurrency  # cap on requests in flight, lowered by the server's 429s
        self._concurrency_ceiling = concurrency
        self._concurrency_changed = -math.inf
        self.in_flight = 0
        self._freed = asyncio.Event()
        self._paused_until = -math.inf
        self._last_cut = -math.inf
        self._scale = 1.0  # token estimates now against the run's first ones (recalibrated)
        self._sent: deque[tuple[float, int]] = deque()  # (start, tokens) of recent starts
        self._refused: deque[float] = deque()  # starts of recent requests refused with 429
        self._tokens = 0  # the tokens of the latest start: what "room left" must hold
        # Evidence that 429s are more than noise (see ALARM): the score as of the last slice,
        # and the sum of the answers of the slice under way.
        self._floor = 0.0
        self._slice = 0.0
        self._slice_end = -math.inf
        self._spent = False  # did the latest answer's headers say the window is spent?
        self._gate = asyncio.Lock()
        self._waiting = 0  # starts waiting for a request in flight to finish
        self._closed = False
        self.pauses = 0  # pauses of every start (a stray 429 pauses none)
        self.cuts = 0  # cuts of the pace

    # --- the pace -----------------------------------------------------------------------

    @property
    def rpm(self) -> float | None:
        """Current request pace per minute (None: unpaced)."""
        return self.requests.rate

    @property
    def tpm(self) -> float | None:
        """Current token pace per minute (None: unpaced)."""
        return self.tokens.rate

    def wait_for(self, tokens: int) -> float:
        """Seconds until a request of `tokens` may start (0: now). Books nothing."""
        now = self._clock()
        self.requests.recover(now)
        self.tokens.recover(now)
        start = max(self._paused_until, self.requests.ready(1, now), self.tokens.ready(tokens, now))
        return max(0.0, start - now)

    def take(self, tokens: int) -> float:
        """Book a start of a request of `tokens` now; returns the start time."""
        now = self._clock()
        self.requests.take(1, now)
        self.tokens.take(tokens, now)
        self._sent.append((now, tokens))
        self._tokens = tokens
        self._forget(now)
        return now

    def start_now(self, tokens: int) -> float | None:
        """Book a start at once if nothing paces, holds or caps it and no start is waiting before
        it (the gate and the clocks would say "now"); returns its start time, or None: `acquire`.

        At thousands of starts a second, asking the gate and the clocks cost a tenth of a run's
        time against a fast server.
        """
        now = self._clock()
        if not self._open(now):
            return None
        self.in_flight += 1
        self._sent.append((now, tokens))
        self._tokens = tokens
        return now

    async def acquire(self, tokens: int) -> float:
        """Wait for this request's turn and book it; returns its start time on `now()`'s clock."""
        started = self.start_now(tokens)
        if started is not None:
            return started
        return await self.wait_turn(tokens)

    async def wait_turn(self, tokens: int) -> float:
        """`acquire` after `start_now` said no: wait at the gate for this request's turn.

        A start may wait here for seconds while answers recalibrate the token estimates: it is
        booked at the estimate as of its start, not as of when it began to wait (a run's first
        answers often show the provider counting twice what we thought, and every start waiting
        then would otherwise go at the old pace)."""
        scale = self._scale
        async with self._gate:
            # One worker waits at a time, and re-reads the state when it wakes: a 429 that came
            # in meanwhile holds this start too.
            while not self._closed:
                tokens = round(tokens * self._scale / scale)
                scale = self._scale
                if self._full():
                    self._freed.clear()
                    self._waiting += 1
                    try:
                        await self._freed.wait()
                    finally:
                        self._waiting -= 1
                    continue
                wait = self.wait_for(tokens)
                if wait <= 0:
                    break
                await self._sleep(wait)
            self.in_flight += 1
            return self.take(tokens)

    def _open(self, now: float) -> bool:
        """May a start go now without the gate? Only when no clock paces (no rate, no provider
        book in force), no pause holds, the concurrency cap is the configured one and has room,
        and no other start waits at the gate."""
        requests, tokens = self.requests, self.tokens
        return (
            requests.rate is None and tokens.rate is None
            and now >= self._paused_until
            and now >= requests.room_until and now >= tokens.room_until
            and not self._closed and not self._gate.locked()
            and (self.concurrency is None or (
                self.concurrency == self._concurrency_ceiling and self.in_flight < self.concurrency
            ))
        )

    def release(self) -> None:
        """A request `acquire` let through has its answer (or failed): its slot is free."""
        self.in_flight = max(0, self.in_flight - 1)
        if self._waiting:
            self._freed.set()

    def close(self) -> None:
        """The run is stopping: let every waiting worker through at once (it will not send)."""
        self._closed = True
        self._freed.set()

    def _full(self) -> bool:
        """Are as many requests in flight as the server allows? The cap creeps back up slowly
        towards the configured one: each probe costs one 429 at most."""
        cap = self.concurrency
        if cap is None:
            return False
        ceiling = self._concurrency_ceiling
        now = self._clock()
        if ceiling is not None and cap < ceiling and (
            now - self._concurrency_changed >= CONCURRENCY_RECOVER_EVERY
        ):
            self.concurrency = cap = cap + 1
            self._concurrency_changed = now
        return self.in_flight >= cap

    def recalibrated(self, factor: float) -> None:
        """Token estimates changed by `factor` (the provider counts unlike us): the requests
        started in the last seconds were booked at the old estimate, so book the difference on
        the token clock now, and measure them at the new one."""
        now = self._clock()
        self._forget(now)
        self._scale *= factor  # and the starts waiting at the gate are booked at the new one
        sent = self._sent
        extra = sum(t for _, t in sent) * (factor - 1)
        self._sent = deque((at, round(t * factor)) for at, t in sent)
        clock = self.tokens
        if clock.rate and extra:
            clock.tat = max(clock.tat + clock.interval(extra), now - clock.interval(1))

    def oversize(self, tokens: int) -> str | None:
        """Why a request of `tokens` can never be sent under the token limit, or None."""
        limit = self.tokens.ceiling
        if limit is None or tokens <= limit:
            return None
        return (
            f"one request reserves {tokens} tokens (prompt estimate + max_tokens) but the limit "
            f"is {limit:g} tokens per minute, so it can never be sent; lower --max-tokens, "
            "shorten the prompt, or raise --tpm if the provider allows more"
        )

    # --- learning -----------------------------------------------------------------------

    def observe(self, headers: Mapping[str, str]) -> None:
        """Count an answer (of any kind, headers or none) and learn from its `x-ratelimit-*`
        headers: the real limits and the provider's remaining room."""
        now = self._clock()
        if now >= self._slice_end:
            self._floor = max(0.0, self._floor + self._slice)
            self._slice, self._slice_end = 0.0, now + SLICE
        self._slice += ANSWER_WEIGHT
        self._spent = False
        self._forget(now)  # starts that took the open way were not forgotten there
        if not headers:
            return
        for (limit_name, remaining_name, reset_name), clock, need in (
            (_REQUEST_HEADERS, self.requests, 1), (_TOKEN_HEADERS, self.tokens, self._tokens)
        ):
            limit_text = headers.get(limit_name)
            remaining_text = headers.get(remaining_name)
            if limit_text is None and remaining_text is None:
                continue
            limit = _number(limit_text)
            if limit is not None and limit > 0:
                clock.adopt_limit(limit)
            remaining = _number(remaining_text)
            if remaining is not None:
                reset = parse_duration(headers.get(reset_name) or "")
                clock.snapshot(max(0.0, remaining), reset, limit, now)
                self._spent = self._spent or remaining < max(need, 1)

    def rate_limited_by_server(self, retry_after: float | None, sent_at: float | None = None,
                               concurrent: bool = False) -> bool:
        """A 429 about rate, for a request started at `sent_at`, whose answer `observe` has just
        counted. Returns whether it paused every start (and maybe cut the pace): on evidence
        that the run is too fast. Otherwise it was a stray 429, and only its own row waits.

        Only a 429 for a request started after the last cut is evidence: the ones in flight at
        the time of a cut describe the old pace, which is already cut.
        """
        now = self._clock()
        if sent_at is not None:
            self._refused.append(sent_at)
        if concurrent:
            self._pause(retry_after, now)
            self._too_many_in_flight(now)
            return True
        if sent_at is not None:
            fresh = sent_at >= self._last_cut
        else:  # no start time to judge by: one cut per burst of 429s
            fresh = now - self._last_cut >= RECOVER_EVERY
        # `observe` counted this answer as one more that was not a 429: count it again.
        self._slice += (LIMITED_WEIGHT if fresh else 0.0) - ANSWER_WEIGHT
        # Above a wall it learned before, the run was looking for room: one 429 is the answer.
        probing = fresh and (self.requests.probing or self.tokens.probing)
        # The evidence must stand even if every request still in flight answers ok: a 429 comes
        # back at once while answers take their latency, so the first answers of a run (or of a
        # burst) are its 429s. Four stray 429s among the first 64 requests are not a storm; in a
        # real one the requests in flight come back 429 too and the score still gets there.
        storm = self._floor + self._slice + self.in_flight * ANSWER_WEIGHT >= ALARM
        if not (storm or probing or self._spent):
            return False
        self._pause(retry_after, now)
        if storm or probing:
            self._cut(now)
        return True

    def _pause(self, retry_after: float | None, now: float) -> None:
        """Hold every start for the retry-after; recovery counts from the pause's end."""
        pause = retry_after if retry_after is not None else DEFAULT_PAUSE
        if now + pause > self._paused_until:
            self._paused_until = now + pause
            self.pauses += 1
            for clock in (self.requests, self.tokens):
                clock.changed_at = max(clock.changed_at, self._paused_until)

    def _cut(self, now: float) -> None:
        """Slow the pace below what the run really sent at; new evidence must build afresh."""
        # The server's window still holds the pace before the last cut for a while: 429s then
        # say the cut was not quite enough, not that the run is far too fast.
        again = now - self._last_cut < SETTLE
        self._last_cut = now
        self._floor = self._slice = 0.0
        self.cuts += 1
        request_rate, token_rate = self._measured(now)
        self.requests.cut(request_rate, now, again)
        if self.tokens.rate is not None:
            self.tokens.cut(token_rate, now, again)

    def _too_many_in_flight(self, now: float) -> None:
        """The server counts requests in flight, not their pace: keep to as many as it allowed.
        The refused one is already released, so `in_flight` is what the server holds now; such
        429s come back at once, so even one for a request sent long ago tells the truth."""
        cap = max(1, self.in_flight)
        if self.concurrency is None or cap < self.concurrency:
            self.concurrency = cap
        self._concurrency_changed = now

    def _measured(self, now: float) -> tuple[float | None, float | None]:
        """Requests and tokens per minute the server took (started, less those refused with a
        429) over the last MEASURE_SPAN seconds."""
        self._forget(now)
        sent = self._sent
        if len(sent) < 2:
            return None, None
        # The starts before the last one filled the time from the first start until now.
        span = max(now - sent[0][0], 1e-3)
        refused = sum(1 for at in self._refused if at >= sent[0][0])
        started = len(sent) - 1
        took = max(started - refused, 1) / started
        tokens = (sum(t for _, t in sent) - sent[-1][1]) * took
        return started * took * 60.0 / span, tokens * 60.0 / span

    def _forget(self, now: float) -> None:
        edge = now - MEASURE_SPAN
        sent, refused = self._sent, self._refused
        while sent and sent[0][0] < edge:
            sent.popleft()
        while refused and refused[0] < edge:
            refused.popleft()


# istr: multidict looks these up without case-folding them for every answer.
_REQUEST_HEADERS = tuple(istr(f"x-ratelimit-{what}-requests") for what in ("limit", "remaining", "reset"))
_TOKEN_HEADERS = tuple(istr(f"x-ratelimit-{what}-tokens") for what in ("limit", "remaining", "reset"))


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
