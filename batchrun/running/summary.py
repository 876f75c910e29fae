"""Summary: the totals of a run, its exit code, its one-screen report and the output metadata."""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from batchrun.data.locations import OUTPUT_SUFFIXES, is_url
from batchrun.errors import EXIT_OK, EXIT_ROWS_FAILED
from batchrun.settings.config import request_fingerprint

if TYPE_CHECKING:
    from batchrun.running.stats import Stats
    from batchrun.settings.config import RunConfig


class Display(Protocol):
    """What shows a run to a person while it goes (`views.progress.Reporter`): its events, its
    live counters, and its summary at the end."""

    def event(self, name: str, data: dict[str, Any]) -> None:
        """A run event (start, rate_limited, stop, finish, ...)."""
        ...

    async def watch(self, stats: Stats) -> None:
        """Show progress until cancelled."""
        ...

    def finish(self, summary: Summary, exit_code: int | None = None) -> None:
        """The run is over."""
        ...


@dataclass(frozen=True)
class Summary:
    """What a finished run did, over every row of the output (earlier runs' answers included)."""

    rows_total: int
    rows_ok: int
    rows_error: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None
    requests_sent: int  # this run
    retries: int  # this run
    rate_limited: int  # 429s this run
    reused: int  # rows answered by earlier runs
    dedup_saved: int  # requests saved by sending identical requests once
    seconds: float
    output: Path | str | None  # a path, or the URL of an object-store output
    usage_output: Path | str | None
    model: str | None
    stopped: str | None = None  # why the run stopped early, if it did
    cost_this_run: float | None = None  # spent by this run alone (None: no price known)
    report: Path | None = None  # the HTML report, when the run wrote one (--report)
    export_command: str | None = None  # a stopped run: the command that writes its rows so far
    cached: int = 0  # rows the shared cache answered (--cache), at no cost
    # The provider's details of its usage, over every row (None: no answer reported them).
    cached_tokens: int | None = None  # prompt tokens served from the provider's prompt cache
    reasoning_tokens: int | None = None
    provider_cost: float | None = None  # the provider's own `usage.cost`, summed
    # A run with endpoints: per endpoint name, what the rows it settled used
    # (`journal.readback.counts`' `endpoints`).
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    # ... and what each endpoint's sending did this run: requests_sent, retries, rate_limited.
    endpoint_runs: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when every row is answered, 1 when some failed."""
        return EXIT_OK if self.rows_error == 0 else EXIT_ROWS_FAILED

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as text)."""
        data = asdict(self)
        data["output"] = str(self.output) if self.output else None
        data["usage_output"] = str(self.usage_output) if self.usage_output else None
        data["report"] = str(self.report) if self.report else None
        return data

    def render(self) -> str:
        """The one-screen report printed at the end of a run."""
        rate = self.requests_sent / self.seconds if self.seconds > 0 else 0.0
        head = f"batchrun: {count(self.rows_total, 'row')}: {self.rows_ok:,} ok, {self.rows_error:,} error"
        if self.reused:
            head += f" ({self.reused:,} answered by earlier runs, not sent again)"
        pending = max(0, self.rows_total - self.rows_ok - self.rows_error)
        if self.cost_usd is None:
            cost = "unknown (no price for this model: set [pricing] in the job file)"
        else:
            cost = f"${self.cost_usd:.4f}"
            if self.reused and self.cost_this_run is not None:
                cost += f" (this run ${self.cost_this_run:.4f})"
        if self.provider_cost is not None:
            cost += f"; the provider reported ${self.provider_cost:.4f}"
        lines = [
            head,
            f"  time      {duration(self.seconds)}",
            f"  requests  {self.requests_sent:,} sent ({rate:.1f}/s), {self.retries:,} retries, "
            f"{self.rate_limited:,} rate-limited (429)",
            f"  tokens    {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion"
            f" = {self.total_tokens:,}" + token_details(self.cached_tokens, self.reasoning_tokens),
            f"  cost      {cost}" + (f"  {'models' if ', ' in self.model else 'model'} "
                                         f"{self.model}" if self.model else ""),
        ]
        lines += endpoint_lines(self.endpoints, {name: run["rate_limited"]
                                                 for name, run in self.endpoint_runs.items()})
        if self.cached:
            lines.append(f"  cached    {count(self.cached, 'row')} answered from the shared cache, "
                         "at no cost")
        if self.dedup_saved:
            lines.append(f"  dedup     {count(self.dedup_saved, 'row')} repeated an identical "
                         f"request: {count(self.dedup_saved, 'request')} saved")
        if self.rows_error:
            lines.append(f"  errors    {count(self.rows_error, 'row')} failed: their reason is in the "
                         "error column (status = 'error')")
        if self.output:
            lines.append(f"  output    {_shown(self.output)}")
            lines.append(f"  usage     {_shown(self.usage_output or '')}")
        if self.report:
            lines.append(f"  report    {_shown(self.report)}")
        if self.stopped:
            lines.append(f"  stopped   {self.stopped.removeprefix('stopped: ')}")
            if pending:
                hint = "" if "run the same command again" in self.stopped else (
                    ": run the same command again to resume")
                lines.append(f"  pending   {count(pending, 'row')} not answered yet{hint}")
                if self.export_command:
                    lines.append(f"  partial   {self.export_command} writes what is answered "
                                 "so far")
        return "\n".join(lines)


