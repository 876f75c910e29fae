"""Status: what the journal of an output says, readable while a run is going (read-only, no lock)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from batchrun.backends.batch_api import TERMINAL
from batchrun.data.locations import check_url, home, is_url
from batchrun.errors import UsageError
from batchrun.journal.batches import Submission, submissions
from batchrun.journal.database import Journal, OutputLock, Sample, journal_path
from batchrun.running.summary import (
    count,
    duration,
    endpoint_figures,
    endpoint_lines,
    token_details,
)

SHOWN_BATCHES = 20  # `status` lists this many batches, the newest


def describe(output: Path | str, now: float | None = None, as_json: bool = False) -> str:
    """A few lines: state, rows answered/failed/left, usage and cost so far, last progress; or
    with `as_json` the same figures as one JSON object (`status_json`) for scripts.

    `output` is a path or an `s3://` URL, whose journal is in its local state folder.
    """
    if is_url(output):
        check_url(output)
    local = home(output)
    path = journal_path(local)
    if not path.exists():
        raise UsageError(f"no run found for {output} (no journal at {path})")
    pid = OutputLock(local).held_elsewhere()
    try:
        journal = Journal(path, readonly=True)
        try:
            meta = journal.meta()
            counts = journal.counts()
            priced = any(usage.cost_usd is not None for usage in journal.by_model())
            batches = submissions(journal, SHOWN_BATCHES)
            samples = journal.timeline() if counts["endpoints"] else []
        finally:
            journal.close()
    except sqlite3.OperationalError:
        if pid:  # the run has just created its journal and not yet committed its tables
            if as_json:
                return orjson.dumps({"output": str(output), "state": "starting",
                                     "pid": pid}).decode()
            return f"{output}: starting (pid {pid})"
        raise UsageError(f"journal {path} holds no run yet; run the job to fill it") from None
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"journal {path} is not readable ({exc})") from None
    now = time.time() if now is None else now
    held = sum(b.total - b.completed - b.failed for b in batches if b.live)
    if as_json:
        return orjson.dumps(status_json(output, meta, counts, pid, priced, held, samples,
                                        batches)).decode()
    return "\n".join([_render(output, meta, counts, pid, now, priced, held),
                      *_endpoint_lines(counts["endpoints"], samples),
                      *_batch_lines(batches, now)])


def status_json(output: Path | str, meta: dict[str, Any], counts: dict[str, Any],
                pid: int | None, priced: bool, held: int, samples: list[Sample],
                batches: list[Submission]) -> dict[str, Any]:
    """`status --format json`: the figures of the text, by name (null: not known)."""
    total = meta.get("total_rows") or counts["mapped"]
    limited, pace = _endpoint_pace(samples)
    return {
        "output": str(output),
        "state": "running" if pid else meta.get("state", "unknown"),
        "pid": pid if pid and pid > 0 else None,
        "rows": {"total": total, "ok": counts["ok"], "error": counts["error"],
                 "left": max(0, total - counts["ok"] - counts["error"]),
                 "cached": counts["cached"], "copies": counts["copies"]},
        "usage": {name: counts[name] for name in ("prompt_tokens", "completion_tokens",
                                                  "total_tokens", "cached_tokens",
                                                  "reasoning_tokens")},
        "requests": counts["attempts"],
        "cost_usd": counts["cost_usd"] if priced else None,
        "provider_cost": counts["provider_cost"],
        "endpoints": {name: {**endpoint_figures(sums), "rate_limited": limited.get(name),
                             "pace_rpm": pace.get(name)}
                      for name, sums in counts["endpoints"].items()},
        "model": meta.get("model"), "base_url": meta.get("base_url"),
        "started_at": meta.get("started_at"), "finished_at": meta.get("finished_at"),
        "last_progress_at": meta.get("last_progress_at"),
        "stop_reason": meta.get("stop_reason"),
        "batches": {"live": sum(b.live for b in batches), "rows_held": held},
    }


def _endpoint_lines(settled: dict[str, dict[str, Any]], samples: list[Sample]) -> list[str]:
    """A run with endpoints: one line per endpoint, with its 429s and its last pace from the
    timeline's per-endpoint samples (of the latest run) when the run kept them."""
    return endpoint_lines(settled, *_endpoint_pace(samples))


