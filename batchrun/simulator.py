"""A strict, deterministic OpenAI-compatible chat-completions server on loopback, scriptable per test.

Order of decisions for one POST: body size (413), key (401), JSON and parameters (400), model (404),
context length (400), then a scripted step (rule, else FIFO script). Fault steps answer at once and
bypass the limits; answering steps (ok, delay, finish) and unscripted requests then meet the limits:
RPM (every arrival counts, even rejected ones), concurrency, TPM (prompt + max_tokens charged at
arrival, not refunded; a request refused with a 429 is not charged to TPM). Random faults apply only
to unscripted requests that passed the limits.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import itertools
import json
import math
import random
import re
import signal
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson
from aiohttp import web

from batchrun.tokens import count_prompt_tokens

CONTEXT_LIMIT = 128_000
ARRIVALS_KEPT = 1_000_000  # arrival times kept for rate analysis
DEFAULT_MAX_TOKENS = 1024  # TPM charge when a request sets no max_tokens
DEFAULT_MODELS = ("sim-1", "sim-large")
# "developer" is OpenAI's newer name for the system role.
ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions", "/api/v1/chat/completions")
_MODEL_PATHS = ("/v1/models", "/models", "/api/v1/models")
# Parameters OpenAI-compatible servers accept; anything else is a typo worth a 400, as on OpenAI.
_KNOWN_PARAMS = frozenset(
    "model messages temperature top_p n stream stream_options stop max_tokens max_completion_tokens"
    " presence_penalty frequency_penalty logit_bias logprobs top_logprobs user seed response_format"
    " tools tool_choice parallel_tool_calls metadata store service_tier reasoning_effort modalities"
    " prediction audio functions function_call top_k min_p repetition_penalty provider transforms"
    " models route reasoning usage prompt_cache_key safety_identifier verbosity".split()
)
_DATA_URL = re.compile(r"data:image/(?:png|jpeg|jpg|gif|webp);base64,(.+)\Z", re.DOTALL)
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_WORD = re.compile(r"\S+")
_WORDS = tuple(
    "amber anchor apple arrow autumn bright cable candle canyon cedar circle cloud copper coral"
    " crystal delta desert dream eagle echo ember field forest gentle glacier harbor hollow island"
    " jade lantern lemon marble meadow mirror morning nectar ocean orbit pebble pepper quiet"
    " river saffron shadow silver summer thunder timber velvet willow winter yellow zephyr".split()
)
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
_HTML_ERROR = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
_QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


@dataclass(frozen=True)
class SimConfig:
    """How the simulator limits, delays and fails; rpm/tpm are per minute, enforced per `window_s`."""

    rpm: int | None = None
    tpm: int | None = None
    window_s: float = 60.0  # allowance in any window = rpm * window_s / 60 (likewise tpm)
    max_concurrency: int | None = None
    latency: float = 0.0
    latency_jitter: float = 0.0
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    hang_rate: float = 0.0
    garbage_rate: float = 0.0
    spurious_429_rate: float = 0.0
    hang_s: float = 3600.0
    api_key: str | None = None
    error_style: str = "openai"
    models: tuple[str, ...] | None = None
    rate_limit_headers: bool = True
    max_body_bytes: int = 10_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.error_style not in ("openai", "llmost"):
            raise ValueError(f"error_style must be 'openai' or 'llmost', not {self.error_style!r}")
        rates = self.fault_rates
        if any(r < 0 for r in rates) or sum(rates) > 1:
            raise ValueError("fault rates must be >= 0 and sum to at most 1")
        if self.window_s <= 0 or self.latency < 0 or self.latency_jitter < 0:
            raise ValueError("window_s must be > 0; latency and jitter >= 0")

    @property
    def fault_rates(self) -> tuple[float, float, float, float, float]:
        """The fail, drop, hang, garbage and spurious-429 rates, in the order they are drawn."""
        return (self.fail_rate, self.drop_rate, self.hang_rate, self.garbage_rate, self.spurious_429_rate)


@dataclass(frozen=True)
class Step:
    """What the simulator does with one request; build with the classmethods."""

    kind: str
    http_status: int = 200
    message: str | None = None
    code_str: str | None = None
    type_: str | None = None
    retry_after: float | str | None = None
    retry_after_ms: int | None = None
    seconds: float | None = None
    reason: str | None = None
    payload: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    size: int = 0

    @classmethod
    def ok(cls) -> Step:
        """Answer normally (no random fault)."""
        return cls("ok")

    @classmethod
    def status(
        cls,
        code: int,
        message: str | None = None,
        *,
        code_str: str | None = None,
        type_: str | None = None,
        retry_after: float | str | None = None,
        retry_after_ms: int | None = None,
    ) -> Step:
        """An error response with this HTTP status and a body in the configured style."""
        return cls("status", code, message, code_str, type_, retry_after, retry_after_ms)

    @classmethod
    def drop(cls) -> Step:
        """Close the connection without writing a response."""
        return cls("drop")

    @classmethod
    def hang(cls, seconds: float | None = None) -> Step:
        """Never answer: wait for the client to give up (at most `seconds`, then drop)."""
        return cls("hang", seconds=seconds)

    @classmethod
    def garbage(cls) -> Step:
        """A 200 whose body is truncated JSON or not JSON at all."""
        return cls("garbage")

    @classmethod
    def delay(cls, seconds: float) -> Step:
        """Answer normally after `seconds` (instead of the configured latency)."""
        return cls("delay", seconds=seconds)

    @classmethod
    def finish(cls, reason: str) -> Step:
        """Answer with this finish_reason ("content_filter": content null; "error": partial)."""
        return cls("finish", reason=reason)

    @classmethod
    def body(cls, raw: bytes | str, status: int = 200, headers: dict[str, str] | None = None) -> Step:
        """Send exactly these bytes with this status (content type JSON unless overridden)."""
        data = raw.encode() if isinstance(raw, str) else raw
        return cls("body", status, payload=data, headers=tuple((headers or {}).items()))

    @classmethod
    def huge(cls, nbytes: int) -> Step:
        """A valid 200 answer padded with trailing spaces in its content to `nbytes` bytes."""
        return cls("huge", size=nbytes)

    @classmethod
    def trickle(cls, interval_s: float = 0.5) -> Step:
        """Send 200 headers, then one body byte every `interval_s`, forever."""
        return cls("trickle", seconds=interval_s)


_ANSWERING = frozenset({"ok", "delay", "finish"})


@dataclass
class SimStats:
    """Counters read by tests; `billed_*` sum the usage of 200 answers actually sent."""

    requests: int = 0
    ok: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0
    dropped: int = 0
    billed_prompt_tokens: int = 0
    billed_completion_tokens: int = 0
    billed_total_tokens: int = 0
    billed_by_prompt: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    images_data_url: int = 0
    images_url: int = 0
    # Bounded so a long `batchrun simulate` session does not grow without end.
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=ARRIVALS_KEPT))


def format_duration(seconds: float) -> str:
    """A duration in Go's format as OpenAI sends it: `12ms`, `1s`, `1m30.5s`, `6m0s`, `1h0m0s`."""
    ms = round(seconds * 1000) if seconds > 0 else 0
    if seconds > 0 and ms == 0:
        ms = 1  # never tell a client "0s" while something is still pending
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, frac = divmod(rest, 1000)
    sec = f"{secs}.{frac:03d}".rstrip("0") if frac else str(secs)
    if hours:
        return f"{hours}h{minutes}m{sec}s"
    return f"{minutes}m{sec}s" if minutes else f"{sec}s"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def _last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def answer_text(messages: list[dict]) -> str:
    """The deterministic answer: a marker from the last user text's sha256, then 4-39 words."""
    digest = _digest(_last_user_text(messages))
    seed = digest
    if messages and messages[-1].get("role") == "assistant":
        # A prefill changes the continuation but not the marker that ties it to its prompt.
        seed += "\x00" + _text_of(messages[-1].get("content"))
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 39))]
    words[0] = words[0].capitalize()
    return f"[{digest[:12]}] " + " ".join(words) + "."