def _shown(location: Path | str) -> str:
    """A path made plain ("jobs/../out/x.parquet" reads as "out/x.parquet"); a URL as it is."""
    return location if is_url(location) else os.path.normpath(location)


def build_summary(counts: dict[str, Any], stats: Stats, seconds: float, config: RunConfig,
                  output: Path | str | None, usage_output: Path | str | None,
                  priced: bool, stopped: str | None = None) -> Summary:
    """Combine the journal's totals over all rows with this run's counters."""
    return Summary(
        rows_total=stats.total_rows or 0,
        rows_ok=counts["ok"],
        rows_error=counts["error"],
        prompt_tokens=counts["prompt_tokens"],
        completion_tokens=counts["completion_tokens"],
        total_tokens=counts["total_tokens"],
        cost_usd=counts["cost_usd"] if priced else None,
        export_command=(f"batchrun export {shlex.quote(config.output_name)}"
                        if stopped and config.output_name.endswith(OUTPUT_SUFFIXES) else None),
        requests_sent=stats.sent,
        retries=stats.retries,
        rate_limited=stats.rate_limited,
        reused=stats.reused,
        dedup_saved=stats.copies,
        seconds=seconds,
        output=output,
        usage_output=usage_output,
        # With endpoints, each endpoint's line names its model (`endpoint` lines).
        model=", ".join(dict.fromkeys(e.model or "" for e in config.endpoints)) or None
        if config.endpoints else config.model,
        stopped=stopped,
        cost_this_run=stats.cost_usd if priced else None,
        cached=counts.get("cached", 0),
        cached_tokens=counts.get("cached_tokens"),
        reasoning_tokens=counts.get("reasoning_tokens"),
        provider_cost=counts.get("provider_cost"),
        endpoints=counts.get("endpoints") or {},
        endpoint_runs={name: {"requests_sent": own.sent, "retries": own.retries,
                              "rate_limited": own.rate_limited}
                       for name, own in stats.endpoints.items()},
    )


