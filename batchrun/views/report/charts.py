"""Charts of a report, drawn by matplotlib as inline SVG: no script, nothing fetched, small.

Figures are made with `matplotlib.figure.Figure` directly (no pyplot): no global state and no GUI
backend, so building a report from a notebook or a thread leaves the caller's plots alone. Each
drawn series carries an SVG id (`gid`) naming it, so a browser test can find it and count points.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from batchrun.journal.database import Sample

INK, MUTED, GRID = "#1f2937", "#6b7280", "#e5e7eb"
BLUE, GREEN, ORANGE, RED, PURPLE = "#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed"
# One color per endpoint of a pool, in name order (then again from the first).
ENDPOINT_COLORS = ("#0891b2", "#db2777", "#65a30d", "#9333ea", "#ea580c", "#4f46e5")
WIDTH = 10.0  # inches; the page scales the SVG to its column
_STYLE: dict[Any, Any] = {
    "svg.fonttype": "none",  # text stays text: the page's font, and a smaller file
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.edgecolor": GRID, "axes.labelcolor": MUTED, "axes.titlesize": 10,
    "axes.titleweight": "bold", "axes.titlecolor": INK, "axes.titlelocation": "left",
    "axes.spines.top": False, "axes.spines.right": False,
    "xtick.color": MUTED, "ytick.color": MUTED, "legend.frameon": False,
    "legend.fontsize": 8,
}


def timeline_svg(samples: Sequence[Sample], grain: float,
                 endpoints: Mapping[str, Sequence[Sample]] | None = None) -> str:
    """Requests/s and tokens/s over the run with limits and pace; failures and pauses marked;
    with a pool's `endpoints` (each one's samples), each endpoint's requests/s beside the run's
    and its 429s in the failures' panel."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    start = samples[0].t - samples[0].span
    scale, unit = _time_unit(samples[-1].t - start)
    x = np.array([(s.t - s.span / 2 - start) / scale for s in samples])  # an interval's middle
    span = np.array([max(s.span, 1e-9) for s in samples])

    def per_s(name: str) -> Any:
        return np.array([getattr(s, name) for s in samples], dtype=float) / span

    with rc_context(_STYLE):
        fig = Figure(figsize=(WIDTH, 6.4))
        # Fixed margins: constrained layout measures every label and took a third of the time.
        fig.subplots_adjust(left=0.07, right=0.99, top=0.95, bottom=0.08, hspace=0.32)
        top, mid, low = fig.subplots(3, 1, sharex=True, height_ratios=[3, 2.2, 1.3])
        _line(top, x, per_s("sent"), "requests started /s", BLUE, "series-requests")
        _line(top, x, per_s("ok"), "answers /s", GREEN, "series-answers")
        for k, (name, own) in enumerate(sorted((endpoints or {}).items())):
            if own:
                _endpoint_line((top, low), own, start, scale, name, k)
        _limit(top, x, [s.rpm_limit for s in samples], [s.rpm for s in samples], "series-rpm")
        _pauses((top, mid, low), x, [s.pauses for s in samples])
        top.set_title(f"Requests per second (one point per {_grain(grain)})")
        top.set_ylabel("per second")
        _legend(top)

        tokens = per_s("prompt_tokens") + per_s("completion_tokens")
        _line(mid, x, tokens, "tokens /s (prompt + completion)", PURPLE, "series-tokens")
        _limit(mid, x, [s.tpm_limit for s in samples], [s.tpm for s in samples], "series-tpm")
        mid.set_title("Tokens per second")
        mid.set_ylabel("per second")
        _legend(mid)

        _failures(low, x, samples, scale)
        low.set_xlabel(f"time since the run started ({unit})")
        for ax in (top, mid, low):
            ax.set_ylim(bottom=0)
            ax.grid(axis="y", color=GRID, linewidth=0.6)
            ax.set_xlim(left=0)
        return _svg(fig, "timeline")


def latency_svg(latencies_ms: Any) -> str:
    """The distribution of answer latencies, with p50, p95 and p99 marked."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    values = np.asarray(latencies_ms, dtype=float)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    low, high = float(values.min()), float(values.max())
    logarithmic = low > 0 and high / low > 50
    with rc_context(_STYLE):
        fig = Figure(figsize=(WIDTH, 2.8))
        fig.subplots_adjust(left=0.07, right=0.99, top=0.87, bottom=0.17)
        ax = fig.subplots()
        bins: Any = (np.geomspace(low, high, 60) if logarithmic
                     else np.linspace(low, max(high, low + 1e-3), 60))
        patches: Any
        _, _, patches = ax.hist(values, bins=bins, color=BLUE, alpha=0.85)
        for k, patch in enumerate(patches):
            patch.set_gid(f"bar-{k}")
        if logarithmic:
            ax.set_xscale("log")
        for value, name, color in ((p50, "p50", GREEN), (p95, "p95", ORANGE), (p99, "p99", RED)):
            line = ax.axvline(value, color=color, linestyle="--", linewidth=1.2,
                              label=f"{name} {_ms(value)}")
            line.set_gid(name)
        ax.set_title(f"Latency of {len(values):,} answers")
        ax.set_xlabel("milliseconds" + (" (log scale)" if logarithmic else ""))
        ax.set_ylabel("answers")
        ax.grid(axis="y", color=GRID, linewidth=0.6)
        _legend(ax)
        return _svg(fig, "latency")


def _failures(ax: Any, x: Any, samples: Sequence[Sample], scale: float) -> None:
    """Failed attempts stacked by class, retries as dots; the legend names every class."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    width = (x[1] - x[0]) * 0.9 if len(x) > 1 else 0.8 / scale
    bottom = np.zeros(len(x))
    handles: list[Any] = []
    for name, label, color in (("rate_limited", "429 rate limits", RED),
                               ("transient", "server failures", ORANGE),
                               ("errors", "rows failed", INK)):
        counts = np.array([getattr(s, name) for s in samples], dtype=float)
        drawn = counts > 0  # a long calm run would otherwise draw thousands of empty bars
        bars = ax.bar(x[drawn], counts[drawn], width, bottom=bottom[drawn], color=color)
        for k, bar in enumerate(bars):
            bar.set_gid(f"bar-{name}-{k}")
        bottom += counts
        handles.append(Patch(color=color, label=label))
    retries = np.array([s.retries for s in samples], dtype=float)
    drawn = retries > 0
    ax.plot(x[drawn], retries[drawn], "o", color=BLUE, markersize=3)[0].set_gid("marks-retries")
    handles.append(Line2D([], [], marker="o", linestyle="", color=BLUE, markersize=3,
                          label="retries"))
    ax.set_title("Failed attempts and retries (per point)")
    ax.set_ylim(top=max(1.0, float(bottom.max(initial=0)), float(retries.max(initial=0))) * 1.15)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=4,
              borderaxespad=0.2)


