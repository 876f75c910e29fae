"""Per-endpoint totals of a pooled run: the `endpoint` column, one sidecar row per endpoint and
model, the metadata's `endpoints` block, the summary's and `status`'s lines and the report's
table and timeline, each the same figures. Real runs of the pool against simulators."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.views.report import build_report

from .helpers import prompts_csv, read_output, run_cli
from .test_endpoints_pool import endpoint, run_pool

ROWS = 40


@pytest.fixture
def pooled(tmp_path: Path, sim) -> tuple[Path, Any, Any, Any]:
    """A run of ROWS rows on two endpoints: A reports cached tokens and its cost; B reports
    neither, and answers a fifth of its requests with a busy provider's 429."""
    a = sim(latency=0.005, cached_share=0.5, report_cost=True)
    b = sim(latency=0.005, stray_429_rate=0.2)
    result = run_pool(tmp_path, prompts_csv(tmp_path / "in.csv", ROWS),
                      endpoint("A", a, model="sim-1", concurrency=4),
                      endpoint("B", b, model="sim-1", rpm=1200, concurrency=4))
    assert result.returncode == 0, result.stderr
    return tmp_path / "out.parquet", a, b, result


def _split(rows: list[dict[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in rows:
        found[row["endpoint"]] = found.get(row["endpoint"], 0) + 1
    return found


def test_the_sidecar_has_a_row_per_endpoint_and_model_and_the_metadata_a_block(pooled) -> None:
    out, a, b, result = pooled
    rows = read_output(out)
    split = _split(rows)
    assert set(split) == {"A", "B"} and split["A"] == a.stats.ok and split["B"] == b.stats.ok

    sidecar = {r["endpoint"]: r for r in pq.read_table(out.with_name("out.usage.parquet"))
               .to_pylist()}
    assert pq.read_schema(out.with_name("out.usage.parquet")).names[:2] == ["endpoint", "model"]
    assert set(sidecar) == {"A", "B"} and {r["model"] for r in sidecar.values()} == {"sim-1"}
    for name, server in (("A", a), ("B", b)):
        assert sidecar[name]["rows_ok"] == split[name]
        assert sidecar[name]["prompt_tokens"] == server.stats.billed_prompt_tokens
    assert sidecar["A"]["cached_tokens"] == a.stats.billed_cached_tokens > 0
    assert math.isclose(sidecar["A"]["provider_cost"], a.stats.billed_usd, rel_tol=1e-9)
    assert sidecar["B"]["cached_tokens"] is None and sidecar["B"]["provider_cost"] is None

    meta = json.loads(pq.read_schema(out).metadata[b"batchrun"])
    block = meta["endpoints"]
    assert list(block) == ["A", "B"]
    for name, server in (("A", a), ("B", b)):
        assert block[name]["rows"] == {"ok": split[name], "error": 0}
        assert block[name]["model"] == "sim-1" and block[name]["base_url"] == server.base_url
        assert block[name]["requests"] == sidecar[name]["requests"]
    assert math.isclose(block["A"]["provider_cost"], meta["provider_cost"], rel_tol=1e-9)
    assert block["B"]["provider_cost"] is None
    assert block["A"]["usage"]["cached_tokens"] == meta["usage"]["cached_tokens"]

    for name, server in (("A", a), ("B", b)):
        assert block[name]["this_run"] == {"requests_sent": server.stats.requests,
                                           "retries": server.stats.rate_limited,
                                           "rate_limited": server.stats.rate_limited}
        line = next(x for x in result.stdout.splitlines() if f"endpoint  {name}:" in x)
        assert f"{split[name]} ok, 0 error" in line
        assert f"; {server.stats.rate_limited} rate-limited (429)" in line


def test_status_and_the_report_show_each_endpoint_with_its_429s(pooled) -> None:
    out, a, b, _ = pooled
    split = _split(read_output(out))
    status = run_cli("status", out)
    assert status.returncode == 0, status.stderr
    lines = {line.split(":")[0].split()[-1]: line for line in status.stdout.splitlines()
             if line.startswith("  endpoint")}
    assert set(lines) == {"A", "B"}
    assert f"{split['B']} ok" in lines["B"]
    assert b.stats.rate_limited > 0
    assert f"{b.stats.rate_limited} rate-limited (429)" in lines["B"]
    assert "0 rate-limited (429)" in lines["A"] and "(provider $" in lines["A"]

    scripted = json.loads(run_cli("status", out, "--format", "json").stdout)
    assert scripted["rows"]["ok"] == ROWS and scripted["state"] == "finished"
    assert {name: (e["rows"]["ok"], e["rate_limited"]) for name, e in
            scripted["endpoints"].items()} == {"A": (split["A"], 0),
                                               "B": (split["B"], b.stats.rate_limited)}
    assert scripted["endpoints"]["A"]["usage"]["cached_tokens"] == a.stats.billed_cached_tokens

    report = build_report(out)
    endpoints = {e.name: e for e in report.facts.endpoints}
    assert set(endpoints) == {"A", "B"}
    assert endpoints["B"].rows_ok == split["B"] and endpoints["B"].rate_limited == b.stats.rate_limited
    assert endpoints["A"].provider_cost is not None and endpoints["B"].provider_cost is None
    assert endpoints["A"].pace_rpm is not None and endpoints["A"].pace_rpm > 0
    # The run's timeline counts every request once; the endpoints' split it.
    assert sum(s.sent for s in report.facts.timeline) == a.stats.requests + b.stats.requests
    assert 'id="endpoints-table"' in report.html and 'data-endpoint="B"' in report.html
    assert "series-endpoint-0" in report.html and "series-endpoint-1" in report.html
    assert report.facts.header.provider_cost is not None
    assert report.facts.header.cached_tokens == a.stats.billed_cached_tokens


def test_an_export_of_a_pooled_run_keeps_the_endpoint_column(pooled) -> None:
    out, *_ = pooled
    target = out.with_name("partial.parquet")
    result = run_cli("export", out, "--to", target)
    assert result.returncode == 0, result.stderr
    exported = read_output(target)
    assert [r["endpoint"] for r in exported] == [r["endpoint"] for r in read_output(out)]
    meta = json.loads(pq.read_schema(target).metadata[b"batchrun"])
    assert set(meta["endpoints"]) == {"A", "B"}


def test_run_dataframe_with_endpoints_returns_the_endpoint_column(sim) -> None:
    import pandas as pd

    from batchrun import run_dataframe

    first, second = sim(), sim(report_cost=True)
    df = pd.DataFrame({"prompt": [f"question {i}" for i in range(6)]})
    frame = run_dataframe(df, progress=False, concurrency=1, endpoints=[
        {"name": "A", "base_url": first.base_url, "model": "sim-1"},
        {"name": "B", "base_url": second.base_url, "model": "sim-1"}])
    assert (frame["endpoint"] == "A").sum() == first.stats.ok
    assert (frame["endpoint"] == "B").sum() == second.stats.ok
    assert frame["provider_cost"].notna().sum() == second.stats.ok


@pytest.mark.browser
def test_the_report_page_draws_each_endpoint_on_the_timeline(pooled) -> None:
    from .chromium import check_page

    out, *_ = pooled
    page = build_report(out).save()
    seen = check_page(page)
    assert seen.console_errors == [] and seen.probe["fetched"] == []
    groups = seen.probe["charts"]["chart-timeline"]["groups"]
    for k in (0, 1):  # A and B, in name order: each drawn with at least one point
        drawn = groups[f"series-endpoint-{k}"]
        assert drawn["points"] + drawn["uses"] >= 1, drawn
    assert seen.probe["header"]["provider cost"].startswith("$")
    assert "pace (requests/min)" in seen.probe["text"]