def _fake(schema: Any, rng: random.Random, marker: str, root: Any, depth: int = 0) -> Any:
    """A value valid against a (subset of) JSON schema, drawn from `rng`."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/"):
        target = root
        for part in schema["$ref"][2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _fake(target, rng, marker, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            if key == "allOf":
                merged: dict[str, Any] = {}
                for option in options:
                    merged.update(option if isinstance(option, dict) else {})
                return _fake(merged, rng, marker, root, depth + 1)
            usable = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            return _fake((usable or options)[0], rng, marker, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        out = {k: _fake(v, rng, marker, root, depth + 1) for k, v in props.items()}
        required = schema.get("required")
        for key in required if isinstance(required, list) else ():
            out.setdefault(str(key), marker)
        return out
    if kind == "array":
        low = min(_bound(schema, "minItems", 1), 100)  # caps keep a hostile schema from eating RAM
        high = max(low, min(_bound(schema, "maxItems", low + 2), low + 2))
        items = schema.get("items", {})
        return [_fake(items, rng, marker, root, depth + 1) for _ in range(rng.randint(low, high))]
    if kind in ("integer", "number"):
        return _fake_number(schema, rng, kind == "integer")
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    word = rng.choice(_WORDS)
    text = {
        "date": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "date-time": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z",
        "email": f"{word}@example.com",
        "uri": f"https://example.com/{word}",
    }.get(str(schema.get("format")))
    if text is None:
        text = marker + " " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
    text = text[: _bound(schema, "maxLength", len(text))]
    return text.ljust(min(_bound(schema, "minLength", 0), 100_000), "x")


def _bound(schema: dict, key: str, default: int) -> int:
    # Schemas come from users: a malformed keyword is ignored rather than crashing the answer.
    value = schema.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _fake_number(schema: dict, rng: random.Random, integer: bool) -> int | float:
    low, high, ex_low, ex_high = (
        schema.get(k) if _is_number(schema.get(k)) else None
        for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    )
    if integer:
        lo = math.ceil(low) if low is not None else None
        hi = math.floor(high) if high is not None else None
        if ex_low is not None:
            lo = max(lo if lo is not None else -(10**18), math.floor(ex_low) + 1)
        if ex_high is not None:
            hi = min(hi if hi is not None else 10**18, math.ceil(ex_high) - 1)
        lo = lo if lo is not None else (min(0, hi - 100) if hi is not None else 0)
        hi = hi if hi is not None else lo + 100
        return rng.randint(lo, max(lo, hi))
    lo = float(low if low is not None else ex_low if ex_low is not None else 0.0)
    hi = float(high if high is not None else ex_high if ex_high is not None else lo + 100.0)
    if hi <= lo:
        return lo
    value = lo + (hi - lo) * (0.1 + 0.8 * rng.random())  # strictly inside, so exclusive bounds hold
    rounded = round(value, 2)
    return rounded if lo < rounded < hi else value


def _structured(messages: list[dict], response_format: dict | None) -> str | None:
    """The content for a JSON response_format, or None for plain text."""
    kind = (response_format or {}).get("type")
    if kind not in ("json_object", "json_schema"):
        return None
    text = _last_user_text(messages)
    answer = answer_text(messages)
    if "BADJSON" in text:
        return f"Sure! Here is the JSON you asked for: {{answer: {answer}"
    if kind == "json_object":
        doc: Any = {"answer": answer, "words": len(answer.split())}
    else:
        schema = (response_format or {}).get("json_schema", {}).get("schema")
        if not isinstance(schema, dict):
            schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
        doc = _fake(schema, random.Random(_digest(text)), answer.split()[0], schema)
    # Stdlib json for its ", " and ": " separators: completion tokens are whitespace words.
    return json.dumps(doc, ensure_ascii=False)


def expected_answer(
    messages: list[dict], max_tokens: int | None = None, *, response_format: dict | None = None
) -> tuple[str, str]:
    """(content, finish_reason) exactly as the simulator answers these messages."""
    content = _structured(messages, response_format) or answer_text(messages)
    if max_tokens is not None:
        words = list(itertools.islice(_WORD.finditer(content), max_tokens + 1))
        if len(words) > max_tokens:
            return content[: words[max_tokens - 1].end()], "length"
    return content, "stop"


def _tool_call(messages: list[dict], tools: list | None, tool_choice: Any) -> dict | None:
    """The tool call the simulator makes, or None when it answers in text."""
    if not tools or tool_choice == "none":
        return None
    tool = tools[0]["function"]
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        tool = next(t["function"] for t in tools if t["function"]["name"] == name)
    elif tool_choice != "required" and "CALL_TOOL" not in _last_user_text(messages):
        return None
    digest = _digest(_last_user_text(messages) + "\x00" + tool["name"])
    schema = tool.get("parameters") or {"type": "object", "properties": {}}
    args = _fake(schema, random.Random(digest), f"[{digest[:12]}]", schema)
    return {
        "id": f"call_{digest[:24]}",
        "type": "function",
        "function": {"name": tool["name"], "arguments": json.dumps(args, ensure_ascii=False)},
    }


class _Invalid(Exception):
    """A request the simulator refuses before doing anything else."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type_ = (message, param, code, status, type_)


