"""Answers: read a chat-completion body, judge it, and build the row's Outcome; pure functions.

Every backend uses these: an online reply and a Batch API output line carry the same body.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from batchrun.protocol.outcome import OK, Outcome
from batchrun.protocol.retry import Failure, Kind
from batchrun.protocol.structured import check_json

MAX_TOKENS_SANE = 10_000_000  # a usage count above this is not a real answer
MAX_COST_SANE = 1_000_000.0  # USD: a reported `usage.cost` above this is not a real bill


class Answer(NamedTuple):
    """A readable 200 answer."""

    content: str | None
    finish_reason: str
    model: str | None
    response_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    tool_calls: Any = None
    # The provider's details of its usage, where it reports them (`usage_details`).
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    provider_cost: float | None = None

    @property
    def billed(self) -> bool:
        """Did the answer say what it used? Without `usage` the row's counts stay unknown."""
        return not (self.prompt_tokens is None and self.completion_tokens is None
                    and self.total_tokens is None)


def parse_answer(raw: bytes) -> tuple[Answer | None, Failure | None]:
    """Read a 200 body defensively: anything malformed is a retryable 'unreadable answer'."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, Failure(Kind.RETRY, "unreadable answer: body is not JSON", 200)
    # The usual answer, complete and well-typed, is taken in one look (orjson gives exact dict,
    # list, str and int); anything else gets the careful reading below and its precise message.
    if type(data) is dict and "error" not in data:
        choices = data.get("choices")
        usage = data.get("usage")
        if type(choices) is list and choices and type(usage) is dict:
            choice = choices[0]
            message = choice.get("message") if type(choice) is dict else None
            if type(message) is dict:
                content = message.get("content")
                finish = choice.get("finish_reason")
                prompt = usage.get("prompt_tokens")
                completion = usage.get("completion_tokens")
                total = usage.get("total_tokens")
                model = data.get("model")
                response_id = data.get("id")
                if (type(content) is str and type(finish) is str and finish
                        and type(prompt) is int and type(completion) is int
                        and type(total) is int and 0 <= prompt <= MAX_TOKENS_SANE
                        and 0 <= completion <= MAX_TOKENS_SANE and 0 <= total <= MAX_TOKENS_SANE
                        and type(model) is str and type(response_id) is str):
                    return Answer(content, finish, model, response_id, prompt, completion, total,
                                  message.get("tool_calls") or None,
                                  *usage_details(usage)), None
    return read_answer(data)


def read_answer(data: Any) -> tuple[Answer | None, Failure | None]:
    """The careful reading of a decoded 200 body: every missing or odd part named."""
    if not isinstance(data, dict):
        return None, Failure(Kind.RETRY, "unreadable answer: body is not a JSON object", 200)
    if "error" in data and not data.get("choices"):
        message = data["error"].get("message") if isinstance(data["error"], dict) else data["error"]
        return None, Failure(Kind.RETRY, f"provider error in a 200 answer: {message}", 200)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, Failure(Kind.RETRY, "unreadable answer: no choices", 200)
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        return None, Failure(Kind.RETRY, "unreadable answer: choice has no message", 200)
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        return None, Failure(Kind.RETRY, "unreadable answer: content is not text", 200)
    finish = choice.get("finish_reason")
    finish = finish if isinstance(finish, str) and finish else "stop"
    usage = data.get("usage")
    tokens: list[int | None] = [None, None, None]
    details: tuple[int | None, int | None, float | None] = (None, None, None)
    if usage is not None:
        if not isinstance(usage, dict):
            return None, Failure(Kind.RETRY, "unreadable answer: usage is not an object", 200)
        for i, name in enumerate(("prompt_tokens", "completion_tokens", "total_tokens")):
            value = usage.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not (
                0 <= value <= MAX_TOKENS_SANE
            ):
                return None, Failure(Kind.RETRY, f"unreadable answer: usage {name}={value!r}", 200)
            tokens[i] = value
        if tokens[2] is None and tokens[0] is not None and tokens[1] is not None:
            tokens[2] = tokens[0] + tokens[1]
        details = usage_details(usage)
    model = data.get("model")
    response_id = data.get("id")
    return Answer(
        content=content,
        finish_reason=finish,
        model=model if isinstance(model, str) else None,
        response_id=response_id if isinstance(response_id, str) else None,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        total_tokens=tokens[2],
        tool_calls=message.get("tool_calls") or None,
        cached_tokens=details[0], reasoning_tokens=details[1], provider_cost=details[2],
    ), None


def usage_details(usage: Mapping[str, Any]) -> tuple[int | None, int | None, float | None]:
    """(cached prompt tokens, reasoning tokens, reported cost in USD) of a `usage` object.

    Providers report these unevenly, so each is read defensively: absent, null or not a sane
    number is None (unknown), never a failure of an answer that is otherwise good.
    """
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    return (_count(prompt.get("cached_tokens")) if type(prompt) is dict else None,
            _count(completion.get("reasoning_tokens")) if type(completion) is dict else None,
            _cost(usage.get("cost")))


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= MAX_TOKENS_SANE else None


def _cost(value: Any) -> float | None:
    if type(value) not in (int, float) or not math.isfinite(value):
        return None
    return float(value) if 0 <= value <= MAX_COST_SANE else None


def judge(answer: Answer, response_format: str,
          schema: Mapping[str, Any] | None) -> tuple[str | None, Failure | None]:
    """Is a readable answer a success? (parsed JSON text, None), or (None, why it is not)."""
    if answer.finish_reason == "error":
        return None, Failure(Kind.RETRY, "provider reported finish_reason 'error'", 200)
    if answer.finish_reason == "content_filter":
        return None, Failure(Kind.ROW, "content filtered by the provider", 200)
    if answer.content is None and not answer.tool_calls:
        return None, Failure(Kind.RETRY, "unreadable answer: no content and no tool calls", 200)
    if response_format == "text" or answer.tool_calls:
        return None, None
    parsed, problem = check_json(answer.content, schema)
    if problem and answer.finish_reason == "length":
        # Cut off by max_tokens: asking again would pay for the same truncated answer.
        return None, Failure(Kind.ROW, f"invalid structured output: {problem}; the answer "
                             "was cut off at --max-tokens: raise it", 200)
    if problem:
        return None, Failure(Kind.RETRY, f"invalid structured output: {problem}", 200)
    return parsed, None


class Usage(NamedTuple):
    """Tokens a row used over all its attempts (the Usage is None where no answer said: not 0);
    the details are None where no answer reported them."""

    prompt: int
    completion: int
    total: int
    cached: int | None = None
    reasoning: int | None = None
    cost: float | None = None  # the provider's `usage.cost`, summed


def add_usage(usage: Usage | None, answer: Answer) -> Usage | None:
    """The row's usage after one more answer."""
    if not answer.billed and answer.provider_cost is None:
        return usage
    before = usage or Usage(0, 0, 0)
    return Usage(before.prompt + (answer.prompt_tokens or 0),
                 before.completion + (answer.completion_tokens or 0),
                 before.total + (answer.total_tokens or 0),
                 _plus(before.cached, answer.cached_tokens),
                 _plus(before.reasoning, answer.reasoning_tokens),
                 _plus(before.cost, answer.provider_cost))


