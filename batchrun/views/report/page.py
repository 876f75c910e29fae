"""The report page: one self-contained HTML file; every piece of run data is escaped here."""

from __future__ import annotations

import time
from html import escape

from batchrun.running.summary import duration
from batchrun.views.report.endpoints import EndpointUsage
from batchrun.views.report.facts import ErrorClass, Facts, Header, ModelUsage
from batchrun.views.report.rows import SampleRow

# Nothing may be fetched: no script, no remote style, font or image. A browser that is asked
# anyway refuses and says so in its console, which the browser test reads.
POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STATE_COLORS = {"finished": "#16a34a", "running": "#2563eb", "stopped": "#dc2626",
                "interrupted": "#f59e0b"}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2937;
 margin:0;background:#f9fafb}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
.sub{color:#6b7280;margin:0 0 16px;word-break:break-all}
.state{display:inline-block;color:#fff;border-radius:4px;padding:1px 8px;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:10px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:10px 12px}
.card .k{color:#6b7280;font-size:12px} .card .v{font-size:18px;font-weight:600}
.panel{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:12px}
svg{width:100%;height:auto;display:block}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #e5e7eb;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#16a34a;font-weight:600} .error{color:#dc2626;font-weight:600}
.pending{color:#6b7280;font-weight:600}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font:12px/1.4 ui-monospace,monospace}
.note{color:#6b7280;font-size:12px}
"""


def render(facts: Facts, charts: dict[str, str]) -> str:
    """The whole page; `charts` are the SVG elements by name (absent: nothing to draw)."""
    head = facts.header
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>batchrun report: {escape(_name(head.output))}</title>",
        f"<style>{CSS}</style></head><body><main>",
        _header(head),
        '<h2 id="timeline">Timeline</h2>',
        _timeline(facts, charts.get("timeline")),
        '<h2 id="latency">Latency</h2>',
        _latency(facts, charts.get("latency")),
        '<h2 id="errors">Errors</h2>', _errors(facts.errors),
        *(['<h2 id="endpoints">Endpoints</h2>', _endpoints(facts.endpoints)]
          if facts.endpoints else []),
        '<h2 id="models">Cost and tokens by model</h2>', _models(facts.models),
        '<h2 id="samples">Sample rows</h2>', _samples(facts.samples),
        f'<p class="note">Made by batchrun report at {_clock(time.time())}.</p>',
        "</main></body></html>",
    ]
    return "\n".join(parts)


def _header(head: Header) -> str:
    color = STATE_COLORS.get(head.state, "#6b7280")
    cards = [
        ("state", head.state), ("rows", f"{head.rows_total:,}"), ("ok", f"{head.rows_ok:,}"),
        ("error", f"{head.rows_error:,}"), ("pending", f"{head.rows_pending:,}"),
        *([("cached", f"{head.rows_cached:,}")] if head.rows_cached is not None else []),
        ("time", duration(head.seconds)),
        ("cost", "unknown" if head.cost_usd is None else f"${head.cost_usd:.4f}"),
        *([("provider cost", f"${head.provider_cost:.4f}")]
          if head.provider_cost is not None else []),
        ("tokens", f"{head.total_tokens:,}"),
        *([("cached tokens", f"{head.cached_tokens:,}")] if head.cached_tokens is not None else []),
        *([("reasoning tokens", f"{head.reasoning_tokens:,}")]
          if head.reasoning_tokens is not None else []),
        ("exit code", "—" if head.exit_code is None else str(head.exit_code)),
    ]
    items = "".join(
        f'<div class="card" data-field="{escape(k)}"><div class="k">{escape(k)}</div>'
        f'<div class="v">{escape(v)}</div></div>' for k, v in cards)
    lines = [f"model <b>{escape(head.model or '(default)')}</b> at {escape(head.endpoint or '?')}",
             f"started {_clock(head.started_at)}"
             + (f", ended {_clock(head.finished_at)}" if head.finished_at else "")]
    if head.stop_reason:
        lines.append(f'<span class="error">stopped: {escape(head.stop_reason)}</span>')
    return (f'<h1>batchrun report <span class="state" style="background:{color}">'
            f"{escape(head.state)}</span></h1>"
            f'<p class="sub">{escape(head.output)}<br>{"<br>".join(lines)}</p>'
            f'<div class="cards" id="header">{items}</div>')


def _timeline(facts: Facts, svg: str | None) -> str:
    if svg is None:
        return '<p class="note">No timeline: this journal has no samples (a run before batchrun ' \
               "kept them, or an output without its journal).</p>"
    note = ""
    if facts.earlier_runs:
        note = (f'<p class="note">The latest run on this output; {facts.earlier_runs} earlier '
                f"run{'s' if facts.earlier_runs > 1 else ''} answered the other rows.</p>")
    return f'<div class="panel">{svg}</div>{note}'


def _latency(facts: Facts, svg: str | None) -> str:
    if svg is None:
        return '<p class="note">No answers yet.</p>'
    return f'<div class="panel">{svg}</div>'


def _no_examples(c: ErrorClass) -> str:
    """Why a class shows no message: rows keep only their final error, so attempts that were
    retried and then answered leave none behind."""
    if c.attempts:
        return '<span class="note">no row failed for good: every one was retried</span>'
    return '<span class="note">none</span>'


def _errors(classes: list[ErrorClass]) -> str:
    rows = []
    for c in classes:
        examples = "".join(f"<pre>{escape(text)}{f'  (×{n:,})' if n > 1 else ''}</pre>"
                           for text, n in c.examples) or _no_examples(c)
        attempts = "—" if c.attempts is None else f"{c.attempts:,}"
        rows.append(f'<tr data-class="{escape(c.name)}"><td><b>{escape(c.name)}</b><br>'
                    f'<span class="note">{escape(c.meaning)}</span></td>'
                    f'<td class="n">{attempts}</td><td class="n">{c.rows:,}</td>'
                    f"<td>{examples}</td></tr>")
    return ('<table id="error-classes"><tr><th>class</th><th>failed attempts this run</th>'
            f"<th>rows failed</th><th>examples</th></tr>{''.join(rows)}</table>")


def _models(models: list[ModelUsage]) -> str:
    if not models:
        return '<p class="note">No answers yet.</p>'
    rows = "".join(
        f"<tr><td>{escape(m.model)}</td><td class='n'>{m.rows_ok:,}</td>"
        f"<td class='n'>{m.rows_error:,}</td><td class='n'>{m.requests:,}</td>"
        f"<td class='n'>{m.prompt_tokens:,}</td><td class='n'>{m.completion_tokens:,}</td>"
        f"<td class='n'>{'unknown' if m.cost_usd is None else f'${m.cost_usd:.4f}'}</td></tr>"
        for m in models)
    return ('<table id="models-table"><tr><th>model</th><th>rows ok</th><th>rows failed</th>'
            "<th>requests</th><th>prompt tokens</th><th>completion tokens</th><th>cost</th></tr>"
            f"{rows}</table>")


def _endpoints(endpoints: list[EndpointUsage]) -> str:
    """One row per endpoint: what it settled, its pace and 429s (from its timeline), its cost."""
    def money(value: float | None) -> str:
        return "—" if value is None else f"${value:.4f}"

    def pace(e: EndpointUsage) -> str:
        if e.pace_rpm is None:
            return "—"
        limit = f" of {e.rpm_limit:,.0f}" if e.rpm_limit else ""
        return f"{e.pace_rpm:,.0f}{limit}"

    rows = "".join(
        f'<tr data-endpoint="{escape(e.name)}"><td>{escape(e.name)}</td>'
        f"<td class='n'>{e.rows_ok:,}</td><td class='n'>{e.rows_error:,}</td>"
        f"<td class='n'>{e.requests:,}</td><td class='n'>{pace(e)}</td>"
        f"<td class='n'>{'—' if e.rate_limited is None else f'{e.rate_limited:,}'}</td>"
        f"<td class='n'>{e.prompt_tokens + e.completion_tokens:,}</td>"
        f"<td class='n'>{money(e.cost_usd)}</td><td class='n'>{money(e.provider_cost)}</td></tr>"
        for e in endpoints)
    return ('<table id="endpoints-table"><tr><th>endpoint</th><th>rows ok</th>'
            "<th>rows failed</th><th>requests</th><th>pace (requests/min)</th><th>429s</th>"
            "<th>tokens</th><th>cost</th><th>provider cost</th></tr>"
            f"{rows}</table>"
            '<p class="note">Rows, requests, tokens and cost of the rows each endpoint settled '
            "(answered, or failed last): a row tried on another endpoint first counts here "
            "with all of its attempts. Pace and 429s are this run's.</p>")


def _samples(rows: list[SampleRow]) -> str:
    if not rows:
        return '<p class="note">No rows yet.</p>'
    body = []
    for row in rows:
        inputs = "".join(f"<pre><b>{escape(name)}</b>: {escape(value)}</pre>"
                         for name, value in row.inputs) or '<span class="note">(input not ' \
                                                          "available)</span>"
        answer = (f"<pre>{escape(row.answer)}</pre>" if row.answer is not None else "")
        if row.error:
            answer += f'<pre class="error">{escape(row.error)}</pre>'
        body.append(f'<tr data-status="{escape(row.status)}"><td class="n">{row.index}</td>'
                    f"<td>{inputs}</td><td>{answer}</td>"
                    f'<td class="{escape(row.status)}">{escape(row.status)}</td></tr>')
    return ('<table id="sample-rows"><tr><th>row</th><th>input</th><th>answer</th>'
            f"<th>status</th></tr>{''.join(body)}</table>")


def _name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _clock(stamp: float | None) -> str:
    if not stamp:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))

