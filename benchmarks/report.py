"""Report: build the HTML report of a million-row output and print its build time and size.

    python benchmarks/report.py [--rows 1000000] [--hours 3]

The output and its journal are synthesized directly (a real million-row run takes minutes): a
Parquet output in batchrun's format with its `batchrun` metadata, 1% failed rows of every class,
lognormal latencies, and a journal whose timeline covers a run of `--hours` at one sample a second.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from batchrun.journal.database import Journal, Sample, journal_path
from batchrun.running.output import RESULT_FIELDS
from batchrun.views.report import build_report

ERRORS = (
    "HTTP 429 Too Many Requests (rate_limit_exceeded): Rate limit reached (gave up after 6 attempts)",
    "HTTP 503 Service Unavailable: overloaded (gave up after 6 attempts)",
    "HTTP 400 Bad Request (context_length_exceeded): maximum context length is 128000 tokens",
    "content filtered by the provider",
)


def synthesize(output: Path, rows: int, hours: float, rng: np.random.Generator) -> None:
    """A finished run's output and journal, as batchrun would have left them."""
    failed = rng.random(rows) < 0.01
    ok = ~failed
    prompt_tokens = rng.integers(50, 400, rows)
    completion_tokens = rng.integers(10, 120, rows)
    latency = rng.lognormal(np.log(900), 0.5, rows)
    cost = (prompt_tokens * 0.15 + completion_tokens * 0.6) / 1e6
    status = np.where(ok, "ok", "error")
    error = [ERRORS[i % len(ERRORS)] if f else None for i, f in enumerate(failed)]
    columns = {
        "id": pa.array(np.arange(rows)),
        "prompt": pa.array([f"Summarize review number {i}: the product was fine." for i in range(rows)]),
        "response": pa.array([f"summary: review {i} is positive.\nlabel: praise" if o else None
                              for i, o in enumerate(ok)]),
        "finish_reason": pa.array(np.where(ok, "stop", "error")),
        "prompt_tokens": pa.array(prompt_tokens, mask=failed),
        "completion_tokens": pa.array(completion_tokens, mask=failed),
        "total_tokens": pa.array(prompt_tokens + completion_tokens, mask=failed),
        "status": pa.array(status),
        "error": pa.array(error, pa.string()),
        "attempts": pa.array(np.where(ok, 1, 6).astype(np.int32)),
        "latency_ms": pa.array(latency, mask=failed),
        "model": pa.array(np.where(rng.random(rows) < 0.8, "gpt-4o-mini", "gpt-4o")),
        "response_id": pa.array([f"chatcmpl-{i}" for i in range(rows)]),
        "cost_usd": pa.array(cost, mask=failed),
    }
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("prompt", pa.string()),
                        *RESULT_FIELDS])
    table = pa.table(columns, schema=schema)
    started = time.time() - hours * 3600
    metadata = {
        "version": 1, "rows": {"total": rows, "ok": int(ok.sum()), "error": int(failed.sum())},
        "usage": {"prompt_tokens": int(prompt_tokens[ok].sum()),
                  "completion_tokens": int(completion_tokens[ok].sum()),
                  "total_tokens": int((prompt_tokens + completion_tokens)[ok].sum())},
        "requests": {"sent": rows, "retried": 0}, "cost_usd": float(cost[ok].sum()),
        "model": "gpt-4o-mini", "provider": "openai", "base_url": "https://api.openai.com/v1",
        "started_at": started, "finished_at": started + hours * 3600,
    }
    table = table.replace_schema_metadata({b"batchrun": orjson.dumps(metadata)})
    pq.write_table(table, output, row_group_size=16_384)

    seconds = int(hours * 3600)
    per_s = rows / seconds
    sent = rng.poisson(per_s, seconds)
    limited = rng.poisson(0.02, seconds)
    journal = Journal(journal_path(output))
    journal.set_meta(state="finished", model="gpt-4o-mini", base_url=metadata["base_url"],
                     total_rows=rows, started_at=started, finished_at=metadata["finished_at"],
                     exit_code=1, input="in.csv", output=str(output))
    journal.append_timeline([Sample(
        t=started + s + 1, span=1.0, run=started, sent=int(sent[s]), ok=int(sent[s]), errors=0,
        retries=int(limited[s]), rate_limited=int(limited[s]), transient=0,
        prompt_tokens=int(sent[s]) * 225, completion_tokens=int(sent[s]) * 65, in_flight=64,
        pauses=int(limited[s] > 1), rpm=per_s * 60, tpm=per_s * 60 * 300, rpm_limit=10_000.0,
        tpm_limit=2_000_000.0) for s in range(seconds)])
    journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "big.parquet"
        began = time.perf_counter()
        synthesize(output, args.rows, args.hours, np.random.default_rng(7))
        made = time.perf_counter() - began
        began = time.perf_counter()
        page = build_report(output).save()
        built = time.perf_counter() - began
        size = page.stat().st_size
        print(f"synthesized {args.rows:,} rows and {args.hours:g} h of timeline in {made:.1f} s "
              f"(output {output.stat().st_size / 1e6:.1f} MB)")
        print(f"report built in {built:.2f} s: {size:,} bytes ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