def _plus(before: Any, more: Any) -> Any:
    """A sum over attempts where a part may be unknown: known parts add up; all unknown is None."""
    if more is None:
        return before
    return more if before is None else before + more


def build_outcome(key: bytes, status: str, answer: Answer | None, usage: Usage | None,
                  attempts: int, latency_ms: float | None, cost: float | None, *,
                  default_model: str | None, parsed: str | None = None,
                  error: str | None = None, error_kind: str | None = None,
                  endpoint: str | None = None) -> Outcome:
    """The journal's record of a finished row."""
    response = None
    if answer is not None:
        response = answer.content
        if response is None and answer.tool_calls:
            response = orjson.dumps(answer.tool_calls).decode()
    return Outcome(
        key=key, status=status, response=response,
        finish_reason=answer.finish_reason if answer is not None else "error",
        prompt_tokens=usage.prompt if usage else None,
        completion_tokens=usage.completion if usage else None,
        total_tokens=usage.total if usage else None,
        error=error, error_kind=error_kind, attempts=attempts,
        latency_ms=latency_ms if status == OK else None,
        model=answer.model if answer is not None else default_model,
        response_id=answer.response_id if answer is not None else None,
        cost_usd=cost, parsed=parsed, finished_at=time.time(), endpoint=endpoint,
        cached_tokens=usage.cached if usage else None,
        reasoning_tokens=usage.reasoning if usage else None,
        provider_cost=usage.cost if usage else None,
    )