@dataclass(frozen=True, slots=True)
class _Request:
    model: str
    messages: list[dict]
    user_text: str
    max_tokens: int | None
    prompt_tokens: int
    body: dict


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(body: dict, name: str, low: float, high: float, open_low: bool = False) -> None:
    value = body.get(name)
    if value is None:
        return
    if not _is_number(value):
        raise _Invalid(f"Invalid type for '{name}': expected a number.", name, "invalid_type")
    if value < low or value > high or (open_low and value == low):
        bound = f"> {low}" if open_low else f">= {low}"
        raise _Invalid(
            f"Invalid '{name}': must be {bound} and <= {high}, got {value}.", name, "invalid_value"
        )


def _check_messages(messages: Any) -> tuple[int, int]:
    """Validate `messages`; returns (data-URL images, http images)."""
    if not isinstance(messages, list) or not messages:
        raise _Invalid("'messages' must be a non-empty array.", "messages")
    data_urls = urls = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _Invalid(f"Invalid type for '{where}': expected an object.", where)
        role = message.get("role")
        if role not in ROLES:
            raise _Invalid(
                f"Invalid value for '{where}.role': expected one of 'system', 'user', "
                f"'assistant', 'tool', got {role!r}.",
                f"{where}.role",
            )
        content = message.get("content")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise _Invalid(f"Missing '{where}.tool_call_id'.", f"{where}.tool_call_id")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise _Invalid(f"Missing required parameter: '{where}.content'.", f"{where}.content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            raise _Invalid(
                f"Invalid type for '{where}.content': expected a string or a non-empty "
                "array of content parts.",
                f"{where}.content",
            )
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind != "image_url" or role != "user":
                raise _Invalid(
                    f"Invalid content part '{at}': expected a text part"
                    f"{' or an image_url part' if role == 'user' else ''}.",
                    at,
                )
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str):
                raise _Invalid(f"Missing '{at}.image_url.url'.", f"{at}.image_url.url")
            if url.startswith(("http://", "https://")):
                urls += 1
                continue
            match = _DATA_URL.match(url)
            try:
                binascii.a2b_base64(match.group(1) if match else "!", strict_mode=True)
            except binascii.Error:
                raise _Invalid(
                    f"Invalid image URL in '{at}.image_url.url': expected http(s) or "
                    "data:image/...;base64,...",
                    f"{at}.image_url.url",
                    "invalid_image_url",
                ) from None
            data_urls += 1
    return data_urls, urls