def _endpoint_line(axes: tuple[Any, Any], own: Sequence[Sample], start: float, scale: float,
                   name: str, k: int) -> None:
    """One endpoint of a pool: its requests started /s (dotted) on the top panel, its 429s as
    marks on the failures' panel, in its own color (ids by position: names are free text)."""
    top, low = axes
    color = ENDPOINT_COLORS[k % len(ENDPOINT_COLORS)]
    x = np.array([(s.t - s.span / 2 - start) / scale for s in own])
    span = np.array([max(s.span, 1e-9) for s in own])
    sent = np.array([s.sent for s in own], dtype=float) / span
    style = "o:" if len(x) < 3 else ":"
    top.plot(x, sent, style, color=color, linewidth=1.3, markersize=3,
             label=f"{name}: requests /s")[0].set_gid(f"series-endpoint-{k}")
    limited = np.array([s.rate_limited for s in own], dtype=float)
    drawn = limited > 0
    low.plot(x[drawn], limited[drawn], "x", color=color, markersize=4)[0].set_gid(
        f"marks-endpoint-{k}-429")


def _line(ax: Any, x: Any, y: Any, label: str, color: str, gid: str) -> None:
    style = "-o" if len(x) < 3 else "-"  # a point or two would not show as a line
    ax.plot(x, y, style, color=color, linewidth=1.4, markersize=3, label=label)[0].set_gid(gid)


def _limit(ax: Any, x: Any, limits: list[float | None], pace: list[float | None],
           gid: str) -> None:
    """The configured limit (dashed) and the pace the limiter kept (dotted), both per second."""
    if any(v is not None for v in limits):
        values = [math.nan if v is None else v / 60 for v in limits]
        ax.plot(x, values, "--", color=MUTED, linewidth=1, label="configured limit")[0].set_gid(
            f"{gid}-limit")
    if any(v is not None for v in pace):
        values = [math.nan if v is None else v / 60 for v in pace]
        ax.step(x, values, ":", where="post", color=RED, linewidth=1.3,
                label="pace the limiter kept")[0].set_gid(f"{gid}-pace")


def _pauses(axes: Sequence[Any], x: Any, pauses: list[int]) -> None:
    """A run-wide pause (429s showed the run too fast) as a red line across every chart."""
    first = True
    for k, (at, n) in enumerate(zip(x, pauses, strict=True)):
        if not n:
            continue
        for row, ax in enumerate(axes):
            line = ax.axvline(at, color=RED, alpha=0.35, linewidth=1,
                              label="limiter paused" if first and row == 0 else None)
            line.set_gid(f"pause-{k}-{row}")
        first = False


def _legend(ax: Any, ncol: int = 4) -> None:
    """Above the chart on the right, level with its title: never over the data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=ncol, borderaxespad=0.2)


def _svg(fig: Any, name: str) -> str:
    """The figure as an <svg> element (no XML prolog), every id in it prefixed with `name`.

    matplotlib numbers its elements the same way in every figure (`axes_1`, `line2d_1`), and two
    SVGs inline in one page must not share an id; so `series-requests` becomes
    `timeline-series-requests`, and the references to ids follow.
    """
    from matplotlib import rc_context

    buffer = io.StringIO()
    # A salt per chart: matplotlib derives clip-path ids from it, and two SVGs inline in one page
    # must not share an id. No date: the same run gives the same report.
    with rc_context({"svg.hashsalt": f"batchrun-{name}", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    svg = text[text.index("<svg"):]
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", svg)
    svg = re.sub(r'xlink:href="#([^"]+)"', rf'xlink:href="#{name}-\1"', svg)
    return svg.replace("<svg ", f'<svg id="chart-{name}" role="img" ', 1)


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds > 3 * 3600:
        return 3600.0, "h"
    if seconds > 600:
        return 60.0, "min"
    return 1.0, "s"


def _grain(seconds: float) -> str:
    if seconds < 1.5:
        return "second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def _ms(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.2f} ms"
