"""Status: what the journal of an output says, readable while a run is going."""

from __future__ import annotations

import time
from pathlib import Path

from .errors import UsageError
from .journal import Journal, OutputLock, journal_path


def describe(output: Path) -> str:
    """A few lines: rows answered, failed and left; usage and cost; running or not; last progress."""
    path = journal_path(output)
    if not path.exists():
        raise UsageError(f"no run found for {output} (no journal at {path})")
    journal = Journal(path, readonly=True)
    try:
        meta = journal.meta()
        counts = journal.counts()
    finally:
        journal.close()
    total = meta.get("total_rows") or counts["mapped"]
    left = max(0, total - counts["ok"] - counts["error"])
    pid = OutputLock(output).held_elsewhere()
    state = f"running (pid {pid})" if pid else meta.get("state", "unknown")
    if state == "running" and not pid:
        state = "interrupted (no process holds it)"
    last = meta.get("last_progress_at")
    ago = f"{time.time() - float(last):.0f} s ago" if last else "never"
    cost = counts["cost_usd"]
    lines = [
        f"{output}: {state}",
        f"  rows      {total} total: {counts['ok']} answered, {counts['error']} failed, {left} left",
        f"  tokens    {counts['prompt_tokens']:,} prompt + {counts['completion_tokens']:,} "
        f"completion = {counts['total_tokens']:,}",
        f"  cost      ${cost:.4f}" if cost else "  cost      $0 (or no price known)",
        f"  requests  {counts['attempts']:,} sent for these rows",
        f"  progress  last at {ago}",
    ]
    if meta.get("stop_reason"):
        lines.append(f"  stopped   {meta['stop_reason']}")
    return "\n".join(lines)
