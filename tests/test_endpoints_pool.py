"""The endpoint pool at run time: several endpoints share a run's rows, each under its own limits;
one that fails job-wide retires and its rows go on; a row one endpoint cannot answer is tried on
the next; one journal, so that no rerun pays twice. Real runs against simulators on loopback."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

from batchrun.settings.endpoints import Endpoint
from batchrun.sim import Step
from batchrun.sim.config import Account

from .helpers import (
    clean_env,
    journal_count,
    prompts_csv,
    read_output,
    run_cli,
    run_job,
    start_cli,
    wait_until,
    write_csv,
)

CONTEXT_400 = Step.status(400, "This model's maximum context length is 64 tokens",
                          code_str="context_length_exceeded")


def endpoint(name: str, server: Any, **fields: Any) -> Endpoint:
    """An endpoint on a simulator, its model named after it unless given."""
    return Endpoint(name=name, base_url=server.base_url, model=fields.pop("model", f"m-{name}"),
                    **fields)


def pool_job(path: Path, src: Path, out: Path, endpoints: tuple[Endpoint, ...]) -> Path:
    """A job file sending `src` to `out` on these endpoints (`[[endpoints]]` tables)."""
    lines = [f'[input]\npath = "{src}"\n\n[output]\npath = "{out}"\n']
    for e in endpoints:
        lines.append(f'[[endpoints]]\nname = "{e.name}"\nbase_url = "{e.base_url}"\n'
                     f'model = "{e.model}"\nconcurrency = {e.concurrency}\n'
                     f"fallback = {str(e.fallback).lower()}\n")
        lines.extend(f"{key} = {value!r}\n".replace("'", '"') for key, value in (
            ("api_key_env", e.api_key_env), ("rpm", e.rpm), ("tpm", e.tpm)) if value is not None)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_pool(tmp_path: Path, src: Path, *endpoints: Endpoint, out: str = "out.parquet",
             env: dict[str, str] | None = None, **flags: Any) -> CompletedProcess[str]:
    """`batchrun run JOB` of `src` on these endpoints (the real CLI, in this process)."""
    job = pool_job(tmp_path / "job.toml", src, tmp_path / out, endpoints)
    options = [str(a) for name, value in {"max_attempts": 2, **flags}.items()
               for a in (f"--{name.replace('_', '-')}", value)]
    result = run_cli("run", job, "--no-progress", *options, env=clean_env(**(env or {})))
    assert "Traceback" not in result.stderr, result.stderr
    return result


def by_endpoint(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["endpoint"]] = counts.get(row["endpoint"], 0) + 1
    return counts


def test_rows_split_by_each_endpoints_pace_at_their_summed_rate(tmp_path: Path, sim) -> None:
    # One provider, two keys with limits of their own (issue 28's 3,000 and 1,500 RPM, doubled
    # to keep the test short), enforced over 1-second windows.
    server = sim(window_s=1, latency=0.01, accounts=(Account("sk-a", rpm=6000),
                                                     Account("sk-b", rpm=3000)))
    src = prompts_csv(tmp_path / "in.csv", 300)
    started = time.monotonic()
    result = run_pool(tmp_path, src,
                      endpoint("A", server, rpm=6000, api_key_env="KEY_A", concurrency=16),
                      endpoint("B", server, rpm=3000, api_key_env="KEY_B", concurrency=16),
                      env={"KEY_A": "sk-a", "KEY_B": "sk-b"})
    wall = time.monotonic() - started
    rows = read_output(tmp_path / "out.parquet")
    assert result.returncode == 0, result.stderr
    assert all(r["status"] == "ok" for r in rows)
    split = by_endpoint(rows)
    a, b = server.stats.by_key["sk-a"], server.stats.by_key["sk-b"]
    assert 1.5 <= split["A"] / split["B"] <= 2.7, split  # about 2:1, as their paces
    assert (a.ok, b.ok) == (split["A"], split["B"])  # each row sent once, with its own key
    assert server.stats.rate_limited <= 0.01 * server.stats.requests
    assert {r["model"] for r in rows if r["endpoint"] == "B"} == {"m-B"}  # its own model
    assert wall < 2 * 300 / 150  # within twice the time at the summed pace (150/s)


def test_an_endpoint_out_of_credits_retires_and_the_other_finishes_the_run(
        tmp_path: Path, sim) -> None:
    # One provider, two keys: A's balance runs out after about ten answers (402 from then on).
    server = sim(latency=0.005, accounts=(Account("sk-a", credits=0.1), Account("sk-b")),
                 prices={"m-A": (1000.0, 500.0, 0.0)})
    src = prompts_csv(tmp_path / "in.csv", 80)
    result = run_pool(tmp_path, src, endpoint("A", server, api_key_env="KEY_A", concurrency=4),
                       endpoint("B", server, api_key_env="KEY_B", concurrency=4),
                      env={"KEY_A": "sk-a", "KEY_B": "sk-b"})
    rows = read_output(tmp_path / "out.parquet")
    assert result.returncode == 0, result.stderr
    assert all(r["status"] == "ok" for r in rows)
    split = by_endpoint(rows)
    a, b = server.stats.by_key["sk-a"], server.stats.by_key["sk-b"]
    assert 0 < split["A"] == a.ok < 40 and split["B"] == b.ok == 80 - a.ok
    # Every row billed once: the 402s cost nothing, and nothing was answered twice.
    assert sorted(server.stats.billed_by_prompt.values()) == [1] * 80
    # The 402s are few: the rows in flight when it retired, not one per row.
    assert 1 <= a.no_credits <= 4
    assert {r["model"] for r in rows if r["endpoint"] == "B"} == {"m-B"}
    assert "endpoint A retired for the rest of the run: stopped: HTTP 402" in result.stderr


def test_rows_over_one_endpoints_context_are_answered_by_the_other(tmp_path: Path, sim) -> None:
    server = sim(latency=0.005, context_lengths={"small": 60})
    rows_in = [{"prompt": ("word " * 100 if i % 4 == 0 else "") + f"question {i}"}
               for i in range(24)]
    src = write_csv(tmp_path / "in.csv", rows_in)
    result = run_pool(tmp_path, src, endpoint("A", server, model="small", concurrency=2),
                       endpoint("B", server, model="big", concurrency=2))
    rows = read_output(tmp_path / "out.parquet")
    assert result.returncode == 0, result.stderr
    assert all(r["status"] == "ok" for r in rows)
    long_rows = [r for r in rows if r["prompt"].startswith("word")]
    assert len(long_rows) == 6
    assert all(r["endpoint"] == "B" and r["model"] == "big" for r in long_rows)
    tried_first_on_small = sum(r["attempts"] == 2 for r in long_rows)
    assert server.stats.status_counts.get(400, 0) == tried_first_on_small
    assert all(r["attempts"] == 1 for r in rows if r not in long_rows)
    assert sorted(server.stats.billed_by_prompt.values()) == [1] * 24


def test_a_fallback_model_answers_only_the_rows_the_first_could_not(tmp_path: Path, sim) -> None:
    # `--model small --fallback-model big` on one key of one provider.
    server = sim(latency=0.005, context_lengths={"small": 60})
    rows_in = [{"prompt": ("word " * 100 if i in (2, 5, 7) else "") + f"question {i}"}
               for i in range(12)]
    src = write_csv(tmp_path / "in.csv", rows_in)
    result = run_job(src, tmp_path / "out.parquet", server.base_url, "--fallback-model", "big",
                     model="small")
    rows = read_output(tmp_path / "out.parquet")
    assert result.returncode == 0, result.stderr
    for i, row in enumerate(rows):
        assert row["status"] == "ok"
        assert (row["endpoint"], row["model"], row["attempts"]) == (
            ("big", "big", 2) if i in (2, 5, 7) else ("small", "small", 1))
    assert server.stats.requests == 15 and server.stats.status_counts[400] == 3


def test_adding_a_fallback_model_to_a_finished_run_sends_only_its_failed_rows(
        tmp_path: Path, sim) -> None:
    server = sim(latency=0.005, context_lengths={"small": 60})
    rows_in = [{"prompt": ("word " * 100 if i in (2, 5, 7) else "") + f"question {i}"}
               for i in range(12)]
    src, out = write_csv(tmp_path / "in.csv", rows_in), tmp_path / "out.parquet"
    first = run_job(src, out, server.base_url, model="small")
    assert first.returncode == 1 and server.stats.requests == 12  # the long rows failed
    again = run_job(src, out, server.base_url, "--fallback-model", "big", "--retry-failed",
                    model="small")
    assert again.returncode == 0, again.stderr
    assert server.stats.requests == 12 + 3 * 2  # each long row: small (400, free), then big
    rows = read_output(out)
    assert all(r["status"] == "ok" for r in rows)
    assert [r["endpoint"] for r in rows] == [
        "big" if i in (2, 5, 7) else "small" for i in range(12)]
    assert sorted(server.stats.billed_by_prompt.values()) == [1] * 12
    assert run_job(src, out, server.base_url, "--fallback-model", "big",
                   model="small").returncode == 0
    assert server.stats.requests == 18  # nothing new


def test_one_endpoint_after_a_pooled_run_takes_the_answers_its_model_gave(tmp_path: Path,
                                                                         sim) -> None:
    server = sim(latency=0.005, context_lengths={"small": 60})
    rows_in = [{"prompt": ("word " * 100 if i in (2, 5, 7) else "") + f"question {i}"}
               for i in range(12)]
    src, out = write_csv(tmp_path / "in.csv", rows_in), tmp_path / "out.parquet"
    pooled = run_job(src, out, server.base_url, "--fallback-model", "big", model="small")
    assert pooled.returncode == 0 and server.stats.requests == 15
    # One endpoint, `small`: its own answers count; the rows `big` answered are sent again.
    alone = run_job(src, out, server.base_url, model="small")
    assert alone.returncode == 1 and server.stats.requests == 15 + 3
    rows = read_output(out)
    assert [r["status"] for r in rows] == ["error" if i in (2, 5, 7) else "ok" for i in range(12)]
    # One endpoint, `big`: the rows `big` answered in the pool count, the others are sent.
    assert run_job(src, out, server.base_url, model="big").returncode == 0
    assert server.stats.requests == 18 + 9
    assert all(r["status"] == "ok" and r["model"] == "big" for r in read_output(out))
    # The long rows were paid for once (by big, in the pool); the others once by each model.
    assert sorted(server.stats.billed_by_prompt.values()) == [1] * 3 + [2] * 9


def test_kill_9_of_a_pooled_run_then_a_rerun_pays_at_most_what_was_in_flight(tmp_path: Path,
                                                                           sim) -> None:
    one, two = sim(latency=0.05), sim(latency=0.05)
    src = prompts_csv(tmp_path / "in.csv", 300)
    out = tmp_path / "out.parquet"
    pair = (endpoint("A", one, concurrency=4), endpoint("B", two, concurrency=4))
    job = pool_job(tmp_path / "job.toml", src, out, pair)
    proc = start_cli("run", job, "--no-progress")
    try:
        wait_until(lambda: journal_count(out) >= 60, proc, timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert 60 <= journal_count(out) < 300  # killed part-way
    result = run_pool(tmp_path, src, *pair)
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert len(rows) == 300 and all(r["status"] == "ok" for r in rows)
    billed = [*one.stats.billed_by_prompt.items(), *two.stats.billed_by_prompt.items()]
    times: dict[str, int] = {}
    for prompt, n in billed:
        times[prompt] = times.get(prompt, 0) + n
    assert len(times) == 300
    assert sum(n - 1 for n in times.values()) <= 8  # at most the requests in flight (4 + 4)


def test_a_row_whose_retries_run_out_on_one_endpoint_is_answered_by_the_next(tmp_path: Path,
                                                                            sim) -> None:
    failing, fine = sim(), sim(latency=0.05)
    failing.rule("", Step.status(503, "The server is overloaded"))
    src = prompts_csv(tmp_path / "in.csv", 8)
    result = run_pool(tmp_path, src, endpoint("A", failing, concurrency=2),
                      endpoint("B", fine, concurrency=2))
    assert result.returncode == 0, result.stderr
    rows = read_output(tmp_path / "out.parquet")
    assert all(r["status"] == "ok" and r["endpoint"] == "B" for r in rows)
    # --max-attempts 2 on A, then one on B; every request sent is counted.
    assert {r["attempts"] for r in rows} <= {1, 3}
    assert sum(r["attempts"] for r in rows) == failing.stats.requests + fine.stats.requests
    assert failing.stats.requests >= 2


def test_a_row_that_fails_on_every_endpoint_is_an_error_with_each_attempt(tmp_path: Path,
                                                                        sim) -> None:
    one, two, three = sim(), sim(), sim()
    for server in (one, two, three):
        server.rule("BAD", CONTEXT_400)
    src = write_csv(tmp_path / "in.csv", [{"prompt": "BAD row"}, {"prompt": "good row"}])
    result = run_pool(tmp_path, src, endpoint("A", one), endpoint("B", two),
                       endpoint("C", three, fallback=True))
    rows = read_output(tmp_path / "out.parquet")
    assert result.returncode == 1
    bad = rows[0]
    assert bad["status"] == "error" and bad["attempts"] == 3 and bad["endpoint"] == "C"
    assert "context length" in bad["error"]
    assert rows[1]["status"] == "ok" and rows[1]["endpoint"] in ("A", "B")
    assert three.stats.requests == 1  # the fallback saw only the row the pool could not answer


def test_when_every_endpoint_retires_the_run_stops_naming_each_reason(tmp_path: Path,
                                                                     sim) -> None:
    locked, broke = sim(), sim()
    locked.rule("", Step.status(401, "Incorrect API key provided", code_str="invalid_api_key"))
    broke.rule("", Step.status(402, "Insufficient credits"))
    src = prompts_csv(tmp_path / "in.csv", 20)
    result = run_pool(tmp_path, src, endpoint("A", locked), endpoint("B", broke),
                      log_format="json")
    assert result.returncode == 3
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    retired = {e["endpoint"]: e["reason"] for e in events
               if e.get("event") == "endpoint_retired"}
    assert set(retired) == {"A", "B"} and "401" in retired["A"] and "402" in retired["B"]
    message = next(e["reason"] for e in events if e.get("event") == "stop")
    assert "no endpoint is left" in message and "A: HTTP 401" in message and "B: HTTP 402" in message


def test_a_rerun_with_another_endpoint_list_sends_nothing_new(tmp_path: Path, sim) -> None:
    first, second, third = sim(), sim(), sim()
    src = prompts_csv(tmp_path / "in.csv", 30)
    run_pool(tmp_path, src, endpoint("A", first), endpoint("B", second))
    sent = first.stats.requests + second.stats.requests
    assert sent == 30
    result = run_pool(tmp_path, src, endpoint("C", third), endpoint("B", second, model="other"))
    assert result.returncode == 0, result.stderr
    assert first.stats.requests + second.stats.requests == sent and third.stats.requests == 0
    rows = read_output(tmp_path / "out.parquet")
    assert all(r["status"] == "ok" and r["endpoint"] in ("A", "B") for r in rows)


def test_once_every_pool_endpoint_retires_the_fallback_takes_every_row(tmp_path: Path,
                                                                     sim) -> None:
    pool, spare = sim(latency=0.005), sim(latency=0.005)
    pool.script(*[Step.ok()] * 5, *[Step.status(402, "Insufficient credits")] * 1000)
    src = prompts_csv(tmp_path / "in.csv", 40)
    result = run_pool(tmp_path, src, endpoint("A", pool, concurrency=2),
                      endpoint("spare", spare, fallback=True, concurrency=2))
    assert result.returncode == 0, result.stderr
    rows = read_output(tmp_path / "out.parquet")
    assert all(r["status"] == "ok" for r in rows)
    assert by_endpoint(rows) == {"A": 5, "spare": 35} and spare.stats.ok == 35


def test_a_fallback_that_retires_leaves_its_rows_the_error_they_had(tmp_path: Path, sim) -> None:
    small, locked = sim(latency=0.005, context_lengths={"m-A": 60}), sim()
    locked.rule("", Step.status(401, "Incorrect API key provided", code_str="invalid_api_key"))
    rows_in = [{"prompt": ("word " * 100 if i % 3 == 0 else "") + f"question {i}"}
               for i in range(15)]
    src = write_csv(tmp_path / "in.csv", rows_in)
    result = run_pool(tmp_path, src, endpoint("A", small, concurrency=2),
                      endpoint("big", locked, fallback=True, concurrency=2))
    assert result.returncode == 1, result.stderr  # some rows failed; the run finished
    rows = read_output(tmp_path / "out.parquet")
    for i, row in enumerate(rows):
        if i % 3:
            assert (row["status"], row["endpoint"]) == ("ok", "A")
        else:
            assert (row["status"], row["endpoint"]) == ("error", "A")
            assert "context" in row["error"]
    assert 1 <= locked.stats.requests <= 2  # its first answers retired it
    # Attempts count every request sent for a row, the one the retiring endpoint sent too.
    assert sum(r["attempts"] for r in rows) == small.stats.requests + locked.stats.requests


def test_an_interrupted_pool_keeps_its_progress_and_a_rerun_finishes(tmp_path: Path,
                                                                    sim) -> None:
    one, two = sim(latency=0.05), sim(latency=0.05)
    src = prompts_csv(tmp_path / "in.csv", 200)
    out = tmp_path / "out.parquet"
    pair = (endpoint("A", one, concurrency=3), endpoint("B", two, concurrency=3))
    proc = start_cli("run", pool_job(tmp_path / "job.toml", src, out, pair), "--no-progress")
    wait_until(lambda: journal_count(out) >= 20, proc, timeout=60)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert journal_count(out) < 200
    result = run_pool(tmp_path, src, *pair)
    assert result.returncode == 0, result.stderr
    assert len(read_output(out)) == 200
    billed = [*one.stats.billed_by_prompt.values(), *two.stats.billed_by_prompt.values()]
    assert len(billed) == 200 and set(billed) == {1}  # a signal lets requests in flight finish


def test_a_pause_after_429s_names_its_endpoint(tmp_path: Path, sim) -> None:
    strict, free = sim(latency=0.01), sim(latency=0.01)
    strict.script(*[Step.status(429, "Rate limit reached for requests", retry_after=0.1)] * 8)
    src = prompts_csv(tmp_path / "in.csv", 40)
    result = run_pool(tmp_path, src, endpoint("A", strict, rpm=6000, concurrency=4),
                      endpoint("B", free, concurrency=2), log_format="json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    paused = {e["endpoint"] for e in events if e.get("event") == "rate_limited"}
    assert strict.stats.rate_limited > 0 and paused == {"A"}


def test_a_budget_stops_the_whole_pool_not_one_endpoint(tmp_path: Path, sim) -> None:
    one, two = sim(latency=0.01), sim(latency=0.01)
    src = prompts_csv(tmp_path / "in.csv", 60)
    result = run_pool(tmp_path, src, endpoint("A", one, concurrency=2),
                      endpoint("B", two, concurrency=2), max_tokens=10, max_total_tokens=300)
    assert result.returncode == 3 and "budget reached" in result.stderr
    assert "no endpoint is left" not in result.stderr
    sent = one.stats.requests + two.stats.requests
    assert 0 < sent < 30 and one.stats.requests > 0 and two.stats.requests > 0


def test_an_endpoint_that_never_answers_retires_and_the_pool_goes_on(tmp_path: Path,
                                                                    sim) -> None:
    alive = sim()
    dead = Endpoint(name="dead", base_url="http://127.0.0.1:9/v1", model="m", concurrency=2)
    src = prompts_csv(tmp_path / "in.csv", 20)
    result = run_pool(tmp_path, src, dead, endpoint("alive", alive, concurrency=2))
    rows = read_output(tmp_path / "out.parquet")
    assert result.returncode == 0, result.stderr
    assert by_endpoint(rows) == {"alive": 20}
    assert alive.stats.requests == 20


def test_each_endpoint_has_its_own_timeline(tmp_path: Path, sim) -> None:
    from batchrun.journal.database import Journal, journal_path

    one, two = sim(latency=0.01), sim(latency=0.01)
    src = prompts_csv(tmp_path / "in.csv", 120)
    run_pool(tmp_path, src, endpoint("A", one, rpm=3000, concurrency=4),
             endpoint("B", two, rpm=1500, concurrency=4))
    journal = Journal(journal_path(tmp_path / "out.parquet"), readonly=True)
    try:
        samples = journal.timeline()
    finally:
        journal.close()
    mine = {name: [s for s in samples if s.endpoint == name] for name in (None, "A", "B")}
    assert mine[None] and mine["A"] and mine["B"]
    assert sum(s.sent for s in mine["A"]) == one.stats.requests
    assert sum(s.sent for s in mine["B"]) == two.stats.requests
    assert sum(s.sent for s in mine[None]) == one.stats.requests + two.stats.requests
    assert {s.rpm_limit for s in mine["A"]} == {3000} and {s.rpm_limit for s in mine[None]} == {4500}


def test_the_shared_cache_keeps_each_answer_for_the_endpoint_that_gave_it(tmp_path: Path,
                                                                         sim) -> None:
    one, two = sim(latency=0.01), sim(latency=0.01)
    src, cache = prompts_csv(tmp_path / "in.csv", 30), tmp_path / "cache.sqlite"
    pair = (endpoint("A", one, concurrency=2), endpoint("B", two, concurrency=2))
    first = run_pool(tmp_path, src, *pair, cache=cache)
    assert first.returncode == 0, first.stderr
    answered = by_endpoint(read_output(tmp_path / "out.parquet"))
    assert answered["A"] + answered["B"] == 30 == one.stats.requests + two.stats.requests
    # Another output, the same endpoints: every row from the cache, for the endpoint it came from.
    again = run_pool(tmp_path, src, *pair, cache=cache, out="again.parquet")
    assert again.returncode == 0, again.stderr
    rows = read_output(tmp_path / "again.parquet")
    assert all(r["cached"] and r["attempts"] == 0 for r in rows)
    assert by_endpoint(rows) == answered and one.stats.requests + two.stats.requests == 30
    # One endpoint alone (A's model and URL): A's answers are hits, B's rows are sent to A.
    alone = run_job(src, tmp_path / "alone.parquet", one.base_url, "--cache", cache,
                    model="m-A")
    assert alone.returncode == 0, alone.stderr
    assert one.stats.requests == answered["A"] + answered["B"]
    assert sum(r["cached"] for r in read_output(tmp_path / "alone.parquet")) == answered["A"]


def test_the_simulator_preset_serves_endpoints_in_process_and_jsonl_bodies_take_their_model(
        tmp_path: Path) -> None:
    import json

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "the-bodys-own", "messages": [{"role": "user", "content": f"q {i}"}]},
    }) + "\n" for i in range(10)), encoding="utf-8")
    job = tmp_path / "job.toml"
    job.write_text(f'[input]\npath = "{src}"\n[output]\npath = "{tmp_path / "out.parquet"}"\n'
                   '[[endpoints]]\nname = "one"\nprovider = "simulator"\nmodel = "sim-a"\n'
                   '[[endpoints]]\nname = "two"\nprovider = "simulator"\nmodel = "sim-b"\n',
                   encoding="utf-8")
    result = run_cli("run", job, "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = read_output(tmp_path / "out.parquet")
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)
    assert {(r["endpoint"], r["model"]) for r in rows} <= {("one", "sim-a"), ("two", "sim-b")}


# --- routing as plain values --------------------------------------------------------------

def test_what_another_endpoint_may_answer() -> None:
    from batchrun.protocol.retry import Failure, Kind, classify_http, elsewhere

    def http(status: int, message: str, code: str | None = None) -> Failure:
        return classify_http(status, {"error": {"message": message, "code": code}}, None)

    assert elsewhere(http(400, "maximum context length is 8192 tokens", "context_length_exceeded"))
    assert elsewhere(http(400, "Unsupported parameter: 'seed'"))
    assert elsewhere(http(400, "The model `x` does not support images"))
    assert elsewhere(http(413, "Request entity too large"))
    assert elsewhere(http(403, "Your input was flagged by moderation"))
    assert elsewhere(Failure(Kind.ROW, "content filtered by the provider", 200))
    assert elsewhere(http(503, "overloaded"))  # once this endpoint's retries are used up
    assert not elsewhere(http(400, "messages[0].role must be one of user, system"))
    assert not elsewhere(http(402, "Insufficient credits"))  # job-wide: the endpoint retires


def test_a_row_tries_pool_endpoints_then_fallbacks_each_at_most_once() -> None:
    from batchrun.sending.routing import next_endpoint, try_order

    endpoints = [Endpoint(name="big", base_url="u", fallback=True),
                 Endpoint(name="A", base_url="u"), Endpoint(name="B", base_url="u"),
                 Endpoint(name="huge", base_url="u", fallback=True)]
    order = try_order(endpoints)
    assert order == (1, 2, 0, 3)
    assert next_endpoint(order, {1}, set()) == 2
    assert next_endpoint(order, {1}, {2}) == 0  # B retired: the first fallback
    assert next_endpoint(order, {1, 2, 0}, set()) == 3
    assert next_endpoint(order, {1, 2, 0}, {3}) is None


def test_a_rows_outcome_sums_what_it_used_on_each_endpoint() -> None:
    from batchrun.protocol.outcome import ERROR, OK, Outcome
    from batchrun.sending.routing import carried

    failed = Outcome(b"k", ERROR, error="context", attempts=1, endpoint="A")
    retried = Outcome(b"k", ERROR, error="503", attempts=2, prompt_tokens=10, completion_tokens=0,
                      total_tokens=10, cost_usd=0.5, endpoint="B")
    answered = Outcome(b"k", OK, response="hi", attempts=1, prompt_tokens=7, completion_tokens=3,
                       total_tokens=10, cost_usd=0.25, model="m-C", endpoint="C")
    final = carried(carried(failed, retried), answered)
    assert (final.status, final.response, final.model, final.endpoint) == ("ok", "hi", "m-C", "C")
    assert (final.attempts, final.prompt_tokens, final.total_tokens) == (4, 17, 20)
    assert final.cost_usd == 0.75 and final.cached_tokens is None
