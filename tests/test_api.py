"""The Python API: run(config) and run_dataframe(df), also inside a running event loop (Jupyter)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import batchrun
from batchrun.sim import Step, expected_answer

from .helpers import clean_env, prompts_csv, read_output

RESULTS = ["response", "finish_reason", "prompt_tokens", "completion_tokens", "total_tokens",
           "status", "error", "attempts", "latency_ms", "model", "response_id", "cost_usd",
           "cached_tokens", "reasoning_tokens", "provider_cost"]


def _frame(n: int) -> pd.DataFrame:
    # A non-default index and a non-text column: both must come back untouched.
    return pd.DataFrame(
        {"review": [f"Review {i}: it broke after {i} days." for i in range(n)],
         "stars": list(range(n))},
        index=pd.Index([f"r{i}" for i in range(n)], name="rid"),
    )


def _check(result: pd.DataFrame, df: pd.DataFrame) -> None:
    assert list(result.columns) == list(df.columns) + RESULTS
    assert result.index.equals(df.index)
    pd.testing.assert_frame_equal(result[list(df.columns)], df)
    for rid, row in result.iterrows():
        prompt = f"Summarize: {df.loc[rid, 'review']}"
        content, finish = expected_answer([{"role": "user", "content": prompt}])
        assert (row["response"], row["finish_reason"], row["status"]) == (content, finish, "ok")
        assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    assert str(result["total_tokens"].dtype) == "Int64" and str(result["attempts"].dtype) == "Int32"


OPTIONS = {"model": "sim-1", "template": "Summarize: {review}", "progress": False}


def test_run_dataframe_returns_the_frame_with_results(sim) -> None:
    server = sim(latency=0.005)
    df = _frame(12)
    result = batchrun.run_dataframe(df, base_url=server.base_url, **OPTIONS)
    _check(result, df)
    summary = result.attrs["batchrun"]
    assert (summary["rows_total"], summary["rows_ok"], summary["requests_sent"]) == (12, 12, 12)
    assert server.stats.ok == 12


def test_run_dataframe_inside_a_running_event_loop(sim) -> None:
    server = sim(latency=0.005)
    df = _frame(8)

    async def notebook_cell() -> pd.DataFrame:
        asyncio.get_running_loop()  # as in Jupyter: a loop is running in this thread
        return batchrun.run_dataframe(df, base_url=server.base_url, **OPTIONS)

    result = asyncio.run(notebook_cell())
    _check(result, df)
    assert server.stats.ok == 8


def test_run_dataframe_with_output_resumes(tmp_path: Path, sim) -> None:
    server = sim(latency=0.005)
    df = _frame(10)
    out = tmp_path / "answers.parquet"
    first = batchrun.run_dataframe(df, output=out, base_url=server.base_url, **OPTIONS)
    assert server.stats.requests == 10
    assert [r["stars"] for r in read_output(out)] == list(range(10))
    assert (tmp_path / "answers.usage.parquet").exists()
    bigger = pd.concat([df, _frame(12).iloc[10:]])
    second = batchrun.run_dataframe(bigger, output=out, base_url=server.base_url, **OPTIONS)
    assert server.stats.requests == 12  # only the two new rows were sent
    assert second.attrs["batchrun"]["reused"] == 10
    _check(second, bigger)
    pd.testing.assert_frame_equal(second.iloc[:10], first)


def test_failed_rows_come_back_as_errors(sim) -> None:
    server = sim()
    server.rule("Review 2:", Step.status(400, "context too long"))
    df = _frame(5)
    result = batchrun.run_dataframe(df, base_url=server.base_url, **OPTIONS)
    assert list(result["status"]) == ["ok", "ok", "error", "ok", "ok"]
    failed = result.loc["r2"]
    assert "400" in failed["error"] and "context too long" in failed["error"]
    assert pd.isna(failed["response"]) and pd.isna(failed["total_tokens"])
    assert result.attrs["batchrun"]["rows_error"] == 1


def test_run_dataframe_refuses_bad_requests(sim) -> None:
    server = sim()
    df = _frame(3)
    with pytest.raises(batchrun.UsageError, match="temperature"):
        batchrun.run_dataframe(df, base_url=server.base_url, temperature=5, **OPTIONS)
    with pytest.raises(batchrun.UsageError, match="response"):
        batchrun.run_dataframe(df.assign(response="x"), base_url=server.base_url, **OPTIONS)
    with pytest.raises(batchrun.UsageError, match="nope"):
        batchrun.run_dataframe(df, base_url=server.base_url, model="sim-1", progress=False,
                               template="{nope}")
    with pytest.raises(TypeError, match="input"):
        batchrun.run_dataframe(df, input="x.csv", base_url=server.base_url, **OPTIONS)
    assert server.stats.requests == 0


def test_run_returns_a_summary(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 6)
    config = batchrun.build_config(None, {"input": str(src), "output": str(tmp_path / "o.parquet"),
                                          "base_url": server.base_url, "model": "sim-1",
                                          "progress": False})
    summary = batchrun.run(config)
    assert isinstance(summary, batchrun.Summary)
    assert (summary.rows_ok, summary.exit_code, summary.output) == (6, 0, tmp_path / "o.parquet")
    assert "6 rows: 6 ok, 0 error" in summary.render()


def test_a_budget_stop_in_a_python_process_prints_nothing_of_its_own(sim) -> None:
    # A library leaves stderr to its caller: the stop is the exception, not a stray log line.
    # (In a subprocess: pytest's own log capture would hide Python's last-resort handler.)
    server = sim()
    script = (
        "import batchrun, pandas as pd\n"
        "df = pd.DataFrame({'prompt': [f'Summarize review number {i}.' for i in range(40)]})\n"
        "try:\n"
        f"    batchrun.run_dataframe(df, model='sim-1', base_url='{server.base_url}',\n"
        "                           max_cost=0.0001, progress=False)\n"
        "except batchrun.JobStopped as stop:\n"
        "    print('stopped:', stop.exit_code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=clean_env())
    assert done.stdout == "stopped: 3\n", done.stderr
    assert done.stderr == ""


def test_the_python_api_names_settings_by_keyword_not_by_flag(sim) -> None:
    server = sim()
    frame = pd.DataFrame({"prompt": [f"Summarize review number {i}." for i in range(40)]})
    with pytest.raises(batchrun.UsageError) as bad:
        batchrun.run_dataframe(frame, model="sim-1", base_url=server.base_url, rpm=-1,
                               progress=False)
    assert bad.value.message == "rpm must be greater than 0 (got -1)" == str(bad.value)
    with pytest.raises(batchrun.JobStopped) as stop:
        batchrun.run_dataframe(frame, model="sim-1", base_url=server.base_url, max_cost=0.0001,
                               progress=False)
    assert stop.value.message.startswith("budget reached: max_cost 0.0001 USD")
    assert "--" not in stop.value.message + bad.value.message
