"""Prices per million tokens and the cost of a row: plain functions of plain data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    """USD per million input (prompt) and output (completion) tokens, and per million prompt
    tokens the provider served from its prompt cache (None: billed as any input token)."""

    input_per_million: float
    output_per_million: float
    cached_input_per_million: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """Cost in USD of one request's usage; `cached_tokens` are part of `prompt_tokens` (as
        providers count them) and billed at the cached price."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = self.cached_input_per_million
        if cached_price is None:
            cached_price = self.input_per_million
        return (
            (prompt_tokens - cached) * self.input_per_million + cached * cached_price
            + completion_tokens * self.output_per_million
        ) / 1_000_000


# Public list prices (USD per 1M tokens: input, output, cached input where the provider
# discounts its prompt cache) of common models; override with [pricing] in a job file.
BUILTIN_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-4": Price(30.00, 60.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o3-mini": Price(1.10, 4.40, 0.55),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "claude-3.5-sonnet": Price(3.00, 15.00),
    "claude-3.5-haiku": Price(0.80, 4.00),
    # The simulator bills like a cheap model so budgets and costs can be rehearsed.
    "sim-1": Price(1.00, 2.00, 0.50),
    "sim-large": Price(5.00, 15.00, 2.50),
}


def price_for(model: str | None, override: Price | None = None) -> Price | None:
    """The price of a model: the job's override, else the built-in table (org prefix ignored)."""
    if override is not None:
        return override
    if not model:
        return None
    name = model.rsplit("/", 1)[-1]
    if name in BUILTIN_PRICES:
        return BUILTIN_PRICES[name]
    # Dated snapshots ("gpt-4o-2024-08-06") price like their family: longest known prefix wins.
    for known in sorted(BUILTIN_PRICES, key=len, reverse=True):
        if name.startswith(known + "-"):
            return BUILTIN_PRICES[known]
    return None


BATCH_DISCOUNT = 0.5  # the Batch API bills half the online price (OpenAI, Groq, Together)


def batch_price(online: Price | None, override: Price | None = None) -> Price | None:
    """The Batch API price: [pricing] batch_* if given, else half of the online price."""
    if override is not None:
        return override
    if online is None:
        return None
    cached = online.cached_input_per_million
    return Price(online.input_per_million * BATCH_DISCOUNT,
                 online.output_per_million * BATCH_DISCOUNT,
                 cached * BATCH_DISCOUNT if cached is not None else None)


def run_price(model: str | None, override: Price | None, backend: str,
              batch_override: Price | None = None) -> Price | None:
    """The price a run's rows are billed at: online, or the batch price for `--backend batch`."""
    online = price_for(model, override)
    return batch_price(online, batch_override) if backend == "batch" else online
