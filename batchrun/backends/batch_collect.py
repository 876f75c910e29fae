"""Collect: an ended batch's output and error lines become Outcomes, or rows back to pending; pure.

    200 line, good answer           ok (usage and cost at the batch price)
    200 line, answer judged bad     as online: a row error, or back to pending (retryable)
    4xx line (context too long)     a row error (row-fatal), as online
    5xx/429 line, `error` object    back to pending, using up one of --max-attempts
    no line (expired, cancelled)    back to pending, likewise (a cancel of ours uses none)
    job-wide refusal in a line      back to pending, and the run stops (exit 3)

A row back to pending whose attempts are used up becomes a row error (exhausted), as online.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchrun.journal.batches import Carried, Returned
from batchrun.protocol.answers import Answer, Usage, build_outcome, judge, read_answer
from batchrun.protocol.outcome import ERROR, EXHAUSTED, OK, ROW_FATAL, Outcome
from batchrun.protocol.retry import Failure, Kind, classify_http
from batchrun.settings.prices import Price

NOTHING_CARRIED = Carried(0, 0, 0, None)
MISSING = {
    "expired": "the batch expired (24 h) before answering it",
    "cancelled": "the batch was cancelled before answering it",
    "failed": "the batch failed validation",
}


@dataclass(frozen=True)
class Rules:
    """How lines are judged and priced: the run's settings that matter after submission."""

    response_format: str
    schema: Mapping[str, Any] | None
    model: str | None
    price: Price | None
    max_attempts: int
    exhaust: bool = True  # False with --batch-fallback online: leftovers go online instead


@dataclass
class Collected:
    """What one ended batch gave: outcomes to commit, keys back to pending, and what it billed."""

    outcomes: list[Outcome] = field(default_factory=list)
    returned: list[Returned] = field(default_factory=list)
    stop: str | None = None  # a job-wide refusal seen in a line
    unknown: int = 0  # lines whose custom_id this batch did not carry (ignored)
    unreadable: int = 0  # lines that are not JSON objects (ignored; their rows go back)
    prompt_tokens: int = 0  # billed by the lines read, kept or not
    completion_tokens: int = 0
    cost_usd: float = 0.0


def collect(files: Iterable[bytes], held: Set[bytes], carried: Mapping[bytes, Carried],
            rules: Rules, status: str, ours: bool = False) -> Collected:
    """Judge every line of a batch's output and error files against the keys it held.

    `ours`: we cancelled it, so its unanswered rows go back without using an attempt.
    """
    result = Collected()
    seen: set[bytes] = set()
    for content in files:
        for raw in content.splitlines():
            if not raw.strip():
                continue
            key, failure, answer, parsed = _line(raw, rules)
            if key is None or key not in held or key in seen:
                if key is None:
                    result.unreadable += 1
                else:
                    result.unknown += key not in held
                continue
            seen.add(key)
            _bill(result, answer, rules.price)
            _settle(result, key, carried.get(key, NOTHING_CARRIED), rules, failure, answer,
                    parsed, counted=True)
    why = MISSING.get(status, f"the batch ended ({status}) without a line for it")
    counted = status not in ("failed",) and not (ours and status == "cancelled")
    for key in held - seen:
        failure = Failure(Kind.RETRY, f"not answered: {why}")
        _settle(result, key, carried.get(key, NOTHING_CARRIED), rules, failure, None, None,
                counted=counted)
    return result


def _line(raw: bytes, rules: Rules) -> tuple[bytes | None, Failure | None, Answer | None,
                                             str | None]:
    """(key, failure, answer, parsed) of one output or error line; key None: unreadable."""
    try:
        line = orjson.loads(raw)
        key = bytes.fromhex(line["custom_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None, None, None, None
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status, body = response["status_code"], response.get("body")
        if status != 200:
            return key, classify_http(status, body, None), None, None
        answer, failure = read_answer(body)
        if answer is None:
            return key, failure, None, None
        parsed, failure = judge(answer, rules.response_format, rules.schema)
        return key, failure, answer, parsed
    if isinstance(error, dict):
        code = error.get("code") or "error"
        return key, Failure(Kind.RETRY, f"batch line {code}: {error.get('message') or ''}"
                            .rstrip(": ")), None, None
    return key, Failure(Kind.RETRY, "unreadable batch output line: no response, no error"), \
        None, None


def _bill(result: Collected, answer: Answer | None, price: Price | None) -> None:
    if answer is None or not answer.billed:
        return
    prompt, completion = answer.prompt_tokens or 0, answer.completion_tokens or 0
    result.prompt_tokens += prompt
    result.completion_tokens += completion
    if price is not None:
        result.cost_usd += price.cost(prompt, completion, answer.cached_tokens or 0)


def _settle(result: Collected, key: bytes, before: Carried, rules: Rules,
            failure: Failure | None, answer: Answer | None, parsed: str | None,
            counted: bool) -> None:
    """An Outcome for the key, or a Returned: the decision table in the module docstring."""
    prompt = before.prompt_tokens + ((answer.prompt_tokens or 0) if answer else 0)
    completion = before.completion_tokens + ((answer.completion_tokens or 0) if answer else 0)
    attempts = before.tries + 1
    if failure is not None and failure.kind is not Kind.ROW:
        if failure.kind is Kind.JOB:
            result.stop = result.stop or failure.message
            counted = False
        elif counted and rules.exhaust and attempts >= rules.max_attempts:
            message = f"{failure.message} (gave up after {attempts} batches: --max-attempts)"
            result.outcomes.append(_outcome(key, ERROR, answer, prompt, completion, attempts,
                                            rules, None, message, EXHAUSTED))
            return
        result.returned.append(Returned(key, counted, prompt - before.prompt_tokens,
                                        completion - before.completion_tokens, failure.message))
        return
    if failure is None:
        result.outcomes.append(_outcome(key, OK, answer, prompt, completion, attempts, rules,
                                        parsed, None, None))
    else:
        result.outcomes.append(_outcome(key, ERROR, answer, prompt, completion, attempts, rules,
                                        None, failure.message, ROW_FATAL))


def _outcome(key: bytes, status: str, answer: Answer | None, prompt: int, completion: int,
             attempts: int, rules: Rules, parsed: str | None, error: str | None,
             kind: str | None) -> Outcome:
    billed = prompt or completion or (answer is not None and answer.billed)
    # The details are the last line's: earlier batches of the row carried only their tokens.
    usage = Usage(prompt, completion, prompt + completion,
                  *((answer.cached_tokens, answer.reasoning_tokens, answer.provider_cost)
                    if answer is not None else (None, None, None))) if billed else None
    cost = (rules.price.cost(prompt, completion, usage.cached or 0)
            if usage and rules.price is not None else None)
    return build_outcome(key, status, answer, usage, attempts, None, cost,
                         default_model=rules.model, parsed=parsed, error=error, error_kind=kind)
