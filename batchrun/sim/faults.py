"""Error bodies in both providers' styles, and the random faults drawn for unscripted requests."""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from batchrun.sim.config import Step

# (message, type, code) per status for Step.status() and random failures.
_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    402: ("Insufficient credits: add credits to continue.", "insufficient_credits", "insufficient_credits"),
    403: ("Access to this model is forbidden.", "permission_error", "model_not_available"),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    408: ("Request timed out.", "timeout", None),
    409: ("Conflict: please retry.", "conflict", None),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    502: ("Bad gateway: the upstream model provider returned an error.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}
# What OpenAI says when it is busy rather than when the client is too fast.
OVERLOADED = (
    "The server is currently overloaded with other requests. Sorry about that! You can retry your "
    "request, or contact us through our help center at help.openai.com if the error persists."
)
HTML_ERROR = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
_QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


def error_doc(
    style: str,
    status: int,
    message: str,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """An error document in OpenAI's style (`{"error": {message, type, param, code}}`) or LLMost's."""
    if style == "llmost":
        return {"error": {"code": status, "message": message, "metadata": {"provider": "simulator"}}}
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_body(
    style: str,
    status: int,
    message: str,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> bytes:
    """`error_doc` as JSON bytes."""
    return orjson.dumps(error_doc(style, status, message, type_, param, code))


def step_error(step: Step) -> tuple[str, str | None, str | None, dict[str, str]]:
    """The message, type, code and retry headers of a `Step.status()` error."""
    fallback = (f"HTTP {step.http_status}", "api_error", None)
    message, type_, code = _DEFAULT_ERRORS.get(step.http_status, fallback)
    if step.code_str == "insufficient_quota":
        message, type_ = _QUOTA_MESSAGE, "insufficient_quota"
    extra = {}
    if step.retry_after is not None:
        extra["retry-after"] = str(step.retry_after)
    if step.retry_after_ms is not None:
        extra["retry-after-ms"] = str(step.retry_after_ms)
    return step.message or message, step.type_ or type_, step.code_str or code, extra


def draw_fault(rng: random.Random, cumulative: tuple[float, ...]) -> Step | None:
    """One throw of the fault dice against the cumulative fail, drop, hang and garbage rates."""
    draw = rng.random()
    fail, drop, hang, garbage = cumulative
    if draw < fail:
        return Step.status(rng.choice((500, 502, 503)))
    if draw < drop:
        return Step.drop()
    if draw < hang:
        return Step.hang()
    if draw < garbage:
        return Step.garbage()
    return None


async def trickle(
    request: web.Request, body: bytes, interval: float, idle: Callable[[float], Awaitable[bool]]
) -> web.StreamResponse:
    """Send 200 headers, then `body` one byte every `interval`, then spaces, until `idle` says stop."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await response.prepare(request)
    source = itertools.chain(body, itertools.repeat(ord(" ")))
    try:
        while True:
            await response.write(bytes((next(source),)))
            if await idle(interval):
                break
    except ConnectionError:
        return response
    if request.transport is not None:
        request.transport.close()
    return response
