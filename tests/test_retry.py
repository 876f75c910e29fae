"""The retry policy and the error classes as pure values: no I/O, no sleeping."""

from __future__ import annotations

import email.utils
import random

import pytest

from batchrun.protocol.retry import (
    Failure,
    Kind,
    RetryPolicy,
    classify_http,
    parse_duration,
    parse_retry_after,
)

# --- backoff ----------------------------------------------------------------------------------


def test_full_jitter_stays_within_the_exponential_bound() -> None:
    policy = RetryPolicy(base=0.5, cap=30.0)
    rng = random.Random(1)
    for attempt in range(1, 12):
        bound = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt, None, rng) for _ in range(2000)]
        assert all(0.0 <= d <= bound for d in delays)
        # Full jitter: spread over the whole range, not clustered at the bound.
        assert min(delays) < 0.05 * bound and max(delays) > 0.95 * bound
        assert sum(delays) / len(delays) == pytest.approx(bound / 2, rel=0.08)


def test_the_cap_bounds_late_attempts() -> None:
    policy = RetryPolicy(base=1.0, cap=4.0)
    rng = random.Random(2)
    assert max(policy.delay(30, None, rng) for _ in range(1000)) <= 4.0


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=2.0)
    rng = random.Random(3)
    assert all(policy.delay(1, 1.5, rng) >= 1.5 for _ in range(200))
    assert policy.delay(1, 45.0, rng) == 45.0  # the server's word beats our cap


def test_max_attempts_counts_every_request_sent() -> None:
    policy = RetryPolicy(max_attempts=3)
    transient = Failure(Kind.RETRY, "HTTP 503")
    assert policy.should_retry(transient, 1, 0.0)
    assert policy.should_retry(transient, 2, 0.0)
    assert not policy.should_retry(transient, 3, 0.0)


def test_the_row_deadline_stops_retrying() -> None:
    policy = RetryPolicy(max_attempts=100, deadline=60.0)
    transient = Failure(Kind.RETRY, "timeout")
    assert policy.should_retry(transient, 2, 59.0)
    assert not policy.should_retry(transient, 2, 60.0)
    # A retry-after that would end past the deadline is not waited for.
    waiting = Failure(Kind.RETRY, "HTTP 429", 429, retry_after=30.0, rate_limited=True)
    assert policy.should_retry(waiting, 2, 20.0)
    assert not policy.should_retry(waiting, 2, 40.0)


@pytest.mark.parametrize("kind", [Kind.ROW, Kind.JOB])
def test_final_failures_are_never_retried(kind: Kind) -> None:
    assert not RetryPolicy().should_retry(Failure(kind, "x"), 1, 0.0)


# --- retry-after and reset durations ---------------------------------------------------------


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5


def test_retry_after_as_an_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after({"retry-after": header}, now=now) == pytest.approx(42.0)
    past = email.utils.formatdate(now - 42, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=now) == 0.0


@pytest.mark.parametrize("headers", [
    {}, {"retry-after": "soon"}, {"retry-after": "inf"}, {"retry-after-ms": "nan"},
    {"retry-after": ""},
])
def test_unusable_retry_after_means_none(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers) is None


def test_negative_retry_after_is_zero() -> None:
    assert parse_retry_after({"retry-after": "-3"}) == 0.0


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("12ms", 0.012), ("1m30.5s", 90.5), ("1h0m0s", 3600.0),
    ("250us", 250e-6), ("0s", 0.0), ("2.5", 2.5),
])
def test_reset_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "s", "1s garbage", "-1s"])
def test_bad_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


# --- classification ---------------------------------------------------------------------------


def openai(message: str, type_: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def llmost(status: int, message: str) -> dict:
    return {"error": {"code": status, "message": message, "metadata": {"provider": "anthropic"}}}


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504, 529])
def test_transient_statuses_are_retried(status: int) -> None:
    failure = classify_http(status, openai("try again"), 2.0)
    assert failure.kind is Kind.RETRY and failure.retry_after == 2.0
    assert not failure.rate_limited


