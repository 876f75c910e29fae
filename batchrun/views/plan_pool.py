"""The dry run of a run with several endpoints: each endpoint's limits and key, the pool's pace,
and how the rows and their cost split among the endpoints; sends nothing.

The pool's endpoints (those without `fallback = true`) share the rows at their paces, so an
endpoint's share of the rows is its share of the pool's pace: its requests per minute, or what
its tokens per minute allow, whichever binds. Fallback endpoints get only rows that fail on the
others, which a plan cannot foresee.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchrun.errors import MissingKey
from batchrun.settings.config import RunConfig
from batchrun.settings.endpoints import Endpoint
from batchrun.settings.keys import Secret, endpoint_key, endpoint_key_names
from batchrun.settings.prices import Price, price_for


@dataclass(frozen=True)
class Pace:
    """How fast a run (or the pool of its endpoints) may go: None where no limit is set."""

    rpm: float | None
    tpm: float | None
    concurrency: int


@dataclass(frozen=True)
class EndpointPlan:
    """One endpoint as a plan shows it: where, which model, how fast, which key, what share."""

    endpoint: Endpoint
    where: str  # its base URL as reports show it
    key: Secret | None  # hidden everywhere; its source is shown
    key_needed: str | None  # no key found: what a run will need
    key_names: tuple[str, ...]  # the variables its key may come from, in order
    price: Price | None
    share: float  # of the rows to send: its share of the pool's pace (0 for a fallback)
    prompt_tokens: int  # its share of the estimate
    completion_tokens: int

    @property
    def cost_usd(self) -> float | None:
        """Worst-case cost of its share (None: no price, or a fallback endpoint)."""
        if self.price is None or self.endpoint.fallback:
            return None
        return self.price.cost(self.prompt_tokens, self.completion_tokens)


def pool_pace(config: RunConfig) -> Pace:
    """The pool's limits: the sums of its endpoints' (None when one of them has none)."""
    pool = [e for e in config.endpoints if not e.fallback]
    rpms = [e.rpm for e in pool]
    tpms = [e.tpm for e in pool]
    return Pace(rpm=sum(r for r in rpms if r) if all(rpms) else None,
                tpm=sum(t for t in tpms if t) if all(tpms) else None,
                concurrency=sum(e.concurrency for e in pool))


def plan_endpoints(config: RunConfig, to_send: int, prompt_tokens: int,
                   completion_tokens: int) -> tuple[EndpointPlan, ...]:
    """Each endpoint's part of the plan: its key looked up for it alone (a missing one noted, a
    key that may not travel refused), its share of the rows and of the tokens, at its price."""
    shares = _shares(config, (prompt_tokens + completion_tokens) / to_send if to_send else 0.0)
    plans = []
    for endpoint in config.endpoints:
        try:
            key, needed = endpoint_key(config, endpoint), None
        except MissingKey as missing:  # look before you pay: the plan says which key it needs
            key, needed = None, missing.message
        share = shares.get(endpoint.name, 0.0)
        plans.append(EndpointPlan(
            endpoint=endpoint, where=config.at(endpoint).endpoint, key=key, key_needed=needed,
            key_names=endpoint_key_names(config, endpoint),
            price=price_for(endpoint.model, config.price), share=share,
            prompt_tokens=round(prompt_tokens * share),
            completion_tokens=round(completion_tokens * share)))
    return tuple(plans)


def _shares(config: RunConfig, tokens_per_request: float) -> dict[str, float]:
    """Each pool endpoint's share of its pace: requests per minute its rpm and tpm allow (by
    concurrency when an endpoint has neither, as then nothing else tells them apart)."""
    pool = [e for e in config.endpoints if not e.fallback]
    paces = {e.name: _requests_per_minute(e, tokens_per_request) for e in pool}
    if not all(paces.values()):
        paces = {e.name: float(e.concurrency) for e in pool}
    total = sum(p for p in paces.values() if p)
    return {name: (p or 0.0) / total for name, p in paces.items()}


def _requests_per_minute(endpoint: Endpoint, tokens_per_request: float) -> float | None:
    bounds = [endpoint.rpm] if endpoint.rpm else []
    if endpoint.tpm and tokens_per_request:
        bounds.append(endpoint.tpm / tokens_per_request)
    return min(bounds) if bounds else None


def render_endpoints(plans: tuple[EndpointPlan, ...]) -> list[str]:
    """The plan's lines about the endpoints, one each, under a line that counts them."""
    pool = [p.endpoint.name for p in plans if not p.endpoint.fallback]
    fallback = [p.endpoint.name for p in plans if p.endpoint.fallback]
    head = f"  endpoints {len(pool)} in the pool ({', '.join(pool)})"
    if fallback:
        head += f", {len(fallback)} fallback ({', '.join(fallback)})"
    lines = [head]
    width = max(len(p.endpoint.name) for p in plans)
    for p in plans:
        e = p.endpoint
        parts = [f"{e.model}" + (f" via {e.provider}" if e.provider else "") + f" at {p.where}",
                 _limits(e), _key(p)]
        if e.fallback:
            parts.append("fallback: only rows that fail elsewhere")
        else:
            cost = "cost unknown (no price)" if p.cost_usd is None else (
                f"at most ${p.cost_usd:,.4f}")
            parts.append(f"~{p.share:.0%} of the rows, {cost}")
        lines.append(f"    {e.name:<{width}}  " + "; ".join(parts))
    return lines


def _limits(endpoint: Endpoint) -> str:
    limits = [f"{per_minute(endpoint.rpm)} rpm" if endpoint.rpm else "no rpm",
              f"{per_minute(endpoint.tpm)} tpm" if endpoint.tpm else "no tpm",
              f"{endpoint.concurrency:,} in flight"]
    return ", ".join(limits)


def per_minute(limit: float) -> str:
    """A limit as the plan writes it: 60, 4,500, 1,000,000, 2.5."""
    return f"{int(limit):,}" if float(limit).is_integer() else f"{limit:,g}"


def _key(plan: EndpointPlan) -> str:
    if plan.key_needed:  # the whole line is in `plan --format json`; here, what to set
        if not plan.key_names:
            return "key none found (name its variable with api_key_env)"
        return f"key none found (set {' or '.join(reversed(plan.key_names))})"
    return f"key {plan.key.source}" if plan.key else "no key (a local server needs none)"


def pool_cost(plans: tuple[EndpointPlan, ...]) -> float | None:
    """The worst case of the pool's rows at each endpoint's price (None: a price is unknown)."""
    costs = [p.cost_usd for p in plans if not p.endpoint.fallback]
    return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)


def endpoints_json(plans: tuple[EndpointPlan, ...]) -> list[dict[str, Any]]:
    """The endpoints as `plan --format json` lists them (never a key: where it comes from)."""
    return [{
        "name": p.endpoint.name, "model": p.endpoint.model, "provider": p.endpoint.provider,
        "base_url": p.where, "rpm": p.endpoint.rpm, "tpm": p.endpoint.tpm,
        "concurrency": p.endpoint.concurrency, "fallback": p.endpoint.fallback,
        "key_from": p.key.source if p.key is not None else None, "key_needed": p.key_needed,
        "share": None if p.endpoint.fallback else p.share,
        "cost_usd_max": p.cost_usd,
        "price": None if p.price is None else {
            "input_per_million": p.price.input_per_million,
            "output_per_million": p.price.output_per_million},
    } for p in plans]
