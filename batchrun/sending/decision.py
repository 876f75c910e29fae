"""The attempt's decision: what one attempt's result means for its row, as a value (no I/O).

The sender sends, then asks `decide(...)`, then carries out what comes back (tenacity's `iter()`):

    Finish   the row is done: ok, or a row error with its message and kind
    Retry    send it again after `delay` seconds (`counted`: it used up one of --max-attempts)
    Pending  leave the row for the next run: the run is stopping
    Stop     stop the whole job (exit 3) with `reason`; the row stays pending

A 429 about rate is the provider asking us to wait, not a failed attempt: it does not use up
--max-attempts. The row's deadline (--row-deadline) bounds all its waiting instead.

An endpoint that never answered is a job-wide failure: when the run's first attempts (DEAD_AFTER,
or all of one row's --max-attempts if fewer) all reached no server (refused, DNS, TLS, timeout)
and none was answered, no row could be, and the run stops with its rows pending. Once anything
has answered, the same failures are retried as usual: the endpoint was there.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from batchrun.protocol.outcome import ERROR, EXHAUSTED, OK, ROW_FATAL
from batchrun.protocol.retry import FIX_HINTS, Failure, Kind, RetryPolicy

FORBIDDEN_STORM = 10  # this many 403s in a row, with no answer between, stop the run
# Attempts that reached no server, with nothing answered yet, that show the endpoint is dead: a
# run's first wave fails at once against a closed port, while a server that drops one connection
# as it starts up is still given a retry or two.
DEAD_AFTER = 3
DEFAULT_RATE_WAIT = 1.0  # seconds a 429 without retry-after makes its row wait


class Finish(NamedTuple):
    """The row is settled: `status` ok, or error with a message and why (ROW_FATAL/EXHAUSTED)."""

    status: str
    error: str | None = None
    error_kind: str | None = None


class Retry(NamedTuple):
    """Send the row again after `delay` seconds; `counted` if it used up an attempt."""

    delay: float
    counted: bool


class Pending(NamedTuple):
    """Leave the row unsent-as-settled: the next run sends it."""


class Stop(NamedTuple):
    """A job-wide failure: stop every start; this row stays pending."""

    reason: str


Action = Finish | Retry | Pending | Stop


class History(NamedTuple):
    """What the row went through so far, this attempt included."""

    sent: int  # requests sent for the row
    failed: int  # failed attempts that count toward --max-attempts (429s about rate do not)
    limited: int  # 429s about rate
    elapsed: float  # seconds since the row's first start
    refused: int  # 403s in a row across the run, this one included
    stopping: bool = False  # the run is stopping: nothing more is sent
    stray: bool = False  # the limiter judged this 429 noise: it paused no other start
    unanswered: int = 0  # the run's attempts that reached no server, while none was answered


def decide(failure: Failure | None, history: History, policy: RetryPolicy,
           rng: random.Random, endpoint: str = "the endpoint") -> Action:
    """What happens to the row after an attempt that succeeded (None) or failed with `failure`;
    `endpoint` names the base URL in a stop's reason."""
    if failure is None:
        return Finish(OK)
    if failure.kind is Kind.JOB:
        return Stop(f"stopped: {failure.message}")
    if failure.unreachable and history.unanswered >= min(DEAD_AFTER, policy.max_attempts):
        return Stop(
            f"stopped: {endpoint} never answered ({history.unanswered} requests, the last: "
            f"{failure.message}); check --base-url and that its server is running and reachable "
            "from here (port, DNS, TLS, proxy), then run the same command again"
        )
    if failure.status == 403 and failure.kind is Kind.ROW and (
        history.refused >= FORBIDDEN_STORM or history.stopping
    ):
        return Stop(
            f"stopped: {history.refused} requests in a row refused ({failure.message}); "
            f"{FIX_HINTS[403]}, then run again with --retry-failed for the rows refused "
            "before the stop"
        )
    if failure.kind is Kind.ROW:
        return Finish(ERROR, failure.message, ROW_FATAL)
    if history.stopping:
        return Pending()
    if failure.rate_limited:
        return _wait_for_rate(failure, history, policy, rng)
    if policy.should_retry(failure, history.failed, history.elapsed):
        return Retry(policy.delay(history.failed, failure.retry_after, rng), counted=True)
    return _given_up(failure, history, policy)


def _wait_for_rate(failure: Failure, history: History, policy: RetryPolicy,
                   rng: random.Random) -> Action:
    """A 429 about rate: wait its retry-after. One the limiter took as evidence that the run is
    too fast backs off further as they repeat for this row; a stray one (the provider's noise,
    which it makes at any pace) waits just as long as the provider asked: backing off would only
    lengthen the tail of a run whose unlucky rows draw two or three."""
    floor = failure.retry_after if failure.retry_after is not None else DEFAULT_RATE_WAIT
    delay = floor if history.stray else policy.delay(history.limited, floor, rng)
    if history.elapsed + delay >= policy.deadline:
        return _given_up(failure, history, policy)
    return Retry(delay, counted=False)


def _given_up(failure: Failure, history: History, policy: RetryPolicy) -> Finish:
    """Transient failures outlasted the attempts or the row's deadline: a resume tries again."""
    if history.failed >= policy.max_attempts:
        why = f"gave up after {history.sent} attempts"
    else:
        why = (f"gave up after {history.sent} attempts and {history.elapsed:,.0f} s: "
               f"--row-deadline {policy.deadline:g}")
    return Finish(ERROR, f"{failure.message} ({why})", EXHAUSTED)
