"""The sending core: drive one job through budget, limiter, send and decision until it settles.

    outcome = await sender.settle(job)   # an Outcome to commit, or None: the row stays pending

Each attempt is: admit (budget, size), wait for the limiter, send, account the usage, judge the
answer, then `decide(...)` and carry out what it says. Every backend that sends requests one at a
time uses this: the local engine's workers and the Ray engine's actors.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from batchrun.errors import JobStopped
from batchrun.protocol.answers import Answer, Usage, add_usage, build_outcome, judge
from batchrun.protocol.outcome import OK, Outcome
from batchrun.protocol.render import completion_reserve
from batchrun.protocol.retry import Failure, Kind, RetryPolicy, elsewhere
from batchrun.protocol.tokens import Calibration
from batchrun.running.rows import Job
from batchrun.running.stats import Stats
from batchrun.running.stopping import Stopper
from batchrun.sending.budget import Budget
from batchrun.sending.decision import Finish, History, Pending, Retry, Stop, decide
from batchrun.sending.routing import Trail
from batchrun.settings.config import RunConfig
from batchrun.settings.prices import Price

if TYPE_CHECKING:  # the HTTP stack's import is paid only by a run that sends (backends.online)
    from batchrun.sending.http import Reply

log = logging.getLogger("batchrun")

RECALIBRATE = 0.05  # a move of the calibrated ratio beyond this corrects the limiter's books


class Limits(Protocol):
    """What the sender asks of a limiter (the local `Limiter`, or a cluster-wide one's client)."""

    pauses: int

    @property
    def rpm(self) -> float | None: ...
    def oversize(self, tokens: int) -> str | None: ...
    def start_now(self, tokens: int) -> float | None: ...
    async def wait_turn(self, tokens: int) -> float: ...
    def release(self) -> None: ...
    def observe(self, headers: Mapping[str, str]) -> None: ...
    def recalibrated(self, factor: float) -> None: ...
    def rate_limited_by_server(self, retry_after: float | None, sent_at: float | None = None,
                               concurrent: bool = False) -> bool: ...


class Switch(Protocol):
    """What the sender asks of a stop switch: the run's `Stopper`, or one endpoint's of a pool
    (`sending.pool.Switch`: a job-wide failure there retires that endpoint only)."""

    @property
    def stopping(self) -> bool: ...
    def stop(self, error: JobStopped) -> None: ...
    async def sleep(self, seconds: float) -> None: ...


class Wire(Protocol):
    """One attempt on the wire (`send.Sender`)."""

    async def send(self, body: bytes) -> Reply: ...


class Hold(NamedTuple):
    """What one attempt reserves on the TPM clock and in the budget: the calibrated estimate."""

    tokens: int
    cost: float


class JobSender:
    """Settles jobs one at a time per caller; many callers (workers) share one JobSender."""

    def __init__(self, config: RunConfig, wire: Wire, limiter: Limits, stats: Stats,
                 stopper: Stopper | Switch, price: Price | None,
                 emit: Callable[[str, dict[str, Any]], None],
                 calibration: Calibration | None = None,
                 seats: asyncio.Semaphore | None = None, *,
                 budget: Budget | None = None, halt: Stopper | None = None) -> None:
        """`budget` and `halt` are the run's when several senders (endpoints) share them: a
        budget stop halts the whole run, while `stopper` may be one endpoint's switch."""
        self._config = config
        self._seats = seats  # the callers' seats: a row waiting to retry gives its seat up
        self._wire = wire
        self._limiter = limiter
        self._stats = stats
        self._stopper = stopper
        self._halt = halt or stopper
        self._price = price
        self._emit = emit
        self._policy = RetryPolicy(max_attempts=config.max_attempts, deadline=config.row_deadline)
        self._budget = budget if budget is not None else Budget(config.max_cost,
                                                                  config.max_total_tokens)
        self._rng = random.Random()
        self._refused = 0  # 403s in a row with no answer between: many mean no access at all
        # Attempts that reached no server while nothing has answered yet (None: something has).
        self._unanswered: int | None = 0
        self._quiet_until = -1.0  # loop time before which pauses are not reported again
        self._calibration = calibration or Calibration()
        self._model = config.model or ""
        self._reserve = completion_reserve(config)
        self._booked_ratio = self._calibration.ratio(self._model)  # what the limiter's books use

    async def settle(self, job: Job, trail: Trail | None = None) -> Outcome | None:
        """Send `job` until it succeeds, fails for good, or the run stops (None: pending).
        A pool passes the row's `trail`: whether another endpoint may answer its error."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = failed = limited = 0
        usage: Usage | None = None
        while not self._stopper.stopping:
            stray = False
            hold = self._hold(job)
            sent_at = await self._start(hold)
            held = self._rehold(job, hold) if sent_at is not None else None
            if sent_at is None or held is None:
                return None
            hold = held
            sent += 1
            reply, latency_ms = await self._send(job, sent > 1, loop)
            answer = reply.answer
            if answer is not None:
                usage = add_usage(usage, answer)
            parsed, failure = self._verdict(job, hold, answer, reply.failure)
            if failure is not None:
                if failure.rate_limited:
                    limited += 1
                    stray = not self._rate_limited(failure, sent_at)
                else:
                    failed += 1
                    self._stats.transient += failure.kind is Kind.RETRY
                if failure.status == 403 and failure.kind is Kind.ROW:
                    self._refused += 1
            else:
                self._refused = 0
            history = History(sent, failed, limited, loop.time() - started, self._refused,
                              self._stopper.stopping, stray, self._reached(failure))
            action = decide(failure, history, self._policy, self._rng, self._config.endpoint)
            if isinstance(action, Retry):
                log.debug("retrying after: %s", failure.message if failure else "")
                await self._wait(action.delay)
            elif isinstance(action, Finish):
                if trail is not None and failure is not None:
                    trail.elsewhere = elsewhere(failure)  # might another endpoint answer it?
                return self._finish(job, action, answer, usage, sent, latency_ms, parsed)
            elif isinstance(action, Stop):
                if trail is not None:
                    trail.unsettled += sent  # sent for the row, which goes on elsewhere
                self._stopper.stop(JobStopped(action.reason))
                return None
            else:
                assert isinstance(action, Pending)
                return None
        return None

    def _reached(self, failure: Failure | None) -> int:
        """Count an attempt that reached no server until one has been answered (then 0 for good):
        how many the run's first attempts show the endpoint dead (`decide`)."""
        if self._unanswered is None:
            return 0
        if failure is None or not failure.unreachable:
            self._unanswered = None  # a server answered, however it answered
            return 0
        self._unanswered += 1
        return self._unanswered

    async def _wait(self, delay: float) -> None:
        """Wait out a retry's delay. A waiting row is not in flight: its caller's seat goes to
        another row meanwhile, so that stray 429s (each a second's wait) do not idle the run."""
        seats = self._seats
        if seats is None:
            await self._stopper.sleep(delay)
            return
        seats.release()
        try:
            await self._stopper.sleep(delay)
        finally:
            await seats.acquire()  # cancelled here only when the whole run is torn down

    def _hold(self, job: Job) -> Hold:
        """The job's reservation with its prompt as the provider counts it (calibrated)."""
        prompt = job.tokens - self._reserve
        tokens = self._calibration.estimate(self._model, prompt, self._reserve)
        if tokens == job.tokens:
            return Hold(tokens, job.cost_estimate)
        cost = self._price.cost(tokens - self._reserve, self._reserve) if self._price else 0.0
        return Hold(tokens, cost)

    def _rehold(self, job: Job, hold: Hold) -> Hold | None:
        """The budget holds the estimate as of the send: answers that came in while this start
        waited may have shown the provider counting more than we thought (None: it no longer
        fits, and the run stops as at admission)."""
        if not self._budget.active:
            return hold
        fresh = self._hold(job)
        if fresh.tokens <= hold.tokens and fresh.cost <= hold.cost:
            return hold
        self._budget.settle(hold.tokens, hold.cost, 0, 0.0)
        refusal = self._budget.admit(fresh.tokens, fresh.cost)
        if refusal:
            self._limiter.release()
            self._halt.stop(JobStopped(refusal))
            return None
        return fresh

    def _recalibrate(self, job: Job) -> None:
        """When the calibration moved much (the first answers, a change of tokenizer), the
        starts of the last seconds were booked at the old estimate: the limiter books the rest,
        once per move."""
        ratio, booked = self._calibration.ratio(self._model), self._booked_ratio
        if abs(ratio - booked) <= RECALIBRATE * booked:
            return
        self._booked_ratio = ratio
        prompt = job.tokens - self._reserve
        before = math.ceil(prompt * booked) + self._reserve
        after = self._calibration.estimate(self._model, prompt, self._reserve)
        self._limiter.recalibrated(after / max(before, 1))

    async def _start(self, hold: Hold) -> float | None:
        """Admit an attempt and wait for its turn; its start time, or None if the run stops."""
        oversize = self._limiter.oversize(hold.tokens)
        if oversize:
            self._stopper.stop(JobStopped(f"stopped: {oversize}"))
            return None
        budget = self._budget if self._budget.active else None
        if budget is not None:
            refusal = budget.admit(hold.tokens, hold.cost)
            if refusal:
                self._halt.stop(JobStopped(refusal))
                return None
        sent_at = self._limiter.start_now(hold.tokens)  # no coroutine when none must wait
        if sent_at is None:
            sent_at = await self._limiter.wait_turn(hold.tokens)
        if self._stopper.stopping:
            self._limiter.release()
            if budget is not None:
                budget.settle(hold.tokens, hold.cost, 0, 0.0)
            return None
        return sent_at

    async def _send(self, job: Job, retry: bool, loop: asyncio.AbstractEventLoop
                    ) -> tuple[Reply, float]:
        """One request on the wire; the limiter hears how it went."""
        stats = self._stats
        stats.sent += 1
        stats.retries += retry
        stats.in_flight += 1
        # `loop` is settle's: on Python 3.11 every get_running_loop() is a getpid() system call.
        t0 = loop.time()
        try:
            reply = await self._wire.send(job.body)
        finally:
            stats.in_flight -= 1
            self._limiter.release()
        latency_ms = (loop.time() - t0) * 1000.0
        self._limiter.observe(reply.headers)
        return reply, latency_ms

    def _verdict(self, job: Job, hold: Hold, answer: Answer | None,
                 failure: Failure | None) -> tuple[str | None, Failure | None]:
        """Account what the answer used, then judge it (or pass the failure on)."""
        tokens, cost = 0, 0.0
        if answer is not None:
            # How the provider counted this prompt, against our estimate, calibrates the next.
            self._calibration.observe(self._model, job.tokens - self._reserve, answer.prompt_tokens)
            self._recalibrate(job)
            prompt, completion = answer.prompt_tokens or 0, answer.completion_tokens or 0
            tokens = answer.total_tokens or 0
            if self._price is not None:
                cost = self._price.cost(prompt, completion, answer.cached_tokens or 0)
            self._stats.prompt_tokens += prompt
            self._stats.completion_tokens += completion
            self._stats.cost_usd += cost
        if self._budget.active:
            # What the provider says it billed is what the budget spends; our price otherwise.
            billed = answer.provider_cost if answer is not None else None
            self._budget.settle(hold.tokens, hold.cost, tokens,
                                billed if billed is not None else cost)
        if answer is None:
            return None, failure
        return judge(answer, self._config.response_format, self._config.schema)

    def _finish(self, job: Job, action: Finish, answer: Answer | None, usage: Usage | None,
                sent: int, latency_ms: float, parsed: str | None) -> Outcome:
        if action.status == OK:
            self._stats.ok += 1
        else:
            self._stats.errors += 1
        cost = None
        if usage is not None and self._price is not None:
            cost = self._price.cost(usage.prompt, usage.completion, usage.cached or 0)
        return build_outcome(job.key, action.status, answer, usage, sent, latency_ms, cost,
                             default_model=self._config.model, parsed=parsed,
                             error=action.error, error_kind=action.error_kind)

    def _rate_limited(self, failure: Failure, sent_at: float) -> bool:
        """Tell the limiter; report a pause of the whole run once per pause, not per 429.
        Whether the limiter took the 429 as evidence (False: a stray one, only its row waits)."""
        self._stats.rate_limited += 1
        limiter = self._limiter
        pauses = limiter.pauses
        evidence = limiter.rate_limited_by_server(failure.retry_after, sent_at,
                                                  concurrent=failure.concurrency)
        if limiter.pauses == pauses:
            return evidence
        now = asyncio.get_running_loop().time()
        if now < self._quiet_until:
            return evidence
        pause = failure.retry_after if failure.retry_after is not None else 1.0
        self._quiet_until = now + pause
        rpm = limiter.rpm
        self._emit("rate_limited", {
            "pause_s": round(pause, 3), "status": failure.status,
            "rpm_now": round(rpm, 1) if rpm else None, "rate_limited": self._stats.rate_limited,
        })
        return evidence