def _check_tools(body: dict) -> None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is not None:
        if not isinstance(tools, list) or not tools:
            raise _Invalid("'tools' must be a non-empty array.", "tools")
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if (
                not isinstance(fn, dict)
                or tool.get("type") != "function"
                or not _TOOL_NAME.match(str(fn.get("name", "")))
                or not isinstance(fn.get("parameters", {}), dict)
            ):
                raise _Invalid(
                    f"Invalid 'tools[{i}]': expected {{type: function, function: {{name, parameters}}}}}}.",
                    f"tools[{i}]",
                )
    if choice is None:
        return
    if not tools:
        raise _Invalid("'tool_choice' is only allowed when 'tools' are specified.", "tool_choice")
    names = [t["function"]["name"] for t in tools]
    fn = choice.get("function") if isinstance(choice, dict) else None
    named = fn.get("name") if isinstance(fn, dict) else None
    if choice not in ("none", "auto", "required") and named not in names:
        raise _Invalid("Invalid 'tool_choice': expected none, auto, required or a named tool.", "tool_choice")


def _check_response_format(fmt: Any) -> None:
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _Invalid(
            "Invalid 'response_format.type': expected text, json_object or json_schema.",
            "response_format.type",
        )
    spec = fmt.get("json_schema")
    if kind == "json_schema" and (
        not isinstance(spec, dict)
        or not isinstance(spec.get("name"), str)
        or not isinstance(spec.get("schema", {}), dict)
    ):
        raise _Invalid(
            "Invalid 'response_format.json_schema': expected {name, schema}.", "response_format.json_schema"
        )


def _parse(body: Any, models: tuple[str, ...] | None) -> tuple[_Request, int, int]:
    """Validate a request body like a strict provider; returns it with its image counts."""
    if not isinstance(body, dict):
        raise _Invalid("The request body must be a JSON object.")
    for name in body:
        if name not in _KNOWN_PARAMS:
            raise _Invalid(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
    model = body.get("model", "sim-1")  # LLMost falls back to the account's default model
    if not isinstance(model, str) or not model:
        raise _Invalid("Invalid 'model': expected a non-empty string.", "model")
    images = _check_messages(body.get("messages"))
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1, open_low=True)
    _check_range(body, "frequency_penalty", -2, 2)
    _check_range(body, "presence_penalty", -2, 2)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_completion_tokens")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise _Invalid(
                f"Invalid '{name}': expected an integer >= 1, got {value!r}.", name, "invalid_value"
            )
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise _Invalid("Invalid 'stop': expected a string or an array of at most 4 strings.", "stop")
    if body.get("n") is not None and body["n"] != 1:
        raise _Invalid("Invalid 'n': the simulator returns exactly one choice; n must be 1.", "n")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _Invalid("Invalid type for 'stream': expected a boolean.", "stream")
    if body.get("stream"):
        raise _Invalid("streaming not supported by the simulator", "stream")
    if body.get("seed") is not None and not isinstance(body["seed"], int):
        raise _Invalid("Invalid type for 'seed': expected an integer.", "seed")
    _check_response_format(body.get("response_format"))
    _check_tools(body)
    if models is not None and model not in models:
        raise _Invalid(
            f"The model `{model}` does not exist or you do not have access to it.",
            "model",
            "model_not_found",
            404,
        )
    messages = body["messages"]
    prompt_tokens = count_prompt_tokens(messages)
    if prompt_tokens > CONTEXT_LIMIT:
        raise _Invalid(
            f"This model's maximum context length is {CONTEXT_LIMIT} tokens. However, "
            f"your messages resulted in {prompt_tokens} tokens. Please reduce the "
            "length of the messages.",
            "messages",
            "context_length_exceeded",
        )
    request = _Request(model, messages, _last_user_text(messages), max_tokens, prompt_tokens, body)
    return request, images[0], images[1]


