"""The run: plan rows against the journal, send them through the limiter with retries, record.

One producer streams the input (render, hash, skip what the journal already has, dedup), a fixed
pool of workers sends, and a flusher group-commits each answer before its worker sends again. A job-wide
failure, a budget or a signal sets `stopping`: no new request starts, requests in flight finish
(within a grace period for signals), and unsent rows stay pending for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from .config import RunConfig, Secret, check_transport
from .cost import Price, price_for
from .errors import BatchrunError, Interrupted, JobStopped, UsageError
from .journal import GroupCommit, Journal, OutputLock, journal_path
from .limiter import Limiter
from .outcome import ERROR, EXHAUSTED, OK, ROW_FATAL, Outcome
from .plan import completion_reserve, open_job, place, rendered_batches, sort_out
from .read import InputTable
from .render import Renderer, Request
from .retry import FIX_HINTS, Failure, Kind, RetryPolicy
from .send import Answer, Sender, new_session
from .structured import check_json

log = logging.getLogger("batchrun")

FLUSH_EVERY = 0.1  # seconds: the longest a buffered journal row waits (answers: one loop turn)
FORBIDDEN_STORM = 10  # this many 403s in a row, with no answer between, stop the run
GRACE_SECONDS = 10.0  # after a signal, how long requests in flight may finish


@dataclass
class Stats:
    """Live counters of one run, read by the progress display and the summary."""

    total_rows: int | None = None
    to_send: int = 0  # distinct requests this run must send
    finished: int = 0  # of those, committed to the journal
    ok: int = 0
    errors: int = 0
    reused: int = 0  # rows answered by an earlier run
    copies: int = 0  # rows answered by an identical request of this run (dedup)
    invalid: int = 0
    mapped: int = 0  # input rows planned so far
    sent: int = 0  # HTTP requests sent
    retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    started: float = field(default_factory=time.time)
    producing_done: bool = False


class Job(NamedTuple):
    """One distinct request to send."""

    key: bytes
    body: bytes
    tokens: int
    cost_estimate: float


class Budget:
    """--max-cost and --max-total-tokens: admit a request only if, with what is in flight, it fits."""

    def __init__(self, max_cost: float | None, max_tokens: int | None) -> None:
        self.max_cost = max_cost
        self.max_tokens = max_tokens
        self.spent_cost = 0.0
        self.spent_tokens = 0
        self.held_cost = 0.0
        self.held_tokens = 0
        self.active = max_cost is not None or max_tokens is not None  # else nothing to hold

    def admit(self, job: Job) -> str | None:
        """Hold the job's worst case, or say why the budget cannot take it."""
        if self.max_cost is not None and (
            self.spent_cost + self.held_cost + job.cost_estimate > self.max_cost
        ):
            return (
                f"budget reached: --max-cost {self.max_cost:g} USD (spent {self.spent_cost:.4f}, "
                f"{self.held_cost:.4f} in flight); raise it or run again to continue"
            )
        if self.max_tokens is not None and (
            self.spent_tokens + self.held_tokens + job.tokens > self.max_tokens
        ):
            return (
                f"budget reached: --max-total-tokens {self.max_tokens} (used {self.spent_tokens}, "
                f"{self.held_tokens} in flight); raise it or run again to continue"
            )
        self.held_cost += job.cost_estimate
        self.held_tokens += job.tokens
        return None

    def settle(self, job: Job, tokens: int, cost: float) -> None:
        """Replace the job's hold by what it really used."""
        self.held_cost -= job.cost_estimate
        self.held_tokens -= job.tokens
        self.spent_cost += cost
        self.spent_tokens += tokens


