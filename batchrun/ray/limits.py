"""One rate limit for the cluster: a named actor holds the run's `Limiter`; workers lease starts.

    core = LimiterCore(rpm, tpm)                          # in the one limiter actor of a run
    limits = LeasedLimits(actor, config, stopper, worker, node)  # in each sender actor

The actor holds a real `Limiter` (the same pacing, header and 429 logic as one machine), so
`--rpm` and `--tpm` are the cluster's totals and what one worker learns slows all of them.

A lease is one call for several starts. A worker sends the token estimates of the requests
waiting to start in it; the actor books each on the limiter's clocks at the earliest time they
allow (spaced, never a burst) and answers with their start times on the wall clock; the worker
starts each at its time. A lease reaches at most `span` seconds ahead and holds at most the
worker's share of that span, so a worker asks again about once per span, not once per request.
The same call carries what the worker heard since its last lease (answers, the newest
`x-ratelimit-*` headers, 429s); a 429 is reported at once, and its pause reaches every worker
with its next lease, within a span, and holds their already-leased starts too.

With several endpoints there is one actor per endpoint, with that endpoint's limits. The one
whose endpoint retired (a job-wide failure in some worker: `retire`) books no more starts, and
says why in every later grant: each worker retires the endpoint at its next lease.

The actor's load is a lease per worker per span: min(requests/s, workers / span) calls a
second. `span` grows with the workers (at least MIN_SPAN, workers / MAX_LEASES_PER_SECOND), so the
load stays under MAX_LEASES_PER_SECOND however many workers; the price is that a pause or a cut
takes up to a span to reach everyone (0.2 s up to 200 workers, 1 s at 1,000).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

from batchrun.errors import BatchrunError, Interrupted, JobStopped
from batchrun.running.stopping import Stopper
from batchrun.sending.limiter import DEFAULT_PAUSE, LATE, Limiter
from batchrun.settings.config import RunConfig

MIN_SPAN = 0.2  # seconds a lease reaches ahead at least
MAX_LEASES_PER_SECOND = 1000.0  # what one actor serves with room to spare (~0.2 ms a call)
LEAD = 0.1  # seconds before its last leased start a worker asks for the next lease
SLIP = LATE  # seconds a start may come late (the limiter's allowance); later, it is leased again
# A worker whose starts were moved later (a pause, or a lease slower than its whole span) catches
# up by starting each newly leased request at most this fraction sooner after the one before than
# booked: the limiter's own allowance for late starts (half of what its safety margin holds back).
CATCH_UP = LATE
MAX_LEASE = 256  # starts asked for in one lease at most
ACTIVE_FOR = 2.0  # seconds after its last lease a worker still counts for the shares


@dataclass
class Report:
    """What a worker heard since its last lease."""

    replies: int = 0  # answers of any kind
    headers: dict[str, str] | None = None  # the newest `x-ratelimit-*` headers
    limited: list[tuple[float | None, float | None, bool]] = field(default_factory=list)
    factor: float = 1.0  # the worker's token estimates changed by this much (calibration)


@dataclass(frozen=True)
class Grant:
    """The actor's answer to a lease: start times, the pace now, a pause, a stop."""

    starts: list[tuple[float, float]]  # (wall clock, limiter clock) of each leased start
    rpm: float | None
    paused_until: float  # wall clock; earlier than now when there is no pause
    pauses: int
    stop: tuple[str, bool] | None  # (reason, interrupted) once the run is stopping
    retired: str | None = None  # why the endpoint retired (several endpoints), once it has


