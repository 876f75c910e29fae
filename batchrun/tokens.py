"""Token estimates: a cheap, deterministic, slightly generous count used for TPM budgeting and plans."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# OpenAI counts ~4 bytes of English per token; every message costs a few tokens of framing.
BYTES_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3
IMAGE_TOKENS = 765  # a "high" detail 512x512 tile set, as OpenAI prices it


def count_text_tokens(text: str) -> int:
    """Tokens in one piece of text (at least 1 for non-empty text)."""
    if not text:
        return 0
    if text.isascii():
        return (len(text) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN
    # Tokenizers spend far more on non-Latin scripts than 4 bytes a token: a CJK character (3
    # bytes) is about one token. Counting its bytes at 3 a token keeps budgets and TPM pacing on
    # the safe side for every script (Cyrillic and Greek are over-counted, never under-counted).
    ascii_chars = len(text.encode("ascii", "ignore"))
    other_bytes = len(text.encode("utf-8", "surrogatepass")) - ascii_chars
    return -(-(3 * ascii_chars + BYTES_PER_TOKEN * other_bytes) // (3 * BYTES_PER_TOKEN))


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text_tokens(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                if part.get("type") == "image_url":
                    total += IMAGE_TOKENS
                else:
                    total += count_text_tokens(str(part.get("text", "")))
            else:
                total += count_text_tokens(str(part))
        return total
    return count_text_tokens(str(content))


def count_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat: content plus per-message framing, as the simulator bills them."""
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
        if message.get("tool_calls"):
            total += count_text_tokens(str(message["tool_calls"]))
    return total
