"""Export (`batchrun export OUTPUT`): what a stopped or running output has so far, as a file.

A run stopped by a job-wide failure (exit 3) or an interrupt (exit 130) writes no output: its
answers wait in the journal for the next run. Export lays them out now, with the finished
output's columns and order; the rows not answered yet are `status = "pending"`, and the metadata
says the file is partial. It reads the journal read-only and takes no lock, so it works while the
run goes on; the finished output and its contract are untouched.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from batchrun.data.locations import check_url, home, is_jsonl_output, is_url
from batchrun.data.read import open_input
from batchrun.errors import UsageError
from batchrun.journal.database import Journal, journal_path
from batchrun.running.output import RESULT_NAMES, parsed_type, write_partial
from batchrun.running.summary import endpoint_figures


def default_target(output: Path | str) -> Path:
    """`X.parquet` -> `X.partial.parquet` beside it (a URL's in the current folder)."""
    name = str(output).rpartition("/")[2] if is_url(output) else Path(output).name
    stem, dot, suffix = name.rpartition(".")
    partial = f"{stem}.partial.{suffix}" if dot else f"{name}.partial"
    return Path(partial) if is_url(output) else Path(output).with_name(partial)


def export(output: Path | str, to: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the partial output of `output` to `to` (default `default_target`); where, and the
    rows it holds by status."""
    if is_url(output):
        check_url(output)
    path = journal_path(home(output))
    if not path.exists():
        raise UsageError(f"no run found for {output} (no journal at {path})")
    target = to if to is not None else default_target(output)
    if is_jsonl_output(target) != is_jsonl_output(str(output)):
        raise UsageError(f"--to {target}: an export keeps the output's format; name it "
                         f"{default_target(output).name}")
    try:
        journal = Journal(path, readonly=True)
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"journal {path} is not readable ({exc})") from None
    try:
        # One read transaction: a running run's commits after this point are not seen, so the
        # counts in the metadata are the rows' own (WAL gives a reader a snapshot).
        journal.db.execute("BEGIN")
        meta = journal.meta()
        layout = meta.get("layout")
        if not isinstance(layout, dict):
            raise UsageError(f"journal {path} was written by an older batchrun that does not "
                             "record the output's layout; run the job again to finish it")
        table = open_input(layout["input"], layout.get("encoding") or "utf8")
        clash = sorted(set(table.columns) & set(RESULT_NAMES))
        if clash:
            raise UsageError(f"input column '{clash[0]}' has the name of an output column")
        kind = parsed_type(layout.get("response_format") or "text", layout.get("schema"), journal)
        counts = journal.counts()
        total = table.count_rows()
        rows = {"total": total, "ok": counts["ok"], "error": counts["error"],
                "pending": max(0, total - counts["ok"] - counts["error"])}
        if layout.get("cache"):
            rows["cached"] = counts["cached"]
        target.parent.mkdir(parents=True, exist_ok=True)
        # A run with endpoints says so in its layout (an older one's rows show it too).
        endpoints = bool(layout.get("endpoints", counts["endpoints"]))
        write_partial(target, layout.get("id_column"), kind, bool(layout.get("cache")), table,
                      journal, _metadata(meta, counts, rows, endpoints), endpoints)
    finally:
        journal.close()
    return target, rows


def _metadata(meta: dict[str, Any], counts: dict[str, Any], rows: dict[str, int],
              endpoints: bool) -> dict[str, Any]:
    """The `batchrun` metadata of a partial output: what the finished one has, known so far."""
    return {
        "version": 1,
        "partial": True,
        "state": meta.get("state"),
        "stop_reason": meta.get("stop_reason"),
        "rows": rows,
        "usage": {"prompt_tokens": counts["prompt_tokens"],
                  "completion_tokens": counts["completion_tokens"],
                  "total_tokens": counts["total_tokens"],
                  "cached_tokens": counts["cached_tokens"],
                  "reasoning_tokens": counts["reasoning_tokens"]},
        "requests": {"sent": counts["attempts"]},
        "cost_usd": counts["cost_usd"],
        "provider_cost": counts["provider_cost"],
        **({"endpoints": {name: endpoint_figures(sums) for name, sums
                          in counts["endpoints"].items()}} if endpoints else {}),
        "model": meta.get("model"),
        "base_url": meta.get("base_url"),
        "started_at": meta.get("started_at"),
        "exported_at": time.time(),
    }
