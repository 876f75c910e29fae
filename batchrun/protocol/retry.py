"""Retry policy and error classification as small pure values, testable without I/O."""

from __future__ import annotations

import email.utils
import enum
import http
import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Kind(enum.Enum):
    """What a failed attempt means for the row and for the run."""

    RETRY = "retry"  # transient: try again after a backoff
    ROW = "row"  # this row can never succeed as sent: record the error, go on
    JOB = "job"  # nothing will succeed: stop the whole run (exit 3)


@dataclass(frozen=True)
class Failure:
    """One failed attempt, classified, with a line a user can read."""

    kind: Kind
    message: str
    status: int | None = None
    retry_after: float | None = None  # seconds the server asked us to wait
    rate_limited: bool = False  # a 429 about rate, which slows the whole run
    # No server answered: the connection was refused, DNS or TLS failed, or no response came
    # in time. Only this, and nothing else ever answered, tells a dead endpoint (decision).
    unreachable: bool = False

    @property
    def concurrency(self) -> bool:
        """A 429 about requests in flight (MegaLLM, the simulator), not about their pace."""
        return self.rate_limited and "concurren" in self.message.lower()


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, honouring retry-after, within a deadline."""

    max_attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    deadline: float = 900.0  # seconds a row may spend retrying before it is given up

    def should_retry(self, failure: Failure, attempt: int, elapsed: float) -> bool:
        """Retry when the failure is transient and attempts and time remain."""
        return (
            failure.kind is Kind.RETRY
            and attempt < self.max_attempts
            and elapsed + (failure.retry_after or 0.0) < self.deadline
        )

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before attempt `attempt + 1`: full jitter, never less than retry-after."""
        backoff = rng.uniform(0.0, min(self.cap, self.base * 2 ** (attempt - 1)))
        return max(backoff, retry_after or 0.0)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or an HTTP date)."""
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _seconds(value: str | None) -> float | None:
    """A finite, non-negative number from a header, else None (`inf` would stall the run)."""
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return max(0.0, number) if math.isfinite(number) else None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float | None:
    """Seconds in an OpenAI reset header: '1s', '6m0s', '12ms', '1m30.5s' (or a bare number)."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


def error_fields(body: Any) -> tuple[str, str | None, str | None]:
    """(message, type, code) from an OpenAI or LLMost error body; code as text."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return error, None, None
    if not isinstance(error, dict):
        message = body.get("message") if isinstance(body, dict) else None
        return (str(message) if message else ""), None, None
    message = str(error.get("message") or "")
    err_type = error.get("type")
    code = error.get("code")
    metadata = error.get("metadata")
    if isinstance(metadata, dict) and metadata.get("provider"):
        message = f"{message} (provider: {metadata['provider']})" if message else message
    return message, (str(err_type) if err_type else None), (str(code) if code is not None else None)


FIX_HINTS = {
    401: "check the API key",
    402: "add credits to the account",
    403: "check the account's access to this model",
    404: "check --model and --base-url",
}


def _phrase(status: int) -> str:
    """The standard reason phrase of an HTTP status ("Bad Request"), or "" for an odd one."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def classify_http(status: int, body: Any, retry_after: float | None,
                  key_hint: str = FIX_HINTS[401]) -> Failure:
    """Classify an HTTP error answer; both error-body styles are understood. `key_hint` says what
    to check about the key on a 401 (the sender knows where its key came from)."""
    message, err_type, code = error_fields(body)
    label = code if code and not code.isdigit() else err_type  # the provider's error class
    text = f"HTTP {status} {_phrase(status)}".rstrip() + (f" ({label})" if label else "")
    line = f"{text}: {message}" if message else text
    lowered = message.lower()
    if code in ("insufficient_quota", "billing_hard_limit_reached") or (
        status == 429 and "quota" in lowered and "rate" not in lowered
    ):
        return Failure(Kind.JOB, f"{line}; {FIX_HINTS[402]}", status)
    if status == 429:
        if "request too large" in lowered:
            return Failure(
                Kind.JOB, f"{line}; lower --max-tokens or shorten the prompts", status
            )
        return Failure(Kind.RETRY, line, status, retry_after, rate_limited=True)
    if status in (401, 402) or code == "invalid_api_key":
        hint = FIX_HINTS[402] if status == 402 else key_hint
        return Failure(Kind.JOB, f"{line}; {hint}", status)
    if status == 404 or code == "model_not_found":
        return Failure(Kind.JOB, f"{line}; {FIX_HINTS[404]}", status)
    if status in (408, 409) or status >= 500:
        return Failure(Kind.RETRY, line, status, retry_after)
    if status == 403:
        return Failure(Kind.ROW, line, status)
    return Failure(Kind.ROW, line, status)


# What a 400 says when it is about the model or its parameters (another endpoint, another model,
# may take the same row): the context window, a parameter it does not support, the model itself.
_ENDPOINT_400 = re.compile(
    r"context|token|too long|too large|param|unsupported|not supported|model", re.IGNORECASE)


def elsewhere(failure: Failure) -> bool:
    """Could another endpoint answer the row this failure ended on one? (Several endpoints.)

    Yes for what depends on the endpoint's model, provider or account rather than the row: a
    context window exceeded (400, 413), a 400 about a parameter or the model, a content filter or
    a refusal (403) of this provider, and transient failures (5xx, timeouts, 429s, `finish_reason:
    error`) that outlasted this endpoint's retries. No for a request no server takes as it is
    (another 400: malformed messages, an image that cannot be read), which would fail again.
    """
    if failure.kind is Kind.RETRY:
        return True  # only asked once the retries on this endpoint are exhausted
    if failure.kind is Kind.JOB:
        return False  # the endpoint retires: its rows go on without counting this as a try
    if failure.status in (403, 413, 422) or failure.status == 200:  # 200: content filtered
        return True
    return failure.status == 400 and _ENDPOINT_400.search(failure.message) is not None
