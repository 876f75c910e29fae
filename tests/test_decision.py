"""The attempt's decision table, without HTTP: what each kind of result does to its row."""

from __future__ import annotations

import random

import pytest

from batchrun.protocol.answers import Answer, Usage, add_usage, build_outcome, judge
from batchrun.protocol.outcome import ERROR, EXHAUSTED, OK, ROW_FATAL
from batchrun.protocol.retry import Failure, Kind, RetryPolicy
from batchrun.sending.decision import FORBIDDEN_STORM, Finish, History, Pending, Retry, Stop, decide

POLICY = RetryPolicy(max_attempts=3, base=0.5, cap=30.0, deadline=100.0)
SERVER = Failure(Kind.RETRY, "HTTP 500 Internal Server Error", 500)
RATE = Failure(Kind.RETRY, "HTTP 429 Too Many Requests", 429, retry_after=2.0, rate_limited=True)


def history(sent: int = 1, failed: int = 0, limited: int = 0, elapsed: float = 0.0,
            refused: int = 0, stopping: bool = False, stray: bool = False) -> History:
    return History(sent, failed, limited, elapsed, refused, stopping, stray)


def test_a_success_finishes_the_row_ok() -> None:
    assert decide(None, history(), POLICY, random.Random(1)) == Finish(OK)


def test_a_transient_failure_is_retried_with_a_counted_attempt_within_the_backoff_cap() -> None:
    action = decide(SERVER, history(failed=1), POLICY, random.Random(1))
    assert isinstance(action, Retry) and action.counted
    assert 0.0 <= action.delay <= 0.5  # full jitter over base * 2**0


def test_retry_after_is_a_floor_for_the_backoff() -> None:
    failure = Failure(Kind.RETRY, "HTTP 503", 503, retry_after=7.0)
    action = decide(failure, history(failed=1), POLICY, random.Random(1))
    assert action == Retry(7.0, counted=True)


def test_attempts_run_out_and_the_row_is_exhausted_so_a_resume_tries_again() -> None:
    action = decide(SERVER, history(sent=3, failed=3), POLICY, random.Random(1))
    assert action == Finish(ERROR, "HTTP 500 Internal Server Error (gave up after 3 attempts)",
                            EXHAUSTED)


def test_a_rate_limit_429_waits_its_retry_after_and_uses_no_attempt() -> None:
    # Many 429s already, and every attempt used up by failures: the 429 still only waits.
    action = decide(RATE, history(sent=9, failed=2, limited=8), POLICY, random.Random(1))
    assert isinstance(action, Retry) and not action.counted
    assert action.delay >= 2.0


def test_a_429_without_retry_after_waits_a_second() -> None:
    failure = Failure(Kind.RETRY, "HTTP 429", 429, rate_limited=True)
    action = decide(failure, history(limited=1), POLICY, random.Random(1))
    assert isinstance(action, Retry) and action.delay >= 1.0 and not action.counted


def test_repeated_429s_that_are_evidence_back_off_but_stray_ones_wait_just_the_retry_after() -> None:
    # The fourth 429 for this row: as evidence that the run is too fast, the backoff grows past
    # the retry-after (full jitter up to 0.5 * 2**3 = 4 s, drawn above 2 s with this seed); as
    # the provider's noise, the row waits exactly what the provider asked.
    backed_off = [decide(RATE, history(sent=4, limited=4), POLICY, random.Random(seed))
                  for seed in range(20)]
    assert all(isinstance(a, Retry) and 2.0 <= a.delay <= 4.0 for a in backed_off)
    assert any(isinstance(a, Retry) and a.delay > 2.0 for a in backed_off)
    stray = decide(RATE, history(sent=4, limited=4, stray=True), POLICY, random.Random(1))
    assert stray == Retry(2.0, counted=False)


def test_the_row_deadline_bounds_waiting_for_rate() -> None:
    action = decide(RATE, history(sent=40, limited=40, elapsed=99.0), POLICY, random.Random(1))
    assert isinstance(action, Finish) and action.status == ERROR
    assert action.error_kind == EXHAUSTED
    assert "--row-deadline 100" in (action.error or "")


