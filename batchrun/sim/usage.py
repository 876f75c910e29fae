"""What an answer's usage reports beyond its token counts: cached prompt tokens, reasoning
tokens, and its cost in USD at the simulator's prices (`usage.cost`, as OpenRouter reports it).

Cached tokens, as OpenAI counts them: a prompt of at least `cache_min_tokens` reuses the
longest prefix that the same key had answered before, in whole blocks of 128 tokens. The
simulator cuts each prompt's text (each message's framing and content, in order) into blocks of
128 tokens' worth of bytes (4 bytes a token, over `tokenizer_ratio`), and remembers a chained
hash of every block boundary of every prompt it answered for that key; a prompt's cached tokens
are 128 x the number of its leading blocks seen before, at most its prompt tokens (a prompt sent
again is cached whole, in whole blocks). `cached_share` instead reports that share of every
prompt (rounded down), for tests that want a fixed figure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from batchrun.protocol.tokens import BYTES_PER_TOKEN, MESSAGE_OVERHEAD
from batchrun.settings.prices import Price, price_for
from batchrun.sim.config import SimConfig
from batchrun.sim.validate import ChatRequest, text_of

CACHE_BLOCK = 128  # OpenAI's prompt cache hits in steps of 128 tokens
CACHED_INPUT_DISCOUNT = 0.5  # a cached input token costs half an input token (OpenAI's rate)
_PREFIXES_KEPT = 1_000_000  # block hashes one key remembers; then it starts over, as caches evict


# A model with no price anywhere costs what sim-1 does.
DEFAULT_PRICE = Price(1.00, 2.00, 1.00 * CACHED_INPUT_DISCOUNT)


def price_of(config: SimConfig, model: str) -> Price:
    """The simulator's price of `model`: `config.prices` (input, cached input, output per million),
    else batchrun's built-in table (cached input at half the input price unless it says), else
    sim-1's."""
    given = (config.prices or {}).get(model)
    if given is not None:
        return Price(given[0], given[2], given[1])
    known = price_for(model)
    if known is None:
        return DEFAULT_PRICE
    if known.cached_input_per_million is None:
        return replace(known, cached_input_per_million=known.input_per_million * CACHED_INPUT_DISCOUNT)
    return known


def reasoning_split(config: SimConfig, model: str, max_tokens: int | None) -> tuple[float, int | None]:
    """A model's reasoning share, and the cap of its visible answer: max_tokens caps the visible
    answer and the reasoning together, as OpenAI's max_completion_tokens does."""
    if model not in config.reasoning_models:
        return 0.0, max_tokens
    share = config.reasoning_share
    if max_tokens is None:
        return share, None
    return share, max(1, int(max_tokens * (1 - share)))


def reasoning_tokens(share: float, visible: int) -> int:
    """Reasoning tokens beside `visible` answer tokens: `share` of the whole, rounded down."""
    return int(visible * share / (1 - share)) if share else 0


@dataclass(frozen=True, slots=True)
class Billed:
    """What one answer is billed: completion tokens (reasoning included), cached and reasoning
    tokens, and its USD cost at the simulator's prices."""

    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0


class PromptCache:
    """The prompt prefixes one key has had answered, as hashes at 128-token block boundaries."""

    def __init__(self, tokenizer_ratio: float, min_tokens: int) -> None:
        self._block_bytes = max(1, round(CACHE_BLOCK * BYTES_PER_TOKEN / tokenizer_ratio))
        self._min_tokens = min_tokens
        self._seen: set[bytes] = set()

    def _boundaries(self, messages: list[dict[str, Any]]) -> list[bytes]:
        # Each message: its framing as 4 tokens' worth of bytes (a NUL, its role, NULs), then its
        # text; so a prompt's bytes are about 4 x its tokens and a repeated prompt is cached whole.
        frame = MESSAGE_OVERHEAD * BYTES_PER_TOKEN
        text = b"".join(
            f"\x00{m.get('role')}".encode().ljust(frame, b"\x00")
            + text_of(m.get("content")).encode("utf-8", "surrogatepass")
            for m in messages
        )
        size, digest, out = self._block_bytes, b"", []
        # Chained, so each block boundary costs one hash of one block, not of the whole prefix.
        for start in range(0, len(text) - size + 1, size):
            digest = hashlib.blake2b(digest + text[start:start + size], digest_size=16).digest()
            out.append(digest)
        return out

    def lookup(self, req: ChatRequest) -> int:
        """The cached tokens of `req`: its leading blocks seen before, x 128, at most its prompt."""
        if req.prompt_tokens < max(self._min_tokens, CACHE_BLOCK):
            return 0
        hits = 0
        for digest in self._boundaries(req.messages):
            if digest not in self._seen:
                break
            hits += 1
        return min(hits * CACHE_BLOCK, req.prompt_tokens // CACHE_BLOCK * CACHE_BLOCK)

    def remember(self, req: ChatRequest) -> None:
        """Keep `req`'s prefixes (after its answer: a request in flight is not cached yet)."""
        if req.prompt_tokens < max(self._min_tokens, CACHE_BLOCK):
            return
        boundaries = self._boundaries(req.messages)
        if len(self._seen) + len(boundaries) > _PREFIXES_KEPT:
            self._seen.clear()
        self._seen.update(boundaries)


def cached_tokens(config: SimConfig, cache: PromptCache | None, req: ChatRequest) -> int | None:
    """The cached tokens an answer reports (None: the simulator reports no prompt details)."""
    if config.cached_share is not None:
        return int(req.prompt_tokens * config.cached_share)
    if config.prompt_cache and cache is not None:
        return cache.lookup(req)
    return None


def settle(config: SimConfig, price: Price, req: ChatRequest, doc: dict[str, Any], visible: int,
           share: float, cached: int | None) -> Billed:
    """Complete the usage of answer `doc` (whose visible answer has `visible` tokens): reasoning
    tokens inside completion_tokens, the details reported, usage.cost when configured; returns
    what it bills at `price` (`price_of` the request's model)."""
    reasoning = reasoning_tokens(share, visible)
    completion = visible + reasoning
    usage = doc["usage"]
    usage["completion_tokens"] = completion
    usage["total_tokens"] = req.prompt_tokens + completion
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    if config.reasoning_models:  # a provider with reasoning models reports 0 for the others
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    cost = price.cost(req.prompt_tokens, completion, cached or 0)
    if config.report_cost:
        usage["cost"] = cost
    return Billed(completion, cached or 0, reasoning, cost)