def _endpoint_pace(samples: list[Sample]) -> tuple[dict[str, int], dict[str, float]]:
    """Each endpoint's 429s and last pace (requests per minute) in the latest run's samples."""
    latest = max((s.run for s in samples), default=None)
    limited: dict[str, int] = {}
    pace: dict[str, float] = {}
    for s in samples:
        if s.endpoint is not None and s.run == latest:
            limited[s.endpoint] = limited.get(s.endpoint, 0) + s.rate_limited
            if s.rpm:
                pace[s.endpoint] = s.rpm  # the last one kept
    return limited, pace


def _batch_lines(batches: list[Submission], now: float) -> list[str]:
    """One line per Batch API batch of the output: id, status, counts (live ones first)."""
    if not batches:
        return []
    live = sum(b.live for b in batches)
    lines = [f"  batches   {live:,} live, {len(batches) - live:,} collected"
             + (" (the newest shown)" if len(batches) >= SHOWN_BATCHES else "")]
    for b in batches:
        state = b.status + (" (not collected yet)" if b.live and b.status in TERMINAL else "")
        lines.append(f"    {b.batch_id or '(not created yet)'}  {state}  "
                     f"{b.completed:,}/{b.total:,} done, {b.failed:,} failed  "
                     f"submitted {_when(b.created_at, now)}")
        if b.note:
            lines.append(f"      {b.note}")
    return lines


def _render(output: Path | str, meta: dict[str, Any], counts: dict[str, Any], pid: int | None,
            now: float, priced: bool, held: int) -> str:
    total = meta.get("total_rows") or counts["mapped"]
    ok, failed = counts["ok"], counts["error"]
    left = max(0, total - ok - failed)
    cost = _cost(counts["cost_usd"], priced, ok + failed, meta.get("model"))
    if counts.get("provider_cost") is not None:
        cost += f"; the provider reported ${counts['provider_cost']:.4f}"
    lines = [
        f"{output}: {_state(meta, pid, left)}",
        f"  rows      {total:,} total: {ok:,} answered, {failed:,} failed, {left:,} left",
        f"  tokens    {counts['prompt_tokens']:,} prompt + {counts['completion_tokens']:,} "
        f"completion = {counts['total_tokens']:,}"
        + token_details(counts.get("cached_tokens"), counts.get("reasoning_tokens")),
        "  cost      " + cost,
        f"  requests  {counts['attempts']:,} sent for these rows"
        + (f"; {held:,} in live Batch API batches" if held else ""),
    ]
    if counts["cached"]:
        lines.append(f"  cached    {count(counts['cached'], 'row')} answered from the shared cache, "
                     "at no cost")
    if counts["copies"]:
        lines.append(f"  dedup     {count(counts['copies'], 'row')} answered by an identical request")
    if meta.get("model") or meta.get("base_url"):
        where = f" at {meta['base_url']}" if meta.get("base_url") else ""  # older journals: ""
        lines.append(f"  model     {meta.get('model') or '(default)'}{where}")
    lines.append(f"  progress  last {_when(meta.get('last_progress_at'), now)}")
    lines.append(f"  started   {_when(meta.get('started_at'), now)}")
    if meta.get("finished_at"):
        lines.append(f"  ended     {_when(meta.get('finished_at'), now)}")
    if meta.get("stop_reason") and meta.get("state") in ("stopped", "waiting"):
        lines.append(f"  {meta['state']:<9} {meta['stop_reason']}")
    return "\n".join(lines)


def _cost(cost: float | None, priced: bool, settled: int, model: str | None) -> str:
    """The cost so far, telling "nothing answered yet" from "no price known" from $0."""
    if not settled:
        return "$0 so far: nothing answered yet"
    if not priced:
        return (f"unknown: no price is known for {model or 'the model'} "
                "(give one in the job file's [pricing])")
    return f"${cost or 0:.4f}"


def _state(meta: dict[str, Any], pid: int | None, left: int) -> str:
    if pid:
        return f"running (pid {pid})" if pid > 0 else "running (pid unknown)"
    state = meta.get("state", "unknown")
    if state == "running":  # the process died without saying so (kill -9, crash, reboot)
        return "interrupted (no process holds it); run the same command again to resume"
    if state == "waiting":
        return "waiting for Batch API batches; run the same command again to collect"
    if state == "stopped":
        return "stopped early; run the same command again to resume" if left else "stopped"
    return str(state)


def _when(stamp: Any, now: float) -> str:
    if not stamp:
        return "never"
    at = float(stamp)
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"at {clock} ({duration(now - at)} ago)"
