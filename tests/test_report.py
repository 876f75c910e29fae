"""`batchrun report` and `run --report`: one report per kind of run, each opened in headless Chromium.

The pages are checked as a browser renders them: no console errors, nothing fetched, no script,
charts drawn with data, and header figures equal to the output's metadata (or the journal's).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import batchrun
from batchrun.journal.database import Journal
from batchrun.sim import Step

from .chromium import check_page
from .helpers import (
    TEST_KEY,
    clean_env,
    cli_in_process,
    journal_count,
    journal_file,
    prompts_csv,
    read_output,
    run_cli,
    start_cli,
    wait_until,
    write_csv,
)

REPO = Path(__file__).resolve().parent.parent
HOSTILE_ANSWER = "<script>document.title='owned'</script><img src=\"http://192.0.2.1/x.png\">"


def _browse(page: Path) -> dict[str, Any]:
    """The page as Chromium saw it; fails on any console error, fetch or script."""
    seen = check_page(page)
    assert seen.console_errors == [], seen.console_errors
    probe = seen.probe
    assert probe["scripts"] == 0 and probe["fetched"] == [], probe["fetched"]
    return probe


def _groups(probe: dict[str, Any], chart: str, prefix: str) -> list[dict[str, Any]]:
    groups = probe["charts"][f"chart-{chart}"]["groups"]
    return [g for name, g in groups.items() if name.startswith(prefix)]


def _drawn(probe: dict[str, Any], chart: str, prefix: str) -> int:
    """How many shapes of a series have a visible height (bars) or points (lines)."""
    return sum(1 for g in _groups(probe, chart, prefix) if g["height"] > 0 or g["points"] > 2)


def _metadata(output: Path) -> dict[str, Any]:
    return json.loads(pq.read_schema(output).metadata[b"batchrun"])


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def _events(stderr: str) -> dict[str, dict[str, Any]]:
    found = {}
    for line in stderr.splitlines():
        record = json.loads(line)
        if "event" in record:
            found[record["event"]] = record
    return found


@pytest.mark.browser
def test_the_demo_run_writes_its_report_and_names_it(tmp_path: Path) -> None:
    out = tmp_path / "demo.parquet"
    result = run_cli("run", REPO / "jobs" / "demo.toml", "--output", out, "--report",
                     "--log-format", "json")
    assert result.returncode == 0, result.stderr
    page = tmp_path / "demo.report.html"
    assert f"  report    {page}" in result.stdout.splitlines()
    assert _events(result.stderr)["finish"]["report"] == str(page)

    probe = _browse(page)
    meta = _metadata(out)
    header = probe["header"]
    assert header["state"] == "finished" and header["exit code"] == "0"
    assert _number(header["rows"]) == meta["rows"]["total"] == 300
    assert _number(header["ok"]) == meta["rows"]["ok"]
    assert _number(header["error"]) == meta["rows"]["error"] == 0
    assert _number(header["pending"]) == 0
    assert _number(header["tokens"]) == meta["usage"]["total_tokens"]
    assert header["cost"] == f"${meta['cost_usd']:.4f}"
    assert "sim-1" in probe["text"] and meta["base_url"] in probe["text"]

    # The timeline: one point a second of a ~10 s run paced at 30 requests/s, under its limit.
    timeline = probe["charts"]["chart-timeline"]
    assert timeline["width"] > 800 and timeline["height"] > 300
    points = _groups(probe, "timeline", "series-requests")[0]["points"]
    assert 6 <= points <= 40
    assert _groups(probe, "timeline", "series-tokens")[0]["points"] == points
    assert _groups(probe, "timeline", "series-rpm-limit")[0]["points"] == points
    assert _drawn(probe, "timeline", "bar-") == 0  # nothing failed, nothing to mark
    # The latency histogram holds every answer; its percentiles are the output's.
    assert _drawn(probe, "latency", "bar-") >= 1
    latency = [r["latency_ms"] for r in read_output(out)]
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        value = float(np.percentile(latency, q))
        assert re.search(rf"{name} {value:,.0f} ms|{name} {value:.2f} ms", probe["text"]), name
    assert probe["samples"] == ["ok"] * 10


@pytest.mark.browser
def test_a_run_with_429s_and_errors_shows_them_on_the_timeline(tmp_path: Path, sim) -> None:
    server = sim(api_key=TEST_KEY)
    server.rule("number 7.", Step.status(400, f"bad request from key {TEST_KEY}"))  # row-fatal
    server.rule("number 9.", Step.status(500))  # every attempt: gives up (server)
    server.rule("number 11.", Step.status(429, "Rate limit reached", retry_after_ms=20))
    answer = json.dumps({"choices": [{"message": {"role": "assistant", "content": HOSTILE_ANSWER},
                                      "finish_reason": "stop"}], "model": "sim-1",
                         "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})
    server.rule("number 0.", Step.body(answer))  # the first answered row: always shown
    # Two rows fail once and are answered on a retry (no row can take both: 3 attempts each).
    server.script(Step.status(429, "Rate limit reached", retry_after_ms=30), Step.status(503))
    src = write_csv(tmp_path / "in.csv", [
        {"id": i, "prompt": f"Summarize review number {i}." + (" <b>bold</b>" if i == 7 else "")}
        for i in range(80)])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--rpm", 1500, "--max-attempts", 3, "--concurrency", 4,
                     "--row-deadline", 1.5,  # a row refused with 429s gives up by its deadline
                     "--no-progress", env=clean_env(BATCHRUN_API_KEY=TEST_KEY))
    assert result.returncode == 1, result.stderr
    report = run_cli("report", out)
    assert report.returncode == 0, report.stderr
    page = tmp_path / "out.report.html"
    assert report.stdout.strip() == str(page)
    html = page.read_text()
    assert TEST_KEY not in html  # scrubbed from the error the server echoed
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html

    probe = _browse(page)
    assert probe["title"].startswith("batchrun report")  # the answer's script never ran
    assert HOSTILE_ANSWER in probe["text"]  # shown as text
    meta = _metadata(out)
    header = probe["header"]
    assert (_number(header["ok"]), _number(header["error"])) == (meta["rows"]["ok"], 3)
    assert header["exit code"] == "1"
    assert _drawn(probe, "timeline", "bar-rate_limited") >= 1
    assert _drawn(probe, "timeline", "bar-transient") >= 1
    assert _drawn(probe, "timeline", "bar-errors") >= 1
    assert sum(g["uses"] for g in _groups(probe, "timeline", "marks-retries")) >= 1

    errors = probe["errors"]
    sim_429s = server.stats.status_counts[429]
    sim_5xx = server.stats.status_counts[500] + server.stats.status_counts[503]
    assert _number(errors["rate"][1]) == sim_429s and _number(errors["rate"][2]) == 1
    assert _number(errors["server"][1]) == sim_5xx and _number(errors["server"][2]) == 1
    assert errors["row-fatal"][2] == "1" and "bad request from key ***" in errors["row-fatal"][3]
    assert "HTTP 429" in errors["rate"][3] and "HTTP 500" in errors["server"][3]
    assert probe["samples"][:3] == ["error"] * 3 and set(probe["samples"][3:]) == {"ok"}


@pytest.mark.browser
def test_failures_that_were_all_retried_say_so_instead_of_no_examples(tmp_path: Path, sim) -> None:
    server = sim()
    server.script(Step.status(503), Step.status(502), Step.status(500))  # retried, then answered
    src = prompts_csv(tmp_path / "in.csv", 20)
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--no-progress", "--report")
    assert result.returncode == 0, result.stderr
    errors = _browse(tmp_path / "out.report.html")["errors"]
    assert _number(errors["server"][1]) == 3 and errors["server"][2] == "0"
    assert errors["server"][3] == "no row failed for good: every one was retried"
    assert errors["rate"][3] == "none"  # nothing of that class happened at all


@pytest.mark.browser
def test_a_stopped_run_is_reported_from_its_journal(tmp_path: Path, sim) -> None:
    server = sim(latency=0.01)
    src = prompts_csv(tmp_path / "in.csv", 60)
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--max-total-tokens", 700, "--concurrency", 2,
                     "--max-tokens", 20, "--report", "--no-progress")
    assert result.returncode == 3, result.stderr
    assert not out.exists()
    page = tmp_path / "out.report.html"
    assert f"  report    {page}" in result.stdout.splitlines()  # with the stop's summary

    probe = _browse(page)
    header = probe["header"]
    ok = journal_count(out)
    assert header["state"] == "stopped" and header["exit code"] == "3"
    assert _number(header["ok"]) == ok and 0 < ok < 60
    assert _number(header["pending"]) == 60 - ok
    assert "budget reached: --max-total-tokens 700" in probe["errors"]["job stop"][3]
    requests = _groups(probe, "timeline", "series-requests")[0]
    assert requests["points"] >= 1  # a short run may have a single sample: one point
    journal = Journal(journal_file(out), readonly=True)
    assert sum(s.sent for s in journal.timeline()) == server.stats.requests
    journal.close()
    assert "pending" in probe["samples"] and probe["samples"][0] == "ok"
    # The stopped run's sample rows still show their inputs, read from the input file.
    assert "Summarize review number 0." in probe["text"]


def test_a_running_run_has_a_report_too(tmp_path: Path, sim) -> None:
    server = sim(latency=0.05)
    src = prompts_csv(tmp_path / "in.csv", 400)
    out = tmp_path / "out.parquet"
    proc = start_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--concurrency", 2, "--no-progress")
    try:
        wait_until(lambda: journal_count(out) >= 10, proc)
        report = batchrun.report(out)
        header = report.facts.header
        assert header.state == "running" and header.exit_code is None
        assert header.rows_total == 400 and 10 <= header.rows_ok < 400
        assert header.rows_pending == 400 - header.rows_ok
        assert "exit code" in report.html and "running" in report.html
        shown = report._repr_html_()
        assert shown.startswith("<iframe srcdoc=\"&lt;!DOCTYPE html&gt;")
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_a_jsonl_output_is_reported_from_its_journal(tmp_path: Path, sim) -> None:
    server = sim()
    server.rule("number 2.", Step.status(400, "bad row"))
    src = prompts_csv(tmp_path / "in.csv", 12)
    out = tmp_path / "out.jsonl"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--report", "--no-progress")
    assert result.returncode == 1, result.stderr
    assert f"  report    {tmp_path / 'out.jsonl.report.html'}" in result.stdout.splitlines()
    header = batchrun.report(out).facts.header
    assert (header.state, header.rows_ok, header.rows_error, header.exit_code) == (
        "finished", 11, 1, 1)


def test_report_of_nothing_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_cli("report", tmp_path / "never.parquet")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (f"batchrun: no run found for {tmp_path / 'never.parquet'} "
                                     f"(no output and no journal at "
                                     f"{tmp_path / 'never.journal.sqlite'})")


def test_without_matplotlib_report_says_how_to_install_it(
        tmp_path: Path, sim, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    code, out, err = cli_in_process(monkeypatch, capsys, "report", tmp_path / "x.parquet")
    assert (code, out) == (2, "")
    assert err == "batchrun: the report needs matplotlib: pip install 'batchrun[report]'\n"
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    code, out, err = cli_in_process(monkeypatch, capsys, "run", "--input", src, "--base-url",
                                    server.base_url, "--model", "m", "--report", "--no-progress")
    assert code == 2 and "pip install 'batchrun[report]'" in err
    assert server.stats.requests == 0  # refused before anything was sent
