"""The run report: one self-contained HTML page about the run of an output.

    batchrun report out/demo.parquet            # writes out/demo.report.html
    batchrun.report("out/demo.parquet")         # in a notebook: shows the page inline

Made of `facts` (what is known, from the output and the journal), `charts` (matplotlib SVG) and
`page` (the HTML). matplotlib is the `report` extra: `pip install 'batchrun[report]'`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from batchrun.errors import UsageError

if TYPE_CHECKING:
    from batchrun.views.report.facts import Facts

__all__ = ["Report", "build_report", "report_path", "require_plotting"]


def report_path(output: Path) -> Path:
    """Where the report of an output goes by default: beside it, `x.report.html`."""
    from batchrun.data.locations import sibling

    return sibling(output, ".report.html")


def require_plotting() -> None:
    """Refuse early (exit 2, nothing sent) when the charts' library is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("the report needs matplotlib: pip install 'batchrun[report]'")


class Report:
    """A built report: `html` is the page; `save()` writes it; notebooks show it inline."""

    def __init__(self, output: Path, html: str, facts: Facts) -> None:
        self.output = output
        self.html = html
        self.facts = facts

    def save(self, path: Path | str | None = None) -> Path:
        """Write the page atomically (default: beside the output); returns where."""
        target = Path(path) if path is not None else report_path(self.output)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(self.html, encoding="utf-8")
            os.replace(temporary, target)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise UsageError(f"cannot write the report {target}: {exc.strerror or exc}") from None
        return target

    def _repr_html_(self) -> str:
        """Jupyter shows the page in an iframe: its styles stay out of the notebook's."""
        from html import escape

        return (f'<iframe srcdoc="{escape(self.html)}" style="width:100%;height:900px;'
                'border:1px solid #e5e7eb" sandbox></iframe>')

    def __repr__(self) -> str:
        return f"<batchrun report of {self.output}: {len(self.html):,} bytes of HTML>"


def build_report(output: Path | str) -> Report:
    """Gather what is known about the run of `output` and lay it out as a page."""
    require_plotting()
    from batchrun.views.report import charts, page
    from batchrun.views.report.facts import gather

    output = Path(output)
    facts = gather(output)
    svgs = {}
    if facts.timeline:
        svgs["timeline"] = charts.timeline_svg(facts.timeline, facts.grain,
                                               facts.endpoint_timelines)
    if len(facts.latencies_ms):
        svgs["latency"] = charts.latency_svg(facts.latencies_ms)
    return Report(output, page.render(facts, svgs), facts)
