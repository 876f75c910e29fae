"""Answers as they leave the simulator: the document with its full usage (sim/answers.py for the
text, sim/usage.py for cached and reasoning tokens and the cost), and their billing: the
counters, the key's credits and its prompt cache."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import orjson

from batchrun.settings.prices import Price
from batchrun.sim.accounts import AccountState
from batchrun.sim.answers import completion
from batchrun.sim.config import SimConfig
from batchrun.sim.faults import error_doc
from batchrun.sim.stats import SimStats
from batchrun.sim.usage import Billed, PromptCache, cached_tokens, price_of, reasoning_split, settle
from batchrun.sim.validate import ChatRequest, Invalid, parse


class Billing:
    """Drafts answers (ids, usage, cost) and bills the ones sent, for one simulator."""

    def __init__(self, config: SimConfig, stats: SimStats) -> None:
        self._config, self._stats = config, stats
        self._ids = itertools.count(1)
        # Batch API lines come with no key: they share one prompt cache.
        self._batch_cache = PromptCache(config.tokenizer_ratio, config.cache_min_tokens)
        self._prices: dict[str, Price] = {}  # price_of per model, looked up once

    def draft(
        self, req: ChatRequest, account: AccountState | None, reason: str | None = None
    ) -> tuple[dict[str, Any], Billed]:
        """The 200 document for `req` (sent with `account`'s key; None: a Batch API line) and what
        it would bill (not yet billed): its usage details and cost."""
        cfg = self._config
        share, cap = reasoning_split(cfg, req.model, req.max_tokens)
        # A reasoning model's max_tokens caps the visible answer and the reasoning together.
        answered = replace(req, max_tokens=cap) if cap != req.max_tokens else req
        doc, visible = completion(answered, f"chatcmpl-sim-{next(self._ids)}", reason)
        cache = account.cache if account is not None else self._batch_cache
        price = self._prices.get(req.model)
        if price is None:
            price = self._prices[req.model] = price_of(cfg, req.model)
        return doc, settle(cfg, price, req, doc, visible, share, cached_tokens(cfg, cache, req))

    def bill(self, req: ChatRequest, billed: Billed, account: AccountState | None) -> None:
        """Bill an answer sent: the counters, the key's credits, and its prompt cache."""
        self._stats.bill(req, billed, account.key if account is not None else None)
        if account is not None:
            account.spend(billed.cost)
        if self._config.prompt_cache:
            (account.cache if account is not None else self._batch_cache).remember(req)

    def answer(self, req: ChatRequest, account: AccountState, reason: str | None = None) -> bytes:
        """The billed 200 body for `req`."""
        doc, billed = self.draft(req, account, reason)
        self.bill(req, billed, account)
        return orjson.dumps(doc)

    def batch_line(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A Batch API line answered as the online endpoint answers it, billed; no limits or faults."""
        cfg, stats = self._config, self._stats
        try:
            req, data_urls, urls = parse(body, cfg.models, cfg.tokenizer_ratio, cfg.context_lengths)
        except Invalid as exc:
            doc = error_doc(cfg.error_style, exc.status, exc.message, exc.type_, exc.param, exc.code)
            return exc.status, doc
        stats.images_data_url += data_urls
        stats.images_url += urls
        doc, billed = self.draft(req, None)
        self.bill(req, billed, None)
        stats.batch_lines_billed += 1
        return 200, doc
