"""A pool's endpoints in a report: what each settled, and its pace and 429s from its timeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batchrun.journal.database import Sample


@dataclass(frozen=True)
class EndpointUsage:
    """What one endpoint of a run with several did: the rows it settled, and from the timeline
    (None without its samples) its 429s and its pace."""

    name: str
    rows_ok: int
    rows_error: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    provider_cost: float | None
    rate_limited: int | None
    pace_rpm: float | None  # requests it started per minute, over the time it was sampled
    rpm_limit: float | None


def endpoint_usage(results: pa.Table, timelines: dict[str, list[Sample]]) -> list[EndpointUsage]:
    """Per endpoint of a run with several: the rows it settled (from the rows' `endpoint`), and
    its 429s and pace (from its samples); none for a run without endpoints."""
    table = results.filter(pc.and_(pc.is_valid(results.column("endpoint")),
                                    pc.is_in(results.column("status"), pa.array(["ok", "error"]))))
    settled: dict[str, dict[str, Any]] = {}
    if table.num_rows:
        status = table.column("status")
        table = table.append_column("is_ok", pc.cast(pc.equal(status, "ok"), pa.int64()))
        table = table.append_column("is_error", pc.cast(pc.equal(status, "error"), pa.int64()))
        settled = {row["endpoint"]: row for row in table.group_by("endpoint").aggregate([
            ("is_ok", "sum"), ("is_error", "sum"), ("attempts", "sum"), ("prompt_tokens", "sum"),
            ("completion_tokens", "sum"), ("cost_usd", "sum"), ("cost_usd", "count"),
            ("provider_cost", "sum"), ("provider_cost", "count"),
        ]).to_pylist()}
    found = []
    for name in sorted(set(settled) | set(timelines)):
        row = settled.get(name, {})
        own = timelines.get(name, [])
        seconds = sum(s.span for s in own)
        found.append(EndpointUsage(
            name=name, rows_ok=row.get("is_ok_sum") or 0, rows_error=row.get("is_error_sum") or 0,
            requests=row.get("attempts_sum") or 0, prompt_tokens=row.get("prompt_tokens_sum") or 0,
            completion_tokens=row.get("completion_tokens_sum") or 0,
            cost_usd=row["cost_usd_sum"] if row.get("cost_usd_count") else None,
            provider_cost=row["provider_cost_sum"] if row.get("provider_cost_count") else None,
            rate_limited=sum(s.rate_limited for s in own) if own else None,
            pace_rpm=sum(s.sent for s in own) / seconds * 60 if seconds > 0 else None,
            rpm_limit=own[-1].rpm_limit if own else None,
        ))
    return found