class Run:
    """One execution of a job; `execute()` is the whole of it."""

    def __init__(self, config: RunConfig, key: Secret | None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.key = key
        self.stats = Stats()
        self.stop_error: BatchrunError | None = None
        self._on_event = on_event or (lambda name, data: None)
        self.price: Price | None = price_for(config.model, config.price)
        self.policy = RetryPolicy(max_attempts=config.max_attempts)
        self._rng = random.Random()
        self._budget = Budget(config.max_cost, config.max_total_tokens)
        self._producer: asyncio.Task[None] | None = None
        self._quiet_until = -1.0  # loop time before which rate-limit pauses are not reported again
        self._refused = 0  # 403s in a row with no answer between: many mean no access at all

    # --- the whole run ----------------------------------------------------------------------

    async def execute(self) -> Journal:
        """Send every pending row; returns the (open) journal for the writer. Raises on stops."""
        config = self.config
        check_transport(config, self.key)
        table, renderer = open_job(config)
        self.table = table
        self.stats.total_rows = table.count_rows()
        try:
            config.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the output folder {config.output.parent}: "
                             f"{exc.strerror}") from None
        lock = OutputLock(config.output)
        lock.acquire()
        self._lock = lock
        journal = Journal(journal_path(config.output), fresh=config.fresh)
        self.journal = journal
        if config.fresh:
            journal.discard_all()
        journal.start_mapping()
        journal.set_meta(
            input=str(config.input), output=str(config.output), model=config.model,
            base_url=config.endpoint, total_rows=self.stats.total_rows,
            started_at=time.time(), pid=os.getpid(), finished_at=None, state="running",
            stop_reason=None,
        )
        self._emit("start", total_rows=self.stats.total_rows, input=str(config.input),
                   output=str(config.output), model=config.model, base_url=config.endpoint,
                   concurrency=config.concurrency, rpm=config.rpm, tpm=config.tpm)
        async with self._endpoint() as base_url, new_session(
            config.concurrency, tls=base_url.startswith("https:")
        ) as session:
            self.sender = Sender(session, base_url, self.key, config.timeout,
                                 scrub=(self.key.reveal(),) if self.key else ())
            self.limiter = Limiter(config.rpm, config.tpm, config.concurrency)
            await self._pump(table, renderer, journal)
        if self.stop_error is not None:
            with contextlib.suppress(JobStopped):  # a journal that cannot be written stays as is
                journal.flush()
                journal.set_meta(state="stopped", stop_reason=self.stop_error.message,
                                 finished_at=time.time())
            raise self.stop_error
        journal.flush()
        return journal

    def release(self) -> None:
        """Close the journal and let the next run take the output."""
        with contextlib.suppress(Exception):
            self.journal.close()
        with contextlib.suppress(Exception):
            self._lock.release()

    @contextlib.asynccontextmanager
    async def _endpoint(self) -> AsyncIterator[str]:
        if self.config.provider == "simulator" and not self.config.base_url:
            from . import sim as simulator  # aiohttp.web: imported only when the preset asks for it

            async with simulator.running(simulator.SimConfig(), "127.0.0.1", 0) as sim:
                yield sim.base_url
        else:
            yield self.config.base_url

    async def _pump(self, table: InputTable, renderer: Renderer, journal: Journal) -> None:
        self.stopping = asyncio.Event()
        queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=self.config.concurrency * 2)
        workers = [asyncio.create_task(self._work(queue)) for _ in range(self.config.concurrency)]
        producer = asyncio.create_task(self._produce(table, renderer, journal, queue))
        self._producer = producer
        self._commits = GroupCommit(journal, FLUSH_EVERY, self._committed)
        flusher = asyncio.create_task(self._commits.run())
        self._workers = workers
        with self._signals():
            producer_error: BaseException | None = None
            try:
                await producer
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # raised below, once the workers are done
                producer_error = exc
                self.stopping.set()
            if self.stopping.is_set():
                # The producer was cancelled before it could say "no more": queued jobs stay
                # pending, and workers idle on an empty queue must not wait for the grace timer.
                while not queue.empty():
                    queue.get_nowait()
                for _ in workers:
                    queue.put_nowait(None)
            await self._wait_workers(workers)
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            self._commits.flush()
        if producer_error is not None:
            raise producer_error

    async def _wait_workers(self, workers: list[asyncio.Task[None]]) -> None:
        done = asyncio.gather(*workers, return_exceptions=True)
        results = await done
        for result in results:
            if isinstance(result, BaseException) and not isinstance(
                result, asyncio.CancelledError
            ):
                raise result

    # --- planning ---------------------------------------------------------------------------

    async def _produce(self, table: InputTable, renderer: Renderer, journal: Journal,
                       queue: asyncio.Queue[Job | None]) -> None:
        config, stats = self.config, self.stats
        dedup = config.dedup_enabled
        for start, rendered in rendered_batches(table, renderer):
            if self.stopping.is_set():
                break
            n = len(rendered)
            placed = place(rendered, start, journal.prior_counts([r.key for r in rendered]), dedup)
            journal.map_rows(placed.mapping)
            stats.copies += placed.copies
            done = journal.finished([key for _, key, _ in placed.firsts])
            sorted_out = sort_out(placed.firsts, done, config.retry_failed)
            stats.reused += sorted_out.reused
            for _, key, item in sorted_out.invalid:
                stats.invalid += 1
                stats.errors += 1
                journal.record(Outcome(key, ERROR, error=f"invalid row: {item.message}",
                                       error_kind=ROW_FATAL, finished_at=time.time()))
            jobs = [self._job(key, request) for _, key, request in sorted_out.send]
            stats.mapped += n
            stats.to_send += len(jobs)
            for job in jobs:
                await queue.put(job)
            await asyncio.sleep(0)  # let workers and the flusher run between batches
        journal.flush()
        stats.producing_done = True
        for _ in range(self.config.concurrency):
            await queue.put(None)

    def _job(self, key: bytes, request: Request) -> Job:
        estimate = 0.0
        if self.price is not None:
            # Worst case: the answer runs to max_tokens (or the server's default when unset).
            completion = completion_reserve(self.config)
            estimate = self.price.cost(request.tokens - completion, completion)
        return Job(key, request.body, request.tokens, estimate)

    # --- sending ----------------------------------------------------------------------------

    async def _work(self, queue: asyncio.Queue[Job | None]) -> None:
        while True:
            job = await queue.get()
            if job is None or self.stopping.is_set():
                return
            outcome = await self._attempts(job)
            if outcome is not None:
                # Durable before this worker sends again: a kill -9 pays twice only for requests
                # in flight.
                try:
                    await self._commits.commit(outcome)
                except JobStopped as exc:  # the journal cannot be written: start nothing more
                    self.stop(exc)
                    return

    async def _attempts(self, job: Job) -> Outcome | None:
        """Send one request until it succeeds, fails for good, or the run stops (None: pending)."""
        loop = asyncio.get_running_loop()
        stats, started = self.stats, loop.time()
        budget = self._budget if self._budget.active else None
        usage = [0, 0, 0]
        billed = False
        attempt = 0
        failure: Failure | None = None
        while True:
            if self.stopping.is_set():
                return None
            oversize = self.limiter.oversize(job.tokens)
            if oversize:
                self.stop(JobStopped(f"stopped: {oversize}"))
                return None
            refusal = budget.admit(job) if budget is not None else None
            if refusal:
                self.stop(JobStopped(refusal))
                return None
            sent_at = self.limiter.start_now(job.tokens)  # no coroutine when none must wait
            if sent_at is None:
                sent_at = await self.limiter.acquire(job.tokens)
            if self.stopping.is_set():
                self.limiter.release()
                if budget is not None:
                    budget.settle(job, 0, 0.0)
                return None
            attempt += 1
            stats.sent += 1
            stats.retries += attempt > 1
            stats.in_flight += 1
            t0 = loop.time()
            try:
                reply = await self.sender.send(job.body)
            finally:
                stats.in_flight -= 1
                self.limiter.release()
            latency_ms = (loop.time() - t0) * 1000.0
            self.limiter.observe(reply.headers)
            answer = reply.answer
            used_tokens, used_cost = 0, 0.0
            if answer is not None:
                prompt = answer.prompt_tokens or 0
                completion = answer.completion_tokens or 0
                used_tokens = answer.total_tokens or 0
                # An answer without `usage` leaves the row's token counts unknown (null), not 0.
                if not billed:
                    billed = (answer.prompt_tokens is not None or answer.completion_tokens
                              is not None or answer.total_tokens is not None)
                usage[0] += prompt
                usage[1] += completion
                usage[2] += used_tokens
                if self.price is not None:
                    used_cost = self.price.cost(prompt, completion)
                stats.prompt_tokens += prompt
                stats.completion_tokens += completion
                stats.cost_usd += used_cost
            if budget is not None:
                budget.settle(job, used_tokens, used_cost)
            if answer is not None:
                parsed, failure = self._judge(answer)
                if failure is None:
                    stats.ok += 1
                    self._refused = 0
                    return self._outcome(job, OK, answer, usage if billed else None, attempt,
                                         latency_ms, parsed=parsed)
            else:
                failure = reply.failure
            assert failure is not None
            if failure.rate_limited:
                stats.rate_limited += 1
                pauses = self.limiter.pauses
                self.limiter.rate_limited_by_server(failure.retry_after, sent_at,
                                                    concurrent=failure.concurrency)
                if self.limiter.pauses > pauses:
                    self._pause_event(loop.time(), failure)
            if failure.kind is Kind.JOB:
                self.stop(JobStopped(f"stopped: {failure.message}"))
                return None
            if failure.status == 403 and failure.kind is Kind.ROW:
                self._refused += 1
                if self._refused >= FORBIDDEN_STORM or self.stopping.is_set():
                    self.stop(JobStopped(
                        f"stopped: {self._refused} requests in a row refused ({failure.message}); "
                        f"{FIX_HINTS[403]}, then run again with --retry-failed for the rows "
                        "refused before the stop"))
                    return None  # pending: the next run sends it
            if self.policy.should_retry(failure, attempt, loop.time() - started):
                log.debug("retrying after: %s", failure.message)
                await self._sleep(self.policy.delay(attempt, failure.retry_after, self._rng))
                continue
            stats.errors += 1
            kind = ROW_FATAL if failure.kind is Kind.ROW else EXHAUSTED
            message = failure.message if kind == ROW_FATAL else (
                f"{failure.message} (gave up after {attempt} attempts)"
            )
            return self._outcome(job, ERROR, answer, usage if billed else None, attempt,
                                 latency_ms, error=message, error_kind=kind)

    def _judge(self, answer: Answer) -> tuple[str | None, Failure | None]:
        """Is a readable answer a success? Finish reasons and structured output decide."""
        if answer.finish_reason == "error":
            return None, Failure(Kind.RETRY, "provider reported finish_reason 'error'", 200)
        if answer.finish_reason == "content_filter":
            return None, Failure(Kind.ROW, "content filtered by the provider", 200)
        if answer.content is None and not answer.tool_calls:
            return None, Failure(Kind.RETRY, "unreadable answer: no content and no tool calls", 200)
        if self.config.response_format == "text" or answer.tool_calls:
            return None, None
        parsed, problem = check_json(answer.content, self.config.schema)
        if problem and answer.finish_reason == "length":
            # Cut off by max_tokens: asking again would pay for the same truncated answer.
            return None, Failure(Kind.ROW, f"invalid structured output: {problem}; the answer "
                                 "was cut off at --max-tokens: raise it", 200)
        if problem:
            return None, Failure(Kind.RETRY, f"invalid structured output: {problem}", 200)
        return parsed, None

    def _outcome(self, job: Job, status: str, answer: Answer | None, usage: list[int] | None,
                 attempts: int, latency_ms: float, *, parsed: str | None = None,
                 error: str | None = None, error_kind: str | None = None) -> Outcome:
        cost = None
        if usage is not None and self.price is not None:
            cost = self.price.cost(usage[0], usage[1])
        response = None
        if answer is not None:
            response = answer.content
            if response is None and answer.tool_calls:
                response = orjson.dumps(answer.tool_calls).decode()
        return Outcome(
            key=job.key, status=status, response=response,
            finish_reason=answer.finish_reason if answer is not None else "error",
            prompt_tokens=usage[0] if usage else None,
            completion_tokens=usage[1] if usage else None,
            total_tokens=usage[2] if usage else None,
            error=error, error_kind=error_kind, attempts=attempts,
            latency_ms=latency_ms if status == OK else None,
            model=answer.model if answer is not None else self.config.model,
            response_id=answer.response_id if answer is not None else None,
            cost_usd=cost, parsed=parsed, finished_at=time.time(),
        )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    # --- stopping and durability ------------------------------------------------------------

    def stop(self, error: BatchrunError) -> None:
        """Stop starting requests; the first reason wins."""
        if self.stop_error is None:
            self.stop_error = error
            self._emit("stop", reason=error.message)
        self.stopping.set()
        self.limiter.close()  # workers waiting for a start go now, and see `stopping`
        if self._producer is not None and not self._producer.done():
            self._producer.cancel()  # it may wait on a full queue that no worker will drain

    def _pause_event(self, now: float, failure: Failure) -> None:
        """A `rate_limited` event per pause, not per 429: a burst of 429s is one slowdown."""
        if now < self._quiet_until:
            return
        pause = failure.retry_after if failure.retry_after is not None else 1.0
        self._quiet_until = now + pause
        rpm = self.limiter.rpm
        self._emit("rate_limited", pause_s=round(pause, 3), status=failure.status,
                   rpm_now=round(rpm, 1) if rpm else None, rate_limited=self.stats.rate_limited)

    def _committed(self, n: int) -> None:
        self.stats.finished += n

    @contextlib.contextmanager
    def _signals(self) -> Any:
        loop = asyncio.get_running_loop()
        installed = []
        hits = {"n": 0}

        def on_signal(signame: str) -> None:
            hits["n"] += 1
            if hits["n"] == 1:
                self.stop(Interrupted(
                    f"interrupted by {signame}; finished rows are saved: run the same command "
                    "again to resume"
                ))
                loop.call_later(GRACE_SECONDS, self._cancel_workers)
            else:
                self._cancel_workers()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig.name)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (e.g. inside a notebook's loop): no handlers
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _cancel_workers(self) -> None:
        for task in self._workers:
            task.cancel()

    def _emit(self, name: str, **data: Any) -> None:
        self._on_event(name, data)