def test_a_rate_limit_429_is_retried_and_slows_the_run() -> None:
    body = openai("Rate limit reached for requests", "requests", "rate_limit_exceeded")
    failure = classify_http(429, body, 0.5)
    assert (failure.kind, failure.rate_limited, failure.retry_after) == (Kind.RETRY, True, 0.5)
    assert classify_http(429, llmost(429, "Rate limit exceeded"), None).rate_limited


def test_a_429_for_exhausted_quota_stops_the_job() -> None:
    body = openai("You exceeded your current quota, please check your plan and billing details.",
                  "insufficient_quota", "insufficient_quota")
    failure = classify_http(429, body, None)
    assert failure.kind is Kind.JOB and not failure.rate_limited
    assert "credits" in failure.message or "billing" in failure.message


def test_a_request_larger_than_the_tpm_limit_stops_the_job() -> None:
    body = openai("Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested "
                  "41000. The input or output tokens must be reduced in order to run successfully.",
                  "tokens", "rate_limit_exceeded")
    failure = classify_http(429, body, None)
    assert failure.kind is Kind.JOB and not failure.rate_limited
    assert "--max-tokens" in failure.message


@pytest.mark.parametrize(("status", "body", "fix"), [
    (401, openai("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
     "API key"),
    (401, llmost(401, "Invalid API key"), "API key"),
    (402, llmost(402, "Insufficient credits"), "credits"),
    (402, openai("Payment required", "insufficient_credits", "insufficient_credits"), "credits"),
    (404, openai("The model `gpt-9` does not exist", "invalid_request_error", "model_not_found"),
     "--model"),
    (404, llmost(404, "Model not found"), "--model"),
    (400, openai("The model `x` does not exist", "invalid_request_error", "model_not_found"),
     "--model"),
])
def test_job_wide_failures_stop_the_run_with_the_fix(status: int, body: dict, fix: str) -> None:
    failure = classify_http(status, body, None)
    assert failure.kind is Kind.JOB
    assert fix in failure.message and f"HTTP {status}" in failure.message


def test_llmost_bodies_name_the_upstream_provider() -> None:
    failure = classify_http(402, llmost(402, "Insufficient credits"), None)
    assert "Insufficient credits" in failure.message and "anthropic" in failure.message


@pytest.mark.parametrize(("status", "body"), [
    (400, openai("This model's maximum context length is 128000 tokens. However, your messages "
                 "resulted in 130000 tokens.", "invalid_request_error", "context_length_exceeded")),
    (400, openai("Invalid 'temperature'", "invalid_request_error", "invalid_value")),
    (400, llmost(400, "Bad request")),
    (403, openai("Your input was flagged by moderation.", "permission_error", "flagged")),
    (403, llmost(403, "Input flagged by moderation")),
    (413, openai("Request body too large")),
    (422, openai("Unprocessable")),
])
def test_row_fatal_failures_end_only_their_row(status: int, body: dict) -> None:
    failure = classify_http(status, body, None)
    assert failure.kind is Kind.ROW and failure.status == status
    assert body["error"]["message"] in failure.message


def test_unreadable_error_bodies_still_classify_by_status() -> None:
    assert classify_http(502, {"error": {"message": "<html>nginx</html>"}}, None).kind is Kind.RETRY
    assert classify_http(401, None, None).kind is Kind.JOB
    assert classify_http(500, [], None).kind is Kind.RETRY
    assert classify_http(400, {"error": "plain text error"}, None).message.endswith(
        "plain text error")


def test_a_429_about_requests_in_flight_is_told_apart() -> None:
    body = openai("Too many concurrent requests: Limit 10.", "requests", "rate_limit_exceeded")
    assert classify_http(429, body, 0.2).concurrency
    assert not classify_http(429, openai("Rate limit reached for requests"), 0.2).concurrency
    assert not classify_http(500, openai("concurrent modification"), None).concurrency