def test_the_row_deadline_bounds_retrying_too() -> None:
    failure = Failure(Kind.RETRY, "HTTP 503", 503, retry_after=50.0)
    action = decide(failure, history(failed=1, elapsed=60.0), POLICY, random.Random(1))
    assert isinstance(action, Finish) and action.error_kind == EXHAUSTED


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_refused_request_is_a_row_error_at_once(status: int) -> None:
    failure = Failure(Kind.ROW, f"HTTP {status}: no", status)
    assert decide(failure, history(), POLICY, random.Random(1)) == Finish(
        ERROR, f"HTTP {status}: no", ROW_FATAL)


def test_a_job_wide_failure_stops_the_job_and_leaves_the_row_pending() -> None:
    failure = Failure(Kind.JOB, "HTTP 401 Unauthorized: bad key", 401)
    assert decide(failure, history(), POLICY, random.Random(1)) == Stop(
        "stopped: HTTP 401 Unauthorized: bad key")


def test_a_403_is_a_row_error_until_a_storm_of_them_stops_the_job() -> None:
    failure = Failure(Kind.ROW, "HTTP 403 Forbidden", 403)
    one = decide(failure, history(refused=1), POLICY, random.Random(1))
    assert one == Finish(ERROR, "HTTP 403 Forbidden", ROW_FATAL)
    storm = decide(failure, history(refused=FORBIDDEN_STORM), POLICY, random.Random(1))
    assert isinstance(storm, Stop) and f"{FORBIDDEN_STORM} requests in a row refused" in storm.reason


def test_a_stopping_run_leaves_retryable_rows_pending() -> None:
    assert decide(SERVER, history(stopping=True), POLICY, random.Random(1)) == Pending()
    assert decide(RATE, history(stopping=True), POLICY, random.Random(1)) == Pending()


# --- judging an answer and building the outcome --------------------------------------------


def answer(content: str | None = "fine", finish: str = "stop", tool_calls: object = None,
           usage: tuple[int | None, int | None, int | None] = (10, 5, 15)) -> Answer:
    return Answer(content, finish, "m-1", "r-1", *usage, tool_calls=tool_calls)


def test_judging_finish_reasons_and_structured_output() -> None:
    def kind(a: Answer) -> Kind | None:
        failure = judge(a, "text", None)[1]
        return failure.kind if failure is not None else None

    assert judge(answer(), "text", None) == (None, None)
    assert kind(answer(finish="error")) is Kind.RETRY
    assert kind(answer(finish="content_filter")) is Kind.ROW
    assert kind(answer(content=None)) is Kind.RETRY
    assert judge(answer('{"a": 1}'), "json_object", None) == ('{"a":1}', None)
    retry = judge(answer("not json"), "json_object", None)[1]
    assert retry is not None and retry.kind is Kind.RETRY
    cut = judge(answer('{"a": ', finish="length"), "json_object", None)[1]
    assert cut is not None and cut.kind is Kind.ROW and "--max-tokens" in cut.message
    schema = {"type": "object", "required": ["label"]}
    assert judge(answer('{"x": 1}'), "schema.json", schema)[1] is not None


def test_usage_adds_up_over_attempts_and_stays_unknown_without_any() -> None:
    usage = add_usage(None, answer(usage=(None, None, None)))
    assert usage is None
    usage = add_usage(add_usage(usage, answer()), answer(usage=(1, 2, 3)))
    assert usage == Usage(11, 7, 18)


def test_an_outcome_carries_tool_calls_as_json_when_there_is_no_content() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    outcome = build_outcome(b"k", OK, answer(content=None, finish="tool_calls", tool_calls=calls),
                            Usage(1, 2, 3), 2, 12.5, 0.01, default_model="fallback")
    assert outcome.response is not None and '"name":"f"' in outcome.response
    assert (outcome.attempts, outcome.latency_ms, outcome.model) == (2, 12.5, "m-1")
    failed = build_outcome(b"k", ERROR, None, None, 3, 9.0, None, default_model="fallback",
                           error="boom", error_kind=EXHAUSTED)
    assert (failed.latency_ms, failed.model, failed.finish_reason) == (None, "fallback", "error")