class LimiterCore:
    """The limiter actor's state: the run's one `Limiter`, the workers it knows, the stop."""

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self._booking: float | None = None  # the limiter's clock while a later start is booked
        self.limiter = Limiter(rpm, tpm, None, clock=self._clock)
        self._workers: dict[str, tuple[float, int, str]] = {}  # id -> (last lease, pid, node)
        self._stop: tuple[str, bool] | None = None
        self._retired: str | None = None  # a run with several endpoints: this one's retirement
        self._paused_until = -math.inf  # the limiter's clock: the last pause a 429 asked for

    def _clock(self) -> float:
        return self._booking if self._booking is not None else time.monotonic()

    def lease(self, worker: str, pid: int, node: str, tokens: list[int], report: Report) -> Grant:
        """Hear the report, then book up to the worker's share of the next span."""
        now = time.monotonic()
        self._hear(report)
        self._workers[worker] = (now, pid, node)
        starts: list[tuple[float, float]] = []
        if self._stop is None and self._retired is None and tokens:
            span, share = self._span(now)
            offset = time.time() - now  # the wall clock, for workers on other processes
            limiter = self.limiter
            for amount in tokens[:share]:
                at = now + limiter.wait_for(amount)
                if starts and at - now > span:
                    break
                self._booking = at  # `take` books at the limiter's clock: at this start
                try:
                    limiter.take(amount)
                finally:
                    self._booking = None
                starts.append((at + offset, at))
        return self._grant(now, starts)

    def _grant(self, now: float, starts: list[tuple[float, float]]) -> Grant:
        paused_until = time.time() + (self._paused_until - now)
        return Grant(starts, self.limiter.rpm, paused_until, self.limiter.pauses, self._stop,
                     self._retired)

    def _span(self, now: float) -> tuple[float, int]:
        """How far ahead a lease reaches, and how many starts one worker may take of it."""
        active = sum(1 for last, _, _ in self._workers.values() if now - last <= ACTIVE_FOR)
        span = max(MIN_SPAN, active / MAX_LEASES_PER_SECOND)
        rate = self.limiter.rpm
        if rate is None:
            return span, MAX_LEASE
        return span, max(1, min(MAX_LEASE, math.ceil(rate / 60.0 * span / max(active, 1))))

    def _hear(self, report: Report) -> None:
        limiter = self.limiter
        if report.factor != 1.0:
            limiter.recalibrated(report.factor)
        for _ in range(report.replies - 1):
            limiter.observe({})
        if report.replies:
            limiter.observe(CIMultiDict(report.headers or {}))
        for retry_after, sent_at, concurrent in report.limited:
            pauses = limiter.pauses
            limiter.rate_limited_by_server(retry_after, sent_at, concurrent=concurrent)
            if limiter.pauses != pauses:  # the limiter paused: the starts leased before must hold
                pause = retry_after if retry_after is not None else DEFAULT_PAUSE
                self._paused_until = max(self._paused_until, time.monotonic() + pause)

    def stop(self, reason: str, interrupted: bool = False) -> None:
        """Stop the run on every worker; the first reason is the one kept."""
        if self._stop is None:
            self._stop = (reason, interrupted)

    def retire(self, reason: str) -> None:
        """The endpoint this actor paces retired (a job-wide failure in one worker): every
        worker hears it with its next lease; the first reason is the one kept."""
        if self._retired is None:
            self._retired = reason

    def retired(self) -> str | None:
        """Why the endpoint retired, or None."""
        return self._retired

    def stopped(self) -> tuple[str, bool] | None:
        """Why the run stopped, or None."""
        return self._stop

    def workers(self) -> dict[str, tuple[int, str]]:
        """The workers that leased starts so far: actor id -> (process id, Ray node id)."""
        return {worker: (pid, node) for worker, (_, pid, node) in self._workers.items()}


def stop_error(stop: tuple[str, bool]) -> BatchrunError:
    """The error a stop reported through the limiter actor stands for."""
    reason, interrupted = stop
    return Interrupted(reason) if interrupted else JobStopped(reason)


