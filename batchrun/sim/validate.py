"""Request validation: a chat-completions body checked as strictly as OpenAI checks it."""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchrun.protocol.render import ROLES
from batchrun.protocol.tokens import count_prompt_tokens

CONTEXT_LIMIT = 128_000
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


class Invalid(Exception):
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
class ChatRequest:
    """A valid chat request: what the answer and the limits need from it."""

    model: str
    messages: list[dict[str, Any]]
    user_text: str
    max_tokens: int | None
    prompt_tokens: int
    body: dict[str, Any]


def text_of(content: Any) -> str:
    """The text of a message's content: the string, or its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message: what an answer is derived from and rules match."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def is_number(value: Any) -> bool:
    """A JSON number (a bool is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(body: dict[str, Any], name: str, low: float, high: float, open_low: bool = False) -> None:
    value = body.get(name)
    if value is None:
        return
    if not is_number(value):
        raise Invalid(f"Invalid type for '{name}': expected a number.", name, "invalid_type")
    if value < low or value > high or (open_low and value == low):
        bound = f"> {low}" if open_low else f">= {low}"
        raise Invalid(
            f"Invalid '{name}': must be {bound} and <= {high}, got {value}.", name, "invalid_value"
        )


def _check_messages(messages: Any) -> tuple[int, int]:
    """Validate `messages`; returns (data-URL images, http images)."""
    if not isinstance(messages, list) or not messages:
        raise Invalid("'messages' must be a non-empty array.", "messages")
    data_urls = urls = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise Invalid(f"Invalid type for '{where}': expected an object.", where)
        role = message.get("role")
        if role not in ROLES:
            raise Invalid(
                f"Invalid value for '{where}.role': expected one of 'system', 'user', "
                f"'assistant', 'tool', got {role!r}.",
                f"{where}.role",
            )
        content = message.get("content")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise Invalid(f"Missing '{where}.tool_call_id'.", f"{where}.tool_call_id")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise Invalid(f"Missing required parameter: '{where}.content'.", f"{where}.content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            raise Invalid(
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
                raise Invalid(
                    f"Invalid content part '{at}': expected a text part"
                    f"{' or an image_url part' if role == 'user' else ''}.",
                    at,
                )
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str):
                raise Invalid(f"Missing '{at}.image_url.url'.", f"{at}.image_url.url")
            if url.startswith(("http://", "https://")):
                urls += 1
                continue
            match = _DATA_URL.match(url)
            try:
                binascii.a2b_base64(match.group(1) if match else "!", strict_mode=True)
            except binascii.Error:
                raise Invalid(
                    f"Invalid image URL in '{at}.image_url.url': expected http(s) or "
                    "data:image/...;base64,...",
                    f"{at}.image_url.url",
                    "invalid_image_url",
                ) from None
            data_urls += 1
    return data_urls, urls


def _check_tools(body: dict[str, Any]) -> None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is not None:
        if not isinstance(tools, list) or not tools:
            raise Invalid("'tools' must be a non-empty array.", "tools")
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if (
                not isinstance(fn, dict)
                or tool.get("type") != "function"
                or not _TOOL_NAME.match(str(fn.get("name", "")))
                or not isinstance(fn.get("parameters", {}), dict)
            ):
                raise Invalid(
                    f"Invalid 'tools[{i}]': expected {{type: function, function: {{name, parameters}}}}}}.",
                    f"tools[{i}]",
                )
    if choice is None:
        return
    if not tools:
        raise Invalid("'tool_choice' is only allowed when 'tools' are specified.", "tool_choice")
    names = [t["function"]["name"] for t in tools]
    fn = choice.get("function") if isinstance(choice, dict) else None
    named = fn.get("name") if isinstance(fn, dict) else None
    if choice not in ("none", "auto", "required") and named not in names:
        raise Invalid("Invalid 'tool_choice': expected none, auto, required or a named tool.", "tool_choice")


def _check_response_format(fmt: Any) -> None:
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise Invalid(
            "Invalid 'response_format.type': expected text, json_object or json_schema.",
            "response_format.type",
        )
    spec = fmt.get("json_schema")
    if kind == "json_schema" and (
        not isinstance(spec, dict)
        or not isinstance(spec.get("name"), str)
        or not isinstance(spec.get("schema", {}), dict)
    ):
        raise Invalid(
            "Invalid 'response_format.json_schema': expected {name, schema}.", "response_format.json_schema"
        )


def provider_tokens(ours: int, ratio: float) -> int:
    """Our prompt count as a provider with another tokenizer counts it (at least 1 token)."""
    return ours if ratio == 1.0 else max(1, round(ours * ratio))


def _check_options(body: dict[str, Any]) -> int | None:
    """Sampling, length and choice options in range; returns the answer's cap (max_tokens)."""
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
            raise Invalid(
                f"Invalid '{name}': expected an integer >= 1, got {value!r}.", name, "invalid_value"
            )
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise Invalid("Invalid 'stop': expected a string or an array of at most 4 strings.", "stop")
    if body.get("n") is not None and body["n"] != 1:
        raise Invalid("Invalid 'n': the simulator returns exactly one choice; n must be 1.", "n")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise Invalid("Invalid type for 'stream': expected a boolean.", "stream")
    if body.get("stream"):
        raise Invalid("streaming not supported by the simulator", "stream")
    if body.get("seed") is not None and not isinstance(body["seed"], int):
        raise Invalid("Invalid type for 'seed': expected an integer.", "seed")
    return max_tokens


def parse(
    body: Any,
    models: tuple[str, ...] | None,
    tokenizer_ratio: float = 1.0,
    context_lengths: Mapping[str, int] | None = None,
) -> tuple[ChatRequest, int, int]:
    """Validate a request body like a strict provider; returns it with its image counts.

    Prompt tokens are counted as the provider's tokenizer would: `tokenizer_ratio` x our count.
    A model's context (`context_lengths`, else CONTEXT_LIMIT) must hold the prompt and max_tokens.
    """
    if not isinstance(body, dict):
        raise Invalid("The request body must be a JSON object.")
    for name in body:
        if name not in _KNOWN_PARAMS:
            raise Invalid(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
    model = body.get("model", "sim-1")  # LLMost falls back to the account's default model
    if not isinstance(model, str) or not model:
        raise Invalid("Invalid 'model': expected a non-empty string.", "model")
    images = _check_messages(body.get("messages"))
    max_tokens = _check_options(body)
    _check_response_format(body.get("response_format"))
    _check_tools(body)
    if models is not None and model not in models:
        raise Invalid(
            f"The model `{model}` does not exist or you do not have access to it.",
            "model",
            "model_not_found",
            404,
        )
    messages = body["messages"]
    prompt_tokens = provider_tokens(count_prompt_tokens(messages), tokenizer_ratio)
    _check_context((context_lengths or {}).get(model, CONTEXT_LIMIT), prompt_tokens, max_tokens)
    request = ChatRequest(model, messages, last_user_text(messages), max_tokens, prompt_tokens, body)
    return request, images[0], images[1]


def _check_context(limit: int, prompt_tokens: int, max_tokens: int | None) -> None:
    """OpenAI's 400 when the prompt and the answer it may get do not fit the model's context."""
    if prompt_tokens + (max_tokens or 0) <= limit:
        return
    if max_tokens is None:
        message = (f"This model's maximum context length is {limit} tokens. However, your "
                   f"messages resulted in {prompt_tokens} tokens. Please reduce the length of "
                   "the messages.")
    else:
        message = (f"This model's maximum context length is {limit} tokens. However, you "
                   f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                   f"messages, {max_tokens} in the completion). Please reduce the length of the "
                   "messages or completion.")
    raise Invalid(message, "messages", "context_length_exceeded")
