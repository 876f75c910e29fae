"""Routing a row among several endpoints, as plain values (no I/O): where it goes next, and what
its outcome says once it has been tried on more than one.

    order = try_order(endpoints)                 # pool endpoints first, then fallbacks in order
    nxt = next_endpoint(order, trail.tried, retired)
    outcome = carried(trail.carried, outcome)    # attempts, usage and cost summed over endpoints

A row tries each endpoint at most once: one that failed it for a reason another may not share
(`protocol.retry.elsewhere`) is in `trail.tried`; one that retired while it held the row is
not (it did not fail the row, and sends nothing more anyway).
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from batchrun.protocol.outcome import Outcome
from batchrun.settings.endpoints import Endpoint, in_try_order


@dataclass
class Trail:
    """What one row went through on the endpoints so far (kept only for a row that moved)."""

    tried: set[int] = field(default_factory=set)  # endpoints (indexes) that failed it
    carried: Outcome | None = None  # its outcome so far: attempts, usage and cost to add to
    elsewhere: bool = False  # the last endpoint's error may not be another's (set by settle)
    unsettled: int = 0  # requests sent for it by endpoints that retired while they held it


def try_order(endpoints: Sequence[Endpoint]) -> tuple[int, ...]:
    """The order a failed row tries endpoints in (`in_try_order`), as their indexes."""
    return tuple(endpoints.index(e) for e in in_try_order(endpoints))


def next_endpoint(order: Sequence[int], tried: Set[int], retired: Set[int]) -> int | None:
    """The first endpoint in `order` the row has not tried and that still sends; None: none."""
    for index in order:
        if index not in tried and index not in retired:
            return index
    return None


def carried(earlier: Outcome | None, later: Outcome, unsettled: int = 0) -> Outcome:
    """`later` (the last endpoint's outcome) with what the row used on the endpoints before it:
    attempts count across endpoints (`unsettled`: sent by endpoints that retired holding it),
    and usage and cost sum over every attempt."""
    if earlier is None:
        return later._replace(attempts=later.attempts + unsettled) if unsettled else later
    return later._replace(
        attempts=earlier.attempts + later.attempts + unsettled,
        prompt_tokens=_plus(earlier.prompt_tokens, later.prompt_tokens),
        completion_tokens=_plus(earlier.completion_tokens, later.completion_tokens),
        total_tokens=_plus(earlier.total_tokens, later.total_tokens),
        cost_usd=_plus(earlier.cost_usd, later.cost_usd),
        cached_tokens=_plus(earlier.cached_tokens, later.cached_tokens),
        reasoning_tokens=_plus(earlier.reasoning_tokens, later.reasoning_tokens),
        provider_cost=_plus(earlier.provider_cost, later.provider_cost),
    )


def _plus(before: Any, more: Any) -> Any:
    """Known parts add up; unknown on both sides stays unknown (None), not 0."""
    if more is None:
        return before
    return more if before is None else before + more