def output_metadata(summary: Summary, counts: dict[str, Any], config: RunConfig,
                    started_at: float, finished_at: float) -> dict[str, Any]:
    """The `batchrun` key of the output's Parquet metadata."""
    requests_total = counts["attempts"]
    distinct = counts["mapped"] - counts["copies"] - counts.get("cached", 0)  # each sent once
    rows = {"total": summary.rows_total, "ok": summary.rows_ok, "error": summary.rows_error}
    if config.cache is not None:
        rows["cached"] = summary.cached
    return {
        "version": 1,
        "rows": rows,
        "usage": {
            "prompt_tokens": summary.prompt_tokens,
            "completion_tokens": summary.completion_tokens,
            "total_tokens": summary.total_tokens,
            "cached_tokens": summary.cached_tokens,
            "reasoning_tokens": summary.reasoning_tokens,
        },
        "requests": {"sent": requests_total, "retried": max(0, requests_total - distinct)},
        "this_run": {
            "requests_sent": summary.requests_sent, "retries": summary.retries,
            "rate_limited": summary.rate_limited, "reused_rows": summary.reused,
            "dedup_saved": summary.dedup_saved, "seconds": round(summary.seconds, 3),
        },
        "cost_usd": summary.cost_usd,
        "provider_cost": summary.provider_cost,
        **({"endpoints": endpoint_totals(summary, config)} if config.endpoints else {}),
        "model": config.model,
        "provider": config.provider,
        "base_url": config.endpoint,
        "started_at": started_at,
        "finished_at": finished_at,
        "config_fingerprint": request_fingerprint(config),  # as batch metadata names the job
    }


def endpoint_totals(summary: Summary, config: RunConfig) -> dict[str, Any]:
    """The metadata's per-endpoint block: each endpoint of the run (in its order), where it is,
    what the rows it settled used (every figure 0 or null for one that settled none), and what
    its sending did this run."""
    idle = {"requests_sent": 0, "retries": 0, "rate_limited": 0}
    return {endpoint.name: {"model": endpoint.model, "base_url": endpoint.base_url,
                            "fallback": endpoint.fallback,
                            **endpoint_figures(summary.endpoints.get(endpoint.name, {})),
                            "this_run": summary.endpoint_runs.get(endpoint.name, idle)}
            for endpoint in config.endpoints}


def endpoint_figures(sums: dict[str, Any]) -> dict[str, Any]:
    """One endpoint's figures in the metadata, from its sums (`journal.readback.counts`)."""
    return {
        "rows": {"ok": sums.get("ok", 0), "error": sums.get("error", 0)},
        "requests": sums.get("attempts", 0),
        "usage": {name: sums.get(name, 0) for name in
                  ("prompt_tokens", "completion_tokens", "total_tokens")}
        | {name: sums.get(name) for name in ("cached_tokens", "reasoning_tokens")},
        "cost_usd": sums.get("cost_usd"),
        "provider_cost": sums.get("provider_cost"),
    }


def endpoint_lines(settled: dict[str, dict[str, Any]], limited: dict[str, int] | None = None,
                   pace: dict[str, float] | None = None) -> list[str]:
    """One line per endpoint that settled rows: rows, requests, cost, and where known its 429s
    and its pace in requests per minute (summary and status)."""
    lines = []
    for name, sums in settled.items():
        line = (f"  {'endpoint':<9} {name}: {sums.get('ok', 0):,} ok, "
                f"{sums.get('error', 0):,} error, {count(sums.get('attempts', 0), 'request')}")
        if sums.get("cost_usd") is not None:
            line += f", ${sums['cost_usd']:.4f}"
        if sums.get("provider_cost") is not None:
            line += f" (provider ${sums['provider_cost']:.4f})"
        if limited is not None and name in limited:
            line += f"; {limited[name]:,} rate-limited (429)"
        if pace and pace.get(name):
            line += f", pace {pace[name]:,.0f} rpm"
        lines.append(line)
    return lines


def token_details(cached: int | None, reasoning: int | None) -> str:
    """'' or ' (1,024 cached, 300 reasoning)': the details a provider reported."""
    parts = [f"{n:,} {what}" for n, what in ((cached, "cached"), (reasoning, "reasoning"))
             if n is not None]
    return f" ({', '.join(parts)})" if parts else ""


def count(n: int, noun: str) -> str:
    """How a number of things reads everywhere: '1 row', '1,200 rows'."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def duration(seconds: float | None) -> str:
    """How durations read everywhere (summary, plan, progress, status, report): '4.2s', '42s',
    '2m05s', '3h07m'; '?' when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
