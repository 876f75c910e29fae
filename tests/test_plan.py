"""`batchrun plan`: predicts exactly what a run sends, estimates tokens, cost and time, sends nothing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from batchrun.settings.prices import BUILTIN_PRICES

from .helpers import (
    TEST_KEY,
    clean_env,
    cli_in_process,
    journal_file,
    parse_plan,
    prompts_csv,
    run_cli,
    write_csv,
)


def to_send(plan: dict) -> int:
    return int(plan["to"].split()[1].replace(",", ""))


def test_plan_sends_nothing_and_creates_nothing(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 20)
    out = tmp_path / "out" / "result.parquet"
    result = run_cli("plan", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", env=clean_env(BATCHRUN_API_KEY=TEST_KEY))
    assert result.returncode == 0, result.stderr
    plan = parse_plan(result.stdout)
    assert plan["input"] == f"{src}: 20 rows"
    assert to_send(plan) == 20
    assert plan["url"] == server.base_url + "/chat/completions"
    assert plan["headers"]["Authorization"] == "Bearer ***"
    assert TEST_KEY not in result.stdout + result.stderr
    assert plan["body"] == {"model": "sim-1", "messages": [
        {"role": "user", "content": "Summarize review number 0."}]}
    assert server.stats.requests == 0
    assert not (tmp_path / "out").exists()  # no output, journal or lock file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_plan_predicts_what_a_resumed_deduplicated_run_sends(tmp_path: Path, sim) -> None:
    server = sim()
    out = tmp_path / "out.parquet"
    common = ("--output", out, "--base-url", server.base_url, "--model", "sim-1",
              "--temperature", "0", "--max-tokens", "12", "--no-progress")
    first = [{"id": i, "prompt": f"question {i}"} for i in range(6)] + [{"id": 6, "prompt": ""}]
    src = write_csv(tmp_path / "in.csv", first)
    assert run_cli("run", "--input", src, *common).returncode == 1  # the empty prompt fails
    assert server.stats.requests == 6
    # The table grows: 6 answered rows, 1 settled error, 5 new rows of which 2 repeat others.
    more = [{"id": 7 + i, "prompt": p} for i, p in enumerate(
        ["question 0", "new a", "new b", "new a", "new c", "new b"])]
    write_csv(src, first + more)
    journal_before = journal_file(out).stat()
    planned = run_cli("plan", "--input", src, *common)
    assert planned.returncode == 0, planned.stderr
    plan = parse_plan(planned.stdout)
    assert to_send(plan) == 3
    assert "7 settled by earlier runs" in plan["skipped"]
    assert "3 identical rows share one request" in plan["skipped"]
    assert plan["body"]["messages"][0]["content"] == "new a"
    assert plan["journal"].startswith("out.journal.sqlite: 6 rows answered, 1 failed")
    assert journal_file(out).stat().st_mtime_ns == journal_before.st_mtime_ns
    assert server.stats.requests == 6
    # The run sends exactly what the plan said, and bills exactly the prompt tokens estimated.
    billed_before = server.stats.billed_prompt_tokens
    assert run_cli("run", "--input", src, *common).returncode == 1
    assert server.stats.requests == 6 + 3
    prompt_estimate = int(plan["tokens"].split()[0].lstrip("~").replace(",", ""))
    assert server.stats.billed_prompt_tokens - billed_before == prompt_estimate
    assert "at most 36 completion (12 per request)" in plan["tokens"]
    price = BUILTIN_PRICES["sim-1"]
    assert f"at most ${price.cost(prompt_estimate, 36):,.4f}" in plan["cost"]
    again = parse_plan(run_cli("plan", "--input", src, *common).stdout)
    assert to_send(again) == 0 and again["time"] == "nothing to send"
    fresh = parse_plan(run_cli("plan", "--input", src, *common, "--fresh").stdout)
    assert to_send(fresh) == 9 and "--fresh starts over" in fresh["journal"]


def test_plan_shows_the_limit_that_binds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = prompts_csv(tmp_path / "in.csv", 120)
    args = ("plan", "--input", src, "--base-url", "http://127.0.0.1:9/v1", "--model", "sim-1",
            "--max-tokens", "100")
    code, out, err = cli_in_process(monkeypatch, capsys, *args, "--rpm", "60")
    assert code == 0, err
    assert parse_plan(out)["time"] == "at least 2m00s (rpm binds; 2m00s at 60 rpm)"
    code, out, err = cli_in_process(monkeypatch, capsys, *args, "--rpm", "60", "--format", "json")
    assert json.loads(out)["time"] == {"min_seconds": 120.0, "binds": "rpm", "rpm": 60.0,
                                       "tpm": None, "concurrency": 16}
    code, out, err = cli_in_process(monkeypatch, capsys, *args, "--rpm", "6000", "--tpm", "1000",
                                    "--format", "json")
    plan = json.loads(out)
    total = plan["tokens"]["prompt_estimate"] + 120 * 100
    assert plan["tokens"]["completion_max"] == 120 * 100
    assert plan["time"]["binds"] == "tpm"
    assert plan["time"]["min_seconds"] == pytest.approx(total / 1000 * 60)
    code, out, err = cli_in_process(monkeypatch, capsys, *args, "--max-cost", "0.006",
                                    "--max-total-tokens", "100000000")
    budget = parse_plan(out)["budget"]
    assert "--max-cost 0.006 USD: may stop after about" in budget
    assert "--max-total-tokens 100,000,000: the worst case fits" in budget


def test_plan_refuses_bad_input_exactly_like_run(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    base = ("--base-url", server.base_url, "--model", "sim-1", "--no-progress")
    for bad in (("--input", tmp_path / "missing.csv"),
                ("--input", src, "--template", "{nope}"),
                ("--input", src, "--temperature", "5")):
        ran = run_cli("run", *base, *bad)
        planned = run_cli("plan", *base, *bad)
        assert (ran.returncode, planned.returncode) == (2, 2)
        assert planned.stderr == ran.stderr and "Traceback" not in planned.stderr
    assert server.stats.requests == 0


def test_plan_without_a_key_says_which_variable_a_run_needs(tmp_path: Path) -> None:
    # Look before you pay: no key yet, and the plan still shows rows, tokens and cost.
    src = prompts_csv(tmp_path / "in.csv", 3)
    remote = run_cli("plan", "--input", src, "--model", "gpt-4o", env=clean_env())
    assert remote.returncode == 0, remote.stderr
    text = parse_plan(remote.stdout)
    assert text["key"] == ("none found; before a run, set OPENAI_API_KEY or BATCHRUN_API_KEY in "
                           "the environment (or use --api-key-file)")
    assert "(no Authorization header: no key found yet; a run sends one)" in remote.stdout
    as_json = json.loads(run_cli("plan", "--input", src, "--model", "gpt-4o", "--format", "json",
                                 env=clean_env()).stdout)
    assert as_json["key_from"] is None and as_json["key_needed"].startswith("no API key: set ")
    assert as_json["to_send"] == 3 and as_json["cost_usd_max"] > 0
    ran = run_cli("run", "--input", src, "--model", "gpt-4o", env=clean_env())
    assert ran.returncode == 2 and "no API key" in ran.stderr  # a run still needs it


def test_plan_sample_shows_images_short_and_invalid_rows(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "img.png").write_bytes(base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    ) * 20)
    src = write_csv(tmp_path / "in.csv", [
        {"prompt": "", "image": ""},
        {"prompt": "what is this?", "image": "img.png"},
        {"prompt": "and this?", "image": "gone.png"},
    ])
    code, out, err = cli_in_process(
        monkeypatch, capsys, "plan", "--input", src, "--image-column", "image",
        "--provider", "vllm", "--model", "llava")
    assert code == 0, err
    plan = parse_plan(out)
    assert to_send(plan) == 1
    assert "2 rows cannot be sent" in plan["skipped"]
    assert plan["invalid"].startswith("first at row 0: empty prompt")
    part = plan["body"]["messages"][0]["content"][1]
    assert part["image_url"]["url"].startswith("data:image/png;base64,...(")


@pytest.mark.slow
def test_plan_and_status_read_the_answers_a_killed_run_left_in_the_journal_log(
        tmp_path: Path, sim) -> None:
    """A run killed mid-way leaves its answers in the journal's `log` (folded into `results` only
    when a run ends or the next one opens the journal): the read-only `plan` and `status` see
    them there, and the plan's count is what the resumed run then sends."""
    import sqlite3

    from .helpers import journal_count, start_cli, wait_until

    server = sim(latency=0.02)
    n = 300
    src = prompts_csv(tmp_path / "in.csv", n)
    out = tmp_path / "out.parquet"
    common = ("--output", out, "--base-url", server.base_url, "--model", "sim-1", "--no-progress")
    proc = start_cli("run", "--input", src, "--concurrency", "4", *common)
    wait_until(lambda: journal_count(out) >= 40, proc)
    proc.kill()
    proc.communicate(timeout=10)
    answered = journal_count(out)
    db = sqlite3.connect(f"file:{journal_file(out)}?mode=ro", uri=True)
    logged, folded = (db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("log", "results"))
    db.close()
    assert logged == answered and folded == 0  # this test is about the unfolded log
    planned = run_cli("plan", "--input", src, *common)
    assert planned.returncode == 0, planned.stderr
    assert to_send(parse_plan(planned.stdout)) == n - answered
    status = run_cli("status", out)
    assert f"{answered:,} answered" in status.stdout, status.stdout
    sent_before = server.stats.requests
    assert run_cli("run", "--input", src, *common).returncode == 0
    assert server.stats.requests - sent_before == n - answered


