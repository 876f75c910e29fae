"""Cost as the provider counts it: cached and reasoning tokens and a reported `usage.cost` come
through to the output's columns, the sidecar, the metadata, the summary and `status`, a cached
price bills the cached tokens, and `--max-cost` spends what the provider says it billed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from batchrun.protocol.answers import parse_answer
from batchrun.settings.config import build_config
from batchrun.settings.prices import Price, batch_price, price_for
from batchrun.sim import Step

from .helpers import prompts_csv, read_output, run_cli, run_job, write_csv

# Each row's answer, scripted: (prompt_tokens, completion_tokens, cached, reasoning, cost).
SCRIPTED = {
    "alpha": (1000, 200, 768, 120, 0.0021),
    "bravo": (500, 100, 0, 0, 0.0007),
    "charlie": (300, 50, None, None, None),  # a provider that reports no details for this one
}


def _body(name: str, prompt: int, completion: int, cached: int | None, reasoning: int | None,
          cost: float | None) -> bytes:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached, "audio_tokens": 0}
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    if cost is not None:
        usage["cost"] = cost
    return orjson.dumps({
        "id": f"chatcmpl-{name}", "object": "chat.completion", "created": 1, "model": "sim-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {name}"},
                     "finish_reason": "stop"}],
        "usage": usage,
    })


def _scripted(sim: Any) -> Any:
    server = sim()
    for name, figures in SCRIPTED.items():
        server.rule(name, Step.body(_body(name, *figures)))
    return server


def _input(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "in.csv", [{"prompt": f"Tell me about {n}."} for n in SCRIPTED])


# --- reading an answer's usage ------------------------------------------------------------------


@pytest.mark.parametrize(("usage", "expected"), [
    ({}, (None, None, None)),
    ({"prompt_tokens_details": None, "completion_tokens_details": None, "cost": None},
     (None, None, None)),
    ({"prompt_tokens_details": {"cached_tokens": 64}, "completion_tokens_details":
      {"reasoning_tokens": 7}, "cost": 0.5}, (64, 7, 0.5)),
    ({"cost": 1}, (None, None, 1.0)),
    # Garbage is unknown, never a failure of an otherwise good answer.
    ({"prompt_tokens_details": {"cached_tokens": "64"}, "completion_tokens_details":
      {"reasoning_tokens": -1}, "cost": "0.5"}, (None, None, None)),
    ({"prompt_tokens_details": [64], "completion_tokens_details": {"reasoning_tokens": True},
      "cost": True}, (None, None, None)),
    ({"prompt_tokens_details": {"cached_tokens": 10**12}, "cost": -0.1}, (None, None, None)),
])
def test_an_answer_s_usage_details_are_read_defensively(usage: dict[str, Any],
                                                        expected: tuple[Any, ...]) -> None:
    for shape in ("fast", "careful"):
        body: dict[str, Any] = {
            "id": "x", "model": "m", "usage": {"prompt_tokens": 100, "completion_tokens": 10,
                                               "total_tokens": 110, **usage},
            "choices": [{"message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}]}
        if shape == "careful":  # no total: not the one-look reading of a complete answer
            del body["usage"]["total_tokens"]
        answer, failure = parse_answer(orjson.dumps(body))
        assert failure is None and answer is not None
        assert (answer.cached_tokens, answer.reasoning_tokens, answer.provider_cost) == expected


def test_cached_prompt_tokens_cost_the_cached_price_and_the_rest_the_input_price() -> None:
    price = Price(2.0, 8.0, 0.5)
    assert math.isclose(price.cost(1000, 100, 600), (400 * 2 + 600 * 0.5 + 100 * 8) / 1e6)
    assert math.isclose(Price(2.0, 8.0).cost(1000, 100, 600), (1000 * 2 + 100 * 8) / 1e6)
    assert math.isclose(price.cost(100, 0, 500), 100 * 0.5 / 1e6)  # never more than the prompt
    assert batch_price(price) == Price(1.0, 4.0, 0.25)
    known = price_for("gpt-4o-mini")
    assert known is not None and known.cached_input_per_million == 0.075


def test_the_job_file_s_cached_price_is_read_with_the_others(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("prompt\nhi\n", encoding="utf-8")
    job = tmp_path / "job.toml"
    job.write_text('[input]\npath = "in.csv"\n[request]\nmodel = "m"\n[pricing]\n'
                   "input_per_million = 2\noutput_per_million = 8\n"
                   "cached_input_per_million = 0.5\n", encoding="utf-8")
    assert build_config(job, {}).price == Price(2.0, 8.0, 0.5)
    job.write_text('[input]\npath = "in.csv"\n[request]\nmodel = "m"\n[pricing]\n'
                   "cached_input_per_million = 0.5\n", encoding="utf-8")
    result = run_cli("plan", str(job))
    assert result.returncode == 2
    assert ("cached_input_per_million needs input_per_million and output_per_million"
            in result.stderr)


# --- a run: columns, sidecar, metadata, summary, status ---------------------------------------


def test_reported_details_reach_the_columns_the_sidecar_the_metadata_and_the_summary(
    tmp_path: Path, sim
) -> None:
    server = _scripted(sim)
    out = tmp_path / "out.parquet"
    job = tmp_path / "job.toml"
    job.write_text(f'[input]\npath = "{_input(tmp_path)}"\n[output]\npath = "{out}"\n'
                   f'[provider]\nbase_url = "{server.base_url}"\n[request]\nmodel = "sim-1"\n'
                   "[pricing]\ninput_per_million = 2\noutput_per_million = 8\n"
                   "cached_input_per_million = 0.5\n", encoding="utf-8")
    result = run_cli("run", job, "--no-progress")
    assert result.returncode == 0, result.stderr

    rows = {r["prompt"].split()[-1].rstrip("."): r for r in read_output(out)}
    for name, (prompt, completion, cached, reasoning, cost) in SCRIPTED.items():
        row = rows[name]
        assert (row["cached_tokens"], row["reasoning_tokens"], row["provider_cost"]) == (
            cached, reasoning, cost), name
        ours = ((prompt - (cached or 0)) * 2 + (cached or 0) * 0.5 + completion * 8) / 1e6
        assert math.isclose(row["cost_usd"], ours), name
    assert "endpoint" not in pq.read_schema(out).names  # a run without endpoints

    meta = json.loads(pq.read_schema(out).metadata[b"batchrun"])
    assert meta["usage"]["cached_tokens"] == 768 and meta["usage"]["reasoning_tokens"] == 120
    assert math.isclose(meta["provider_cost"], 0.0028)
    assert "endpoints" not in meta
    (usage,) = pq.read_table(out.with_name("out.usage.parquet")).to_pylist()
    assert (usage["cached_tokens"], usage["reasoning_tokens"]) == (768, 120)
    assert math.isclose(usage["provider_cost"], 0.0028)
    assert math.isclose(usage["cost_usd"], sum(r["cost_usd"] for r in rows.values()))

    assert "(768 cached, 120 reasoning)" in result.stdout
    assert "the provider reported $0.0028" in result.stdout
    status = run_cli("status", out)
    assert status.returncode == 0, status.stderr
    assert "(768 cached, 120 reasoning)" in status.stdout
    assert "the provider reported $0.0028" in status.stdout
    scripted = json.loads(run_cli("status", out, "--format", "json").stdout)
    assert (scripted["usage"]["cached_tokens"], scripted["usage"]["reasoning_tokens"]) == (768, 120)
    assert math.isclose(scripted["provider_cost"], 0.0028)
    assert scripted["endpoints"] == {}  # a run without endpoints


def test_a_provider_that_reports_no_details_leaves_them_null_not_zero(tmp_path: Path, sim) -> None:
    server = sim()
    out = tmp_path / "out.parquet"
    run_job(prompts_csv(tmp_path / "in.csv", 3), out, server.base_url, check=True)
    for row in read_output(out):
        assert (row["cached_tokens"], row["reasoning_tokens"], row["provider_cost"]) == (
            None, None, None)
    (usage,) = pq.read_table(out.with_name("out.usage.parquet")).to_pylist()
    assert usage["cached_tokens"] is None and usage["provider_cost"] is None


def test_the_jsonl_output_carries_the_provider_s_usage_details(tmp_path: Path, sim) -> None:
    server = _scripted(sim)
    out = tmp_path / "out.jsonl"
    run_job(_input(tmp_path), out, server.base_url, check=True)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    usages = {line["response"]["body"]["id"]: line["response"]["body"]["usage"]
              for line in lines}
    alpha = usages["chatcmpl-alpha"]
    assert alpha["prompt_tokens_details"] == {"cached_tokens": 768}
    assert alpha["completion_tokens_details"] == {"reasoning_tokens": 120}
    assert alpha["cost"] == 0.0021
    assert "cost" not in usages["chatcmpl-charlie"]
    assert "prompt_tokens_details" not in usages["chatcmpl-charlie"]
    assert all("endpoint" not in line for line in lines)


def test_a_dedup_copy_shows_the_answer_but_none_of_its_details(tmp_path: Path, sim) -> None:
    server = _scripted(sim)
    src = write_csv(tmp_path / "in.csv", [{"prompt": "Tell me about alpha."}] * 2)
    out = tmp_path / "out.parquet"
    run_job(src, out, server.base_url, "--dedup", check=True)
    first, copy = read_output(out)
    assert (first["cached_tokens"], first["provider_cost"]) == (768, 0.0021)
    assert (copy["cached_tokens"], copy["reasoning_tokens"], copy["provider_cost"]) == (0, 0, 0)
    meta = json.loads(pq.read_schema(out).metadata[b"batchrun"])
    assert meta["usage"]["cached_tokens"] == 768 and meta["provider_cost"] == 0.0021


# --- the budget spends what the provider billed -------------------------------------------------


def _priced_answers(sim: Any, cost: float | None) -> Any:
    """A simulator whose every answer uses 20 + 5 tokens (a millionth of a dollar at sim-1's
    price) and, with `cost`, reports that it billed `cost`."""
    server = sim()
    server.rule("", Step.body(_body("x", 20, 5, None, None, cost)))
    return server


@pytest.mark.parametrize("reported", [False, True])
def test_max_cost_stops_on_the_provider_s_cost_where_our_price_would_not(
    tmp_path: Path, sim, reported: bool
) -> None:
    server = _priced_answers(sim, 0.0004 if reported else None)
    out = tmp_path / "out.parquet"
    result = run_job(prompts_csv(tmp_path / "in.csv", 6), out, server.base_url,
                     "--max-cost", "0.001", "--max-tokens", "10", "--concurrency", "1")
    rows = read_output(out) if out.exists() else []
    if not reported:  # our price: 6 x $0.00003, far under the budget
        assert result.returncode == 0, result.stderr
        assert len(rows) == 6
        return
    assert result.returncode == 3, result.stderr
    assert "budget reached: --max-cost 0.001" in result.stdout + result.stderr
    status = run_cli("status", out)
    # Three answers billed $0.0012 by the provider's count: the fourth did not fit.
    assert "3 answered" in status.stdout, status.stdout
    assert "the provider reported $0.0012" in status.stdout


# --- the simulator's own usage details -----------------------------------------------------------


def test_the_simulator_s_cached_reasoning_and_reported_cost_agree_with_ours(
    tmp_path: Path, sim
) -> None:
    # A provider that serves half of each prompt from its cache, thinks for half of each
    # completion and reports what it billed, at the prices of our built-in list.
    server = sim(cached_share=0.5, reasoning_models=("sim-1",), report_cost=True)
    out = tmp_path / "out.parquet"
    run_job(prompts_csv(tmp_path / "in.csv", 8), out, server.base_url, check=True)
    rows = read_output(out)
    for row in rows:
        assert row["cached_tokens"] == row["prompt_tokens"] // 2
        assert 0 < row["reasoning_tokens"] < row["completion_tokens"]
        # sim-1's cached price is half its input price, as the simulator bills it.
        assert math.isclose(row["provider_cost"], row["cost_usd"], rel_tol=1e-9)
        assert row["cost_usd"] < (row["prompt_tokens"] * 1.0 + row["completion_tokens"] * 2) / 1e6
    meta = json.loads(pq.read_schema(out).metadata[b"batchrun"])
    assert meta["usage"]["cached_tokens"] == sum(r["cached_tokens"] for r in rows)
    assert meta["usage"]["reasoning_tokens"] == sum(r["reasoning_tokens"] for r in rows)
    # What the simulator billed, what it reported and what our output sums are one figure.
    assert server.stats.billed_cached_tokens == meta["usage"]["cached_tokens"]
    assert math.isclose(meta["provider_cost"], server.stats.billed_usd, rel_tol=1e-9)
    assert math.isclose(meta["cost_usd"], server.stats.billed_usd, rel_tol=1e-9)


def test_the_report_shows_the_details_in_its_totals_from_the_output_and_the_journal(
    tmp_path: Path, sim
) -> None:
    from batchrun.views.report import build_report

    server = _scripted(sim)
    out = tmp_path / "out.parquet"
    run_job(_input(tmp_path), out, server.base_url, check=True)
    finished = build_report(out)  # read from the output and its metadata
    out.unlink()
    journal_only = build_report(out)  # the same figures from the journal
    for report in (finished, journal_only):
        head = report.facts.header
        assert (head.cached_tokens, head.reasoning_tokens) == (768, 120)
        assert head.provider_cost is not None and math.isclose(head.provider_cost, 0.0028)
        assert 'data-field="provider cost"' in report.html and "$0.0028" in report.html
        assert 'data-field="cached tokens"' in report.html
        assert report.facts.endpoints == []  # a run without endpoints has no such table
        assert 'id="endpoints-table"' not in report.html


def test_the_report_reads_an_older_output_without_the_detail_columns(tmp_path: Path, sim) -> None:
    from batchrun.views.report import build_report

    server = sim()
    out = tmp_path / "out.parquet"
    run_job(prompts_csv(tmp_path / "in.csv", 3), out, server.base_url, check=True)
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[b"batchrun"])
    for name in ("cached_tokens", "reasoning_tokens"):
        del meta["usage"][name]
    del meta["provider_cost"]
    older = table.drop_columns(["cached_tokens", "reasoning_tokens", "provider_cost"])
    pq.write_table(older.replace_schema_metadata({b"batchrun": json.dumps(meta)}), out)
    head = build_report(out).facts.header
    assert head.rows_ok == 3
    assert (head.cached_tokens, head.reasoning_tokens, head.provider_cost) == (None, None, None)


def test_batch_api_output_lines_carry_the_details_too(tmp_path: Path, sim) -> None:
    from .batch_support import batch_args, env

    server = sim(batch_duration_s=0.0, cached_share=0.5, reasoning_models=("sim-1",),
                 report_cost=True)
    out = tmp_path / "out.parquet"
    result = run_cli(*batch_args(prompts_csv(tmp_path / "in.csv", 5), out, server.base_url),
                     env=env())
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert all(r["cached_tokens"] == r["prompt_tokens"] // 2 for r in rows)
    assert all(0 < r["reasoning_tokens"] < r["completion_tokens"] for r in rows)
    assert all(r["provider_cost"] is not None for r in rows)
    meta = json.loads(pq.read_schema(out).metadata[b"batchrun"])
    assert meta["usage"]["cached_tokens"] == server.stats.billed_cached_tokens
    assert math.isclose(meta["provider_cost"], sum(r["provider_cost"] for r in rows))


def test_a_retried_row_sums_the_details_of_every_answer_it_was_billed_for(
    tmp_path: Path, sim
) -> None:
    server = sim()
    failed = orjson.loads(_body("x", 100, 10, 64, 4, 0.001))
    failed["choices"][0]["finish_reason"] = "error"  # billed, then retried
    server.rule("alpha", Step.body(orjson.dumps(failed)), Step.body(_body("x", 100, 20, 96, None, 0.002)))
    out = tmp_path / "out.parquet"
    src = write_csv(tmp_path / "in.csv", [{"prompt": "Tell me about alpha."}])
    run_job(src, out, server.base_url, check=True)
    (row,) = read_output(out)
    assert row["attempts"] == 2 and row["prompt_tokens"] == 200
    assert (row["cached_tokens"], row["reasoning_tokens"]) == (160, 4)  # 4: only the first said
    assert math.isclose(row["provider_cost"], 0.003)