class _Window:
    """A sliding window of charges; `limit` is the allowance in any `span` seconds."""

    __slots__ = ("per_minute", "limit", "span", "scale", "used", "_charges", "_names")

    def __init__(self, per_minute: int, span: float, unit: str) -> None:
        self.per_minute = per_minute
        self.limit = max(1.0, per_minute * span / 60.0)  # a window that admits nothing is useless
        self.span = span
        self.scale = 60.0 / span  # window amounts -> per-minute amounts for headers and messages
        self.used = 0
        self._charges: deque[tuple[float, int]] = deque()
        self._names = tuple(f"x-ratelimit-{k}-{unit}" for k in ("limit", "remaining", "reset"))

    def expire(self, now: float) -> None:
        edge, charges = now - self.span, self._charges
        while charges and charges[0][0] <= edge:
            self.used -= charges.popleft()[1]

    def charge(self, now: float, amount: int) -> None:
        self._charges.append((now, amount))
        self.used += amount

    def wait(self, now: float, amount: int) -> float:
        """Seconds until `amount` more fits in the window (0 when it fits now)."""
        self.expire(now)
        excess = self.used + amount - self.limit
        if excess <= 0:
            return 0.0
        for at, charged in self._charges:
            excess -= charged
            if excess <= 0:
                return at + self.span - now
        return self.span

    def headers(self, now: float) -> dict[str, str]:
        # Remaining is scaled to per-minute units so remaining/limit is the true free fraction;
        # reset is when the oldest charge leaves the window.
        self.expire(now)
        reset = self._charges[0][0] + self.span - now if self._charges else 0.0
        remaining = max(0, int((self.limit - self.used) * self.scale))
        names = self._names
        return {names[0]: str(self.per_minute), names[1]: str(remaining), names[2]: format_duration(reset)}


class _Rule:
    __slots__ = ("contains", "steps", "left", "used")

    def __init__(self, contains: str, steps: tuple[Step, ...], times: int | None) -> None:
        self.contains, self.steps, self.left, self.used = contains, steps, times, 0


def _retry_headers(seconds: float) -> dict[str, str]:
    return {
        "retry-after-ms": str(max(1, math.ceil(seconds * 1000))),
        "retry-after": str(max(1, math.ceil(seconds))),
    }