class LeasedLimits:
    """The sender's `Limits` inside a worker: starts leased from the limiter actor in chunks."""

    def __init__(self, actor: Any, config: RunConfig, stopper: Stopper, worker: str,
                 node: str, retire: Callable[[str], None] | None = None) -> None:
        """`retire`: called with the reason when a lease says the endpoint retired (a run with
        several endpoints: one limiter actor per endpoint)."""
        self.pauses = 0
        self.forfeited = 0  # leased starts whose slot went by while the worker was busy
        self._again: set[int] = set()  # (ids of) the waiting requests that lost a slot once
        self._actor = actor
        self._stopper = stopper
        self._retire = retire
        self._worker = worker
        self._pid = os.getpid()
        self._node = node
        self._rpm = config.rpm
        self._sizes = Limiter(None, config.tpm)  # only for `oversize`: one home for its message
        self._waiting: deque[tuple[int, asyncio.Future[float]]] = deque()
        self._leased: list[_Start] = []
        self._report = Report()
        self._next_lease = 0.0  # wall clock: when the leased starts are nearly used
        self._released = -math.inf  # wall clock: when this worker's last start went
        self._last_booked: float | None = None  # the booking of its newest leased start
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def rpm(self) -> float | None:
        """The cluster's request pace as of the last lease."""
        return self._rpm

    def oversize(self, tokens: int) -> str | None:
        """Why a request of `tokens` can never be sent under the token limit, or None."""
        return self._sizes.oversize(tokens)

    def start_now(self, tokens: int) -> float | None:
        """Never at once: every start is leased (the cluster's limit counts it)."""
        return None

    async def wait_turn(self, tokens: int) -> float:
        """Wait for a leased start; returns it on the limiter actor's clock."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self._closed:
            return 0.0
        self._waiting.append((tokens, future))
        self._kick()
        return await future

    def release(self) -> None:
        """Nothing to give back: the cluster caps the pace, each worker its own requests."""

    def observe(self, headers: Mapping[str, str]) -> None:
        """An answer came back; its rate-limit headers go with the next lease."""
        self._report.replies += 1
        if headers:
            limits = {k: v for k, v in headers.items() if k.lower().startswith("x-ratelimit-")}
            if limits:
                self._report.headers = limits

    def recalibrated(self, factor: float) -> None:
        """Token estimates changed: the limiter actor rebooks its recent starts with the next
        lease, and the starts still waiting for one ask for their tokens at the new estimate."""
        self._report.factor *= factor
        self._waiting = deque((max(1, round(tokens * factor)), future)
                              for tokens, future in self._waiting)

    def rate_limited_by_server(self, retry_after: float | None, sent_at: float | None = None,
                               concurrent: bool = False) -> bool:
        """A 429 about rate: told to the limiter actor now, so that every worker slows.
        Taken as evidence (True): whether the actor judges it stray is known only there, so
        the row backs off as for a 429 that is not."""
        self._report.limited.append((retry_after, sent_at, concurrent))
        self.pauses += 1
        self._kick()
        return True

    def close(self) -> None:
        """The run is stopping: let every waiting start through at once (it will not send)."""
        self._closed = True
        for _, future in self._waiting:
            if not future.done():
                future.set_result(0.0)
        self._waiting.clear()
        for start in self._leased:
            if start.handle is not None:
                start.handle.cancel()
            if not start.future.done():
                start.future.set_result(start.at)
        self._leased.clear()
        self._again.clear()
        if self._task is not None:
            self._task.cancel()

    def _kick(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._lease_loop())

    async def _lease_loop(self) -> None:
        """Lease when the starts in hand are nearly used, or report a 429 at once."""
        while not self._closed:
            due = bool(self._waiting) and time.time() >= self._next_lease
            if not due and not self._report.limited:
                if not self._waiting:
                    return  # idle: the next acquire starts the loop again
                self._wake.clear()
                wait = self._next_lease - time.time()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.0))
                except TimeoutError:
                    pass
                continue
            head = list(self._waiting)[:MAX_LEASE] if due else []
            report, self._report = self._report, Report()
            grant: Grant = await self._actor.lease.remote(
                self._worker, self._pid, self._node, [tokens for tokens, _ in head], report)
            self._apply(grant, head)

    def _apply(self, grant: Grant, head: list[tuple[int, asyncio.Future[float]]]) -> None:
        self._rpm = grant.rpm
        if grant.stop is not None:
            self._stopper.stop(stop_error(grant.stop))
            return
        if grant.retired is not None and self._retire is not None:
            self._retire(grant.retired)  # which closes these limits: the waiting starts go
            return
        self._leased = [start for start in self._leased if not start.future.done()]
        if self._leased and grant.paused_until > self._leased[0].wall:
            # A pause holds the starts leased before it too, spaced as they were: all at its
            # end would be a burst the provider's window counts.
            delay = grant.paused_until - self._leased[0].wall
            self._shift(lambda wall: wall + delay)
        # Starts whose slot went by before the lease came back (a slow call) are asked for
        # again, as a late start is (`_fire`); unless every one did, a call slower than a whole
        # span: then they go from now, spaced as booked, so that the worker still gets on.
        now = time.time()
        granted = list(zip(head, grant.starts, strict=False))
        gone = [now - wall > SLIP for _, (wall, _) in granted]
        shift = now - granted[0][1][0] if granted and all(gone) else 0.0
        again: list[tuple[int, asyncio.Future[float]]] = []
        # By identity, not position: a start that lost its slot meanwhile went back to the head.
        leased = {id(future) for (_, future), _ in granted}
        self._waiting = deque(w for w in self._waiting if id(w[1]) not in leased)
        for ((tokens, future), (wall, at)), late in zip(granted, gone, strict=True):
            if late and not shift and self._lease_again(future):
                again.append((tokens, future))
                continue
            gap = wall - self._last_booked if self._last_booked is not None else 0.0
            self._last_booked = wall
            start = _Start(self._place(wall + shift, grant.paused_until), at, future,
                           booked=wall, tokens=tokens, gap=max(gap, 0.0))
            self._leased.append(start)
            self._schedule(start)
        self._waiting.extendleft(reversed(again))
        if self._leased:
            # On the limiter's schedule, not the worker's moved one: asked later, the lease would
            # be booked from then, and the slots in between would go unused.
            self._next_lease = self._leased[-1].booked - LEAD
        if grant.paused_until > time.time():
            self._next_lease = max(self._next_lease, grant.paused_until - LEAD)

    def _place(self, booked: float, paused_until: float) -> float:
        """When a newly leased start goes: at its booking, after any pause, and while this
        worker's earlier starts still wait (moved later by a pause or a slow lease), no closer
        after the last of them than CATCH_UP less than their booked gap. Without that, the new
        lease's starts, booked right after the earlier ones, would go with the moved ones: a
        burst."""
        wall = max(booked, paused_until)
        last = self._leased[-1] if self._leased else None
        if last is not None and not last.future.done():
            wall = max(wall, last.wall + (booked - last.booked) * (1 - CATCH_UP))
        return wall

    def _schedule(self, start: _Start) -> None:
        if start.handle is not None:
            start.handle.cancel()
        delay = max(0.0, start.wall - time.time())
        start.handle = asyncio.get_running_loop().call_later(delay, self._fire, start)

    def _fire(self, start: _Start) -> None:
        """A leased start is due. One that comes late (a busy process) has lost its slot: sent
        now, it would go in a slot the limiter gave another worker, and moving this worker's
        later starts with it would send them in other workers' slots too, for as long as this
        one runs behind: bunches that push a provider's window over. It goes back to the head
        of the queue, for a slot of its own with the next lease; the lost slot is what the
        busy loop costs (`_lease_again`)."""
        start.handle = None  # fired: not moved by what follows
        if start.future.done():
            return
        now = time.time()
        late = now - start.wall > SLIP
        if late and not start.gated and self._lease_again(start.future):
            self._leased.remove(start)
            self._waiting.appendleft((start.tokens, start.future))
            self._kick()
            return
        # Starts that go late anyway (late twice, or after a slow lease) must not go together:
        # each goes no sooner after this worker's last start than their bookings were apart.
        # On time (within SLIP of its slot), a start is never held by this: held, every start
        # a busy loop fired a little late would push the next one as late, and the worker's
        # pace would fall by the loop's lateness per start (a fifth at 50 starts a second).
        earliest = self._released + start.gap * (1 - CATCH_UP)
        if (late or start.gated) and now < earliest:
            start.gated = True
            start.handle = asyncio.get_running_loop().call_later(
                earliest - now, self._fire, start)
            return
        self._released = now
        self._again.discard(id(start.future))
        start.future.set_result(start.at)

    def _lease_again(self, future: asyncio.Future[float]) -> bool:
        """Whether a request whose slot went by is leased again: once. Late a second time, it
        goes, or a process too busy for any slot would never send."""
        if id(future) in self._again:
            return False
        self._again.add(id(future))
        self.forfeited += 1
        return True

    def _shift(self, move: Callable[[float], float]) -> None:
        for start in self._leased:
            if not start.future.done() and start.handle is not None:
                wall = move(start.wall)
                if wall != start.wall:
                    start.wall = wall
                    self._schedule(start)


@dataclass
class _Start:
    """A leased start waiting for its time."""

    wall: float  # when to start, on the wall clock
    at: float  # its booking on the limiter's clock (for `rate_limited_by_server`)
    future: asyncio.Future[float]
    booked: float = 0.0  # its booking on the wall clock (`wall` moves with a pause or a slow lease)
    tokens: int = 0  # what it asked for: asked again if its slot is lost
    gap: float = 0.0  # seconds between its booking and the worker's booking before it
    gated: bool = False  # held back to keep its gap after a late start: goes when it fires
    handle: asyncio.TimerHandle | None = None
