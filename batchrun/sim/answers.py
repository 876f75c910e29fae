"""The simulator's answers: deterministic per prompt, so tests can predict every one of them."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
import time
from typing import Any

from batchrun.sim.validate import ChatRequest, is_number, last_user_text, text_of

_WORD = re.compile(r"\S+")
_WORDS = tuple(
    "amber anchor apple arrow autumn bright cable candle canyon cedar circle cloud copper coral"
    " crystal delta desert dream eagle echo ember field forest gentle glacier harbor hollow island"
    " jade lantern lemon marble meadow mirror morning nectar ocean orbit pebble pepper quiet"
    " river saffron shadow silver summer thunder timber velvet willow winter yellow zephyr".split()
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def answer_text(messages: list[dict[str, Any]]) -> str:
    """The deterministic answer: a marker from the last user text's sha256, then 4-39 words."""
    digest = _digest(last_user_text(messages))
    seed = digest
    if messages and messages[-1].get("role") == "assistant":
        # A prefill changes the continuation but not the marker that ties it to its prompt.
        seed += "\x00" + text_of(messages[-1].get("content"))
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


def _bound(schema: dict[str, Any], key: str, default: int) -> int:
    # Schemas come from users: a malformed keyword is ignored rather than crashing the answer.
    value = schema.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _fake_number(schema: dict[str, Any], rng: random.Random, integer: bool) -> int | float:
    low, high, ex_low, ex_high = (
        schema.get(k) if is_number(schema.get(k)) else None
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


def _structured(messages: list[dict[str, Any]], response_format: dict[str, Any] | None) -> str | None:
    """The content for a JSON response_format, or None for plain text."""
    kind = (response_format or {}).get("type")
    if kind not in ("json_object", "json_schema"):
        return None
    text = last_user_text(messages)
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
    messages: list[dict[str, Any]],
    max_tokens: int | None = None,
    *,
    response_format: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """(content, finish_reason) exactly as the simulator answers these messages."""
    content = _structured(messages, response_format) or answer_text(messages)
    if max_tokens is not None:
        words = list(itertools.islice(_WORD.finditer(content), max_tokens + 1))
        if len(words) > max_tokens:
            return content[: words[max_tokens - 1].end()], "length"
    return content, "stop"


def _tool_call(
    messages: list[dict[str, Any]], tools: list[Any] | None, tool_choice: Any
) -> dict[str, Any] | None:
    """The tool call the simulator makes, or None when it answers in text."""
    if not tools or tool_choice == "none":
        return None
    tool = tools[0]["function"]
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        tool = next(t["function"] for t in tools if t["function"]["name"] == name)
    elif tool_choice != "required" and "CALL_TOOL" not in last_user_text(messages):
        return None
    digest = _digest(last_user_text(messages) + "\x00" + tool["name"])
    schema = tool.get("parameters") or {"type": "object", "properties": {}}
    args = _fake(schema, random.Random(digest), f"[{digest[:12]}]", schema)
    return {
        "id": f"call_{digest[:24]}",
        "type": "function",
        "function": {"name": tool["name"], "arguments": json.dumps(args, ensure_ascii=False)},
    }



def completion(req: ChatRequest, response_id: str, reason: str | None = None) -> tuple[dict[str, Any], int]:
    """The chat.completion document for `req` and its completion tokens (not yet billed)."""
    body = req.body
    call = _tool_call(req.messages, body.get("tools"), body.get("tool_choice"))
    message: dict[str, Any] = {"role": "assistant", "content": None}
    tokens = 0
    if call is not None:
        message["tool_calls"] = [call]
        finish = "tool_calls"
        tokens = len(call["function"]["arguments"].split())  # arguments are the output
    else:
        content, finish = expected_answer(
            req.messages, req.max_tokens, response_format=body.get("response_format")
        )
        if reason == "error":  # the provider failed mid-answer: half an answer
            content = " ".join(content.split()[: max(1, len(content.split()) // 2)])
        if reason != "content_filter":
            message["content"] = content
            tokens = len(content.split())
    doc = {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": "fp_sim",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason or finish}],
        "usage": {
            "prompt_tokens": req.prompt_tokens,
            "completion_tokens": tokens,
            "total_tokens": req.prompt_tokens + tokens,
        },
    }
    return doc, tokens