class Simulator:
    """An aiohttp server answering chat completions per its SimConfig, script and rules."""

    def __init__(self, config: SimConfig = SimConfig()) -> None:
        self.config = config
        self.stats = SimStats()
        self.last_bodies: deque[dict] = deque(maxlen=256)  # the latest valid request bodies, parsed
        self.base_url = ""
        self._script: deque[Step] = deque()
        self._rules: list[_Rule] = []
        self._rng = random.Random(config.seed)
        self._ids = itertools.count(1)
        self._auth = f"Bearer {config.api_key}" if config.api_key is not None else None
        self._rpm = _Window(config.rpm, config.window_s, "requests") if config.rpm else None
        self._tpm = _Window(config.tpm, config.window_s, "tokens") if config.tpm else None
        self._limit_headers = config.rate_limit_headers and bool(self._rpm or self._tpm)
        self._fault_rates = tuple(itertools.accumulate(config.fault_rates))  # cumulative
        self._garbage = itertools.cycle((True, False))
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = any free port); returns the base URL ending in /v1."""
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=self.config.max_body_bytes)
        for path in _CHAT_PATHS:
            app.router.add_post(path, self._chat)
        for path in _MODEL_PATHS:
            app.router.add_get(path, self._models)
        app.router.add_get("/_stats", self._get_stats)
        app.router.add_post("/_reset", self._reset)
        # handler_cancellation: a hang or trickle ends as soon as its client disconnects.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/v1"
        return self.base_url

    async def stop(self) -> None:
        """End hangs and trickles, close connections and stop listening."""
        if self._runner is None:
            return
        self._closing.set()
        await self._runner.cleanup()
        self._runner = None

    def script(self, *steps: Step) -> None:
        """Queue steps for the next valid chat requests, in arrival order."""
        self._script.extend(steps)

    def rule(self, contains: str, *steps: Step, times: int | None = None) -> None:
        """Steps for requests whose last user text contains `contains` (last step repeats)."""
        if not steps:
            raise ValueError("a rule needs at least one step")
        self._rules.append(_Rule(contains, steps, times))

    def reset_stats(self) -> None:
        """Zero the counters in place (requests still in flight stay counted)."""
        fresh, in_flight = SimStats(), self.stats.in_flight
        for f in fields(SimStats):
            setattr(self.stats, f.name, getattr(fresh, f.name))
        self.stats.in_flight = self.stats.max_in_flight = in_flight

    def _pick(self, text: str) -> Step | None:
        for rule in self._rules:
            if rule.left != 0 and rule.contains in text:
                step = rule.steps[min(rule.used, len(rule.steps) - 1)]
                rule.used += 1
                if rule.left is not None:
                    rule.left -= 1
                return step
        return self._script.popleft() if self._script else None

    def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> web.Response:
        """A JSON response, counted, with rate-limit headers as of now (after any latency)."""
        counts = self.stats.status_counts
        counts[status] = counts.get(status, 0) + 1
        if status == 429:
            self.stats.rate_limited += 1
        headers = {"Content-Type": "application/json"}
        if self._limit_headers:
            now = asyncio.get_running_loop().time()
            if self._rpm:
                headers.update(self._rpm.headers(now))
            if self._tpm:
                headers.update(self._tpm.headers(now))
        if extra:
            headers.update(extra)
        return web.Response(status=status, body=body, headers=headers)

    def _error_body(
        self,
        status: int,
        message: str,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> bytes:
        if self.config.error_style == "llmost":
            error: dict[str, Any] = {
                "code": status,
                "message": message,
                "metadata": {"provider": "simulator"},
            }
        else:
            error = {"message": message, "type": type_, "param": param, "code": code}
        return orjson.dumps({"error": error})

    def _error(
        self,
        status: int,
        message: str,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> web.Response:
        return self._send(status, self._error_body(status, message, type_, param, code), extra)

    def _step_error(self, step: Step) -> web.Response:
        message, type_, code = _DEFAULT_ERRORS.get(
            step.http_status, (f"HTTP {step.http_status}", "api_error", None)
        )
        if step.code_str == "insufficient_quota":
            message, type_ = _QUOTA_MESSAGE, "insufficient_quota"
        extra = {}
        if step.retry_after is not None:
            extra["retry-after"] = str(step.retry_after)
        if step.retry_after_ms is not None:
            extra["retry-after-ms"] = str(step.retry_after_ms)
        return self._error(
            step.http_status, step.message or message, step.type_ or type_, None, step.code_str or code, extra
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        too_large = (request.content_length or 0) > self.config.max_body_bytes
        raw = b""
        if not too_large:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                too_large = True
        now = asyncio.get_running_loop().time()
        stats = self.stats
        stats.requests += 1
        stats.arrivals.append(now)
        rpm_wait = 0.0
        if self._rpm:  # every arrival counts, accepted or not, as on OpenAI
            self._rpm.expire(now)
            self._rpm.charge(now, 1)
            if self._rpm.used > self._rpm.limit:
                rpm_wait = self._rpm.wait(now, 1)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if too_large:
                return self._error(
                    413,
                    f"Request body exceeds {self.config.max_body_bytes} bytes.",
                    "invalid_request_error",
                    None,
                    "request_too_large",
                )
            refusal = self._unauthorized(request)
            if refusal is not None:
                return self._send(401, refusal)
            try:
                req, data_urls, urls = _parse(orjson.loads(raw), self.config.models)
            except orjson.JSONDecodeError:
                return self._error(
                    400,
                    "We could not parse the JSON body of your request.",
                    "invalid_request_error",
                    None,
                    "invalid_json",
                )
            except _Invalid as exc:
                return self._error(exc.status, exc.message, exc.type_, exc.param, exc.code)
            self.last_bodies.append(req.body)
            stats.images_data_url += data_urls
            stats.images_url += urls
            step = self._pick(req.user_text) if self._rules or self._script else None
            if step is not None and step.kind not in _ANSWERING:
                return await self._fault(step, request, req)
            refused = self._limit(req, now, rpm_wait)
            if refused is not None:
                return refused
            if step is None and self._fault_rates[-1] > 0:
                fault = self._random_fault()
                if fault is not None:
                    return await self._fault(fault, request, req)
            pause = step.seconds if step is not None and step.kind == "delay" else self._latency()
            if pause:
                await asyncio.sleep(pause)
            reason = step.reason if step is not None else None
            return self._send(200, self._answer(req, reason))
        finally:
            stats.in_flight -= 1

    def _unauthorized(self, request: web.Request) -> bytes | None:
        """The 401 body when the request lacks the configured key, else None."""
        if self._auth is None or request.headers.get("Authorization") == self._auth:
            return None
        # Never echo the key, right or wrong: it would end up in the client's logs.
        if "Authorization" not in request.headers:
            return self._error_body(
                401,
                "You didn't provide an API key. Provide it in an Authorization header using Bearer auth.",
                "invalid_request_error",
            )
        return self._error_body(
            401, "Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key"
        )

    def _limit(self, req: _Request, now: float, rpm_wait: float) -> web.Response | None:
        """A 429 when RPM, concurrency or TPM refuses this request; else charge TPM."""
        cfg = self.config
        if rpm_wait and self._rpm:
            used = round((self._rpm.used - 1) * self._rpm.scale)
            return self._too_many(
                f"Rate limit reached for requests per min (RPM) on {req.model}: Limit {cfg.rpm}, "
                f"Used {used}, Requested 1. Please try again in {format_duration(rpm_wait)}.",
                "requests",
                rpm_wait,
            )
        if cfg.max_concurrency is not None and self.stats.in_flight > cfg.max_concurrency:
            message = f"Too many concurrent requests: Limit {cfg.max_concurrency}."
            return self._too_many(message, "requests", max(cfg.latency, 0.05))
        if self._tpm:
            cost = req.prompt_tokens + (req.max_tokens or DEFAULT_MAX_TOKENS)
            asked = round(cost * self._tpm.scale)
            if cost > self._tpm.limit:  # no retry hint: waiting cannot make it fit
                return self._too_many(
                    f"Request too large for {req.model} on tokens per min (TPM): Limit {cfg.tpm}, "
                    f"Requested {asked}. The input or output tokens must be reduced in order to "
                    "run successfully.",
                    "tokens",
                )
            wait = self._tpm.wait(now, cost)
            if wait:
                used = round(self._tpm.used * self._tpm.scale)
                return self._too_many(
                    f"Rate limit reached for tokens per min (TPM) on {req.model}: Limit {cfg.tpm}, "
                    f"Used {used}, Requested {asked}. Please try again in {format_duration(wait)}.",
                    "tokens",
                    wait,
                )
            self._tpm.charge(now, cost)
        return None

    def _too_many(self, message: str, type_: str, wait: float | None = None) -> web.Response:
        extra = _retry_headers(wait) if wait is not None else None
        return self._error(429, message, type_, None, "rate_limit_exceeded", extra)

    def _latency(self) -> float:
        cfg = self.config
        if not cfg.latency_jitter:
            return cfg.latency
        return max(0.0, cfg.latency + self._rng.uniform(-cfg.latency_jitter, cfg.latency_jitter))

    def _random_fault(self) -> Step | None:
        draw = self._rng.random()
        fail, drop, hang, garbage, spurious = self._fault_rates
        if draw < fail:
            return Step.status(self._rng.choice((500, 502, 503)))
        if draw < drop:
            return Step.drop()
        if draw < hang:
            return Step.hang()
        if draw < garbage:
            return Step.garbage()
        if draw < spurious:
            return Step.status(429, retry_after_ms=500, retry_after=1)
        return None

    def _completion(self, req: _Request, reason: str | None = None) -> tuple[dict, int]:
        """The 200 document for `req` and its completion tokens (not yet billed)."""
        body = req.body
        call = _tool_call(req.messages, body.get("tools"), body.get("tool_choice"))
        message: dict[str, Any] = {"role": "assistant", "content": None}
        completion = 0
        if call is not None:
            message["tool_calls"] = [call]
            finish = "tool_calls"
            completion = len(call["function"]["arguments"].split())  # arguments are the output
        else:
            content, finish = expected_answer(
                req.messages, req.max_tokens, response_format=body.get("response_format")
            )
            if reason == "error":  # the provider failed mid-answer: half an answer
                content = " ".join(content.split()[: max(1, len(content.split()) // 2)])
            if reason != "content_filter":
                message["content"] = content
                completion = len(content.split())
        doc = {
            "id": f"chatcmpl-sim-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "system_fingerprint": "fp_sim",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reason or finish}
            ],
            "usage": {
                "prompt_tokens": req.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": req.prompt_tokens + completion,
            },
        }
        return doc, completion

    def _bill(self, req: _Request, completion: int) -> None:
        stats = self.stats
        stats.ok += 1
        stats.billed_prompt_tokens += req.prompt_tokens
        stats.billed_completion_tokens += completion
        stats.billed_total_tokens += req.prompt_tokens + completion
        by_prompt = stats.billed_by_prompt
        by_prompt[req.user_text] = by_prompt.get(req.user_text, 0) + 1

    def _answer(self, req: _Request, reason: str | None = None) -> bytes:
        """The billed 200 body for `req`."""
        doc, completion = self._completion(req, reason)
        self._bill(req, completion)
        return orjson.dumps(doc)

    async def _idle(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when the simulator is stopping."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _fault(self, step: Step, request: web.Request, req: _Request) -> web.StreamResponse:
        """Carry out a fault step: anything but a plain answer."""
        kind = step.kind
        if kind == "status":
            return self._step_error(step)
        if kind == "body":
            headers = {"Content-Type": "application/json", **dict(step.headers)}
            counts = self.stats.status_counts
            counts[step.http_status] = counts.get(step.http_status, 0) + 1
            return web.Response(status=step.http_status, body=step.payload, headers=headers)
        if kind == "garbage":  # alternately a cut-off answer and an HTML error page
            body = orjson.dumps(self._completion(req)[0])
            body = body[: len(body) // 2] if next(self._garbage) else _HTML_ERROR
            return self._send(200, body)
        if kind == "huge":
            doc, completion = self._completion(req)
            message = doc["choices"][0]["message"]
            if message["content"] is not None:  # trailing spaces change no word, so no usage
                pad = step.size - len(orjson.dumps(doc))
                message["content"] += " " * max(0, pad)
            self._bill(req, completion)  # a real provider bills what it sent, readable or not
            return self._send(200, orjson.dumps(doc))
        if kind == "hang":
            await self._idle(step.seconds if step.seconds is not None else self.config.hang_s)
        if kind == "trickle":
            body = orjson.dumps(self._completion(req)[0])  # never completes: not billed
            return await self._trickle(request, step.seconds or 0.5, body)
        # drop, or a hang that outlived its bound: close without a response. aiohttp then fails
        # to write the Response we return, and ignores that as a client disconnect.
        self.stats.dropped += 1
        if request.transport is not None:
            request.transport.close()
        return web.Response()

    async def _trickle(self, request: web.Request, interval: float, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        counts = self.stats.status_counts
        counts[200] = counts.get(200, 0) + 1
        await response.prepare(request)
        source = itertools.chain(body, itertools.repeat(ord(" ")))
        try:
            while True:
                await response.write(bytes((next(source),)))
                if await self._idle(interval):
                    break
        except ConnectionError:
            return response
        if request.transport is not None:
            request.transport.close()
        return response

    async def _models(self, request: web.Request) -> web.Response:
        refusal = self._unauthorized(request)
        if refusal is not None:
            return web.Response(status=401, body=refusal, content_type="application/json")
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "batchrun-simulator"}
            for m in self.config.models or DEFAULT_MODELS
        ]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(asdict(self.stats), option=orjson.OPT_NON_STR_KEYS, default=list),
            content_type="application/json",
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.Response(body=b"{}", content_type="application/json")


@asynccontextmanager
async def running(
    config: SimConfig = SimConfig(), host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Simulator]:
    """A started Simulator for the length of the block."""
    simulator = Simulator(config)
    await simulator.start(host, port)
    try:
        yield simulator
    finally:
        await simulator.stop()


class SimulatorHandle:
    """A thread-safe view of a Simulator running on another thread's event loop."""

    def __init__(self, simulator: Simulator, loop: asyncio.AbstractEventLoop) -> None:
        self.simulator = simulator
        self.base_url = simulator.base_url
        self._loop = loop

    @property
    def stats(self) -> SimStats:
        """The live counters (read-only from this thread)."""
        return self.simulator.stats

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        async def call() -> None:
            fn(*args, **kwargs)

        # Wait for it, so a request sent right after script() already sees the script.
        asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def script(self, *steps: Step) -> None:
        """Queue steps for the next valid chat requests, in arrival order."""
        self._call(self.simulator.script, *steps)

    def rule(self, contains: str, *steps: Step, times: int | None = None) -> None:
        """Steps for requests whose last user text contains `contains` (last step repeats)."""
        self._call(self.simulator.rule, contains, *steps, times=times)

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._call(self.simulator.reset_stats)


class SimulatorThread:
    """Runs a Simulator on its own event loop in a daemon thread, as a context manager."""

    def __init__(self, config: SimConfig = SimConfig(), port: int = 0) -> None:
        self._config, self._port = config, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._simulator: Simulator | None = None

    def __enter__(self) -> SimulatorHandle:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="batchrun-simulator", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        self._simulator = Simulator(self._config)
        try:
            asyncio.run_coroutine_threadsafe(self._simulator.start(port=self._port), loop).result(timeout=10)
        except BaseException:
            self._shutdown()
            raise
        return SimulatorHandle(self._simulator, loop)

    def __exit__(self, *exc_info: object) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        loop, thread, simulator = self._loop, self._thread, self._simulator
        if loop is None or thread is None:
            return
        self._loop = self._thread = self._simulator = None

        async def stop() -> None:
            if simulator is not None:
                await simulator.stop()
            # aiohttp may leave connection tasks winding down; finish them before the loop closes.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run a simulator until SIGINT or SIGTERM, announcing its URL on stdout."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with running(config, host, port) as simulator:
            # One flushed line, so a parent process can learn a port chosen by the OS.
            print(f"batchrun simulator listening on {simulator.base_url}", flush=True)
            await stop.wait()

    asyncio.run(main())