def test_plan_json_is_one_object_that_agrees_with_the_text(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 12)
    args = ("plan", "--input", src, "--base-url", server.base_url, "--model", "gpt-4o-mini",
            "--max-tokens", "50", "--max-cost", "0.00001")
    env = clean_env(BATCHRUN_API_KEY=TEST_KEY)
    text = parse_plan(run_cli(*args, env=env).stdout)
    result = run_cli(*args, "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    plan = json.loads(result.stdout)
    assert (plan["rows"], plan["to_send"], plan["reused"], plan["invalid"]) == (12, 12, 0, 0)
    assert f"~{plan['tokens']['prompt_estimate']:,} prompt" in text["tokens"]
    assert f"${plan['cost_usd_max']:,.4f}" in text["cost"]
    assert plan["price"] == {"input_per_million": 0.15, "output_per_million": 0.6,
                             "source": "built-in"}
    assert plan["budget"]["note"] == text["budget"]
    assert plan["sample"]["headers"]["Authorization"] == "Bearer ***"
    assert plan["sample"]["body"] == text["body"]
    assert TEST_KEY not in result.stdout + result.stderr
    assert server.stats.requests == 0


@pytest.mark.slow
def test_plan_cuts_a_huge_cell_in_the_sample_and_marks_the_cut(tmp_path: Path, sim) -> None:
    server = sim()
    huge = "word " * (6 * 1024 * 1024)  # a 30 MiB cell
    src = write_csv(tmp_path / "in.csv", [{"prompt": huge}, {"prompt": "short"}])
    args = ("plan", "--input", src, "--base-url", server.base_url, "--model", "sim-1")
    env = clean_env(BATCHRUN_API_KEY=TEST_KEY)
    text = run_cli(*args, env=env)
    assert text.returncode == 0, text.stderr
    assert len(text.stdout) < 10_000
    assert f"...[cut: {len(huge):,} characters in all]" in text.stdout
    result = run_cli(*args, "--format", "json", env=env)
    plan = json.loads(result.stdout)
    assert plan["sample"]["cut"] is True
    content = plan["sample"]["body"]["messages"][-1]["content"]
    assert content == huge[:2000] + f"...[cut: {len(huge):,} characters in all]"
    assert server.stats.requests == 0
