"""Resume: a rerun sends exactly the rows whose rendered request has no usable answer yet.

A row is "the same" when its request (model, messages, parameters, base URL) hashes the same:
an edited template or column value re-sends only the rows it changes, a new model or system prompt
re-sends everything, `--fresh` forgets everything, row-fatal errors are retried only with
`--retry-failed`, and rows that ran out of retries on transient errors are retried on any resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchrun.sim import Step, expected_answer

from .helpers import read_output, run_cli, run_job, write_csv

TEMPLATE = "Write one line about {topic} for {name}."


def _topics(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"customer {i}", "topic": f"order {i}"} for i in range(n)]


def _check_answers(out: Path, system: str | None = None) -> None:
    for row in read_output(out):
        messages = [{"role": "user", "content": TEMPLATE.format(**row)}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        assert (row["status"], row["response"]) == ("ok", expected_answer(messages)[0]), row


def test_editing_one_column_in_ten_rows_resends_exactly_those_rows(tmp_path: Path, sim) -> None:
    server = sim()
    n = 60
    rows = _topics(n)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    assert run_job(src, out, server.base_url, "--template", TEMPLATE).returncode == 0
    assert server.stats.requests == n
    edited = {3, 7, 11, 20, 21, 33, 40, 47, 52, 59}
    for i in edited:
        rows[i]["topic"] = f"refund {i}"
    write_csv(src, rows)
    result = run_job(src, out, server.base_url, "--template", TEMPLATE)
    assert result.returncode == 0, result.stderr
    assert server.stats.requests == n + len(edited)
    resent = {text for text, times in server.stats.billed_by_prompt.items() if "refund" in text}
    assert resent == {TEMPLATE.format(**rows[i]) for i in edited}
    _check_answers(out)
    # Editing the template's literal text changes every row's request.
    before = server.stats.requests
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--template", TEMPLATE.replace("one line", "two lines"), "--model", "sim-1",
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    assert server.stats.requests == before + n


def test_new_system_prompt_or_model_resends_all_going_back_is_free_and_fresh_forgets(
        tmp_path: Path, sim) -> None:
    server = sim()
    n = 40
    src = write_csv(tmp_path / "in.csv", _topics(n))
    out = tmp_path / "out.parquet"
    sent = [0]

    def run_and_count(*extra: Any) -> int:
        result = run_job(src, out, server.base_url, *extra, "--template", TEMPLATE)
        assert result.returncode == 0, result.stderr
        new, sent[0] = server.stats.requests - sent[0], server.stats.requests
        return new

    assert run_and_count("--model", "sim-1") == n
    assert run_and_count("--model", "sim-1") == 0  # nothing changed: nothing sent
    assert run_and_count("--model", "sim-1", "--system", "Be brief.") == n
    _check_answers(out, system="Be brief.")
    assert run_and_count("--model", "sim-1") == 0  # the earlier answers are still in the journal
    _check_answers(out)
    assert run_and_count("--model", "sim-large") == n
    assert {r["model"] for r in read_output(out)} == {"sim-large"}
    assert run_and_count("--model", "sim-large", "--temperature", "0.5") == n  # a parameter
    assert run_and_count("--model", "sim-large", "--fresh") == n
    assert run_and_count("--model", "sim-1") == n  # --fresh forgot the sim-1 answers too
    _check_answers(out)


def test_row_fatal_errors_are_resent_only_with_retry_failed(tmp_path: Path, sim) -> None:
    server = sim()
    n = 30
    rows = _topics(n)
    bad = {4, 9, 17}
    for i in bad:
        rows[i]["topic"] = f"forbidden {i}"
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    # The first request of each bad row is refused as invalid (400, never retried).
    server.rule("forbidden", Step.status(400, "Invalid prompt."), times=len(bad))

    first = run_job(src, out, server.base_url, "--template", TEMPLATE)
    assert first.returncode == 1, first.stderr
    assert server.stats.requests == n
    output = read_output(out)
    assert {i for i, r in enumerate(output) if r["status"] == "error"} == bad
    assert all("400" in output[i]["error"] for i in bad)

    plain = run_job(src, out, server.base_url, "--template", TEMPLATE)
    assert plain.returncode == 1
    assert server.stats.requests == n  # a plain resume does not pay for them again

    retried = run_job(src, out, server.base_url, "--retry-failed",
                      "--template", TEMPLATE)
    assert retried.returncode == 0, retried.stderr
    assert server.stats.requests == n + len(bad)
    _check_answers(out)


def test_rows_that_ran_out_of_retries_are_resent_on_a_plain_resume(tmp_path: Path, sim) -> None:
    server = sim()
    n = 30
    rows = _topics(n)
    flaky = {2, 15, 28}
    for i in flaky:
        rows[i]["topic"] = f"flaky {i}"
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    attempts = 2
    server.rule("flaky", Step.status(503, retry_after_ms=10), times=len(flaky) * attempts)

    first = run_job(src, out, server.base_url, "--max-attempts", attempts,
                    "--template", TEMPLATE)
    assert first.returncode == 1, first.stderr
    assert server.stats.requests == n + len(flaky)  # each flaky row: 2 attempts
    output = read_output(out)
    assert {i for i, r in enumerate(output) if r["status"] == "error"} == flaky
    assert all(output[i]["attempts"] == attempts for i in flaky)

    resumed = run_job(src, out, server.base_url, "--max-attempts", attempts,
                      "--template", TEMPLATE)
    assert resumed.returncode == 0, resumed.stderr
    assert server.stats.requests == n + len(flaky) + len(flaky)
    _check_answers(out)


def test_unreadable_journal_is_one_line_exit_2_and_fresh_starts_over(tmp_path: Path, sim) -> None:
    server = sim()
    src = write_csv(tmp_path / "in.csv", _topics(10))
    out = tmp_path / "out.parquet"
    journal = tmp_path / "out.journal.sqlite"
    journal.write_bytes(b"not a database, just bytes " * 200)
    refused = run_job(src, out, server.base_url, "--template", TEMPLATE)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "journal" in refused.stderr and "--fresh" in refused.stderr
    assert server.stats.requests == 0
    status = run_cli("status", out)
    assert status.returncode == 2 and status.stderr.count("\n") == 1
    fresh = run_job(src, out, server.base_url, "--fresh",
                    "--template", TEMPLATE)
    assert fresh.returncode == 0, fresh.stderr
    assert server.stats.requests == 10
    _check_answers(out)


def test_a_finished_run_keeps_its_results_in_the_log_until_the_next_run_folds_them(
    tmp_path: Path, sim
) -> None:
    """A run that began with an empty journal reads its answers back through an index on `log`
    instead of folding them; the next run folds them into `results` first, and answers the same."""
    import sqlite3

    from .helpers import journal_file

    def tables(out: Path) -> tuple[int, int, bool]:
        db = sqlite3.connect(journal_file(out))
        try:
            logged, kept = (db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                            for t in ("log", "results"))
            indexed = db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'log_key'").fetchone() is not None
            return logged, kept, indexed
        finally:
            db.close()

    server = sim()
    rows = _topics(40)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    assert run_job(src, out, server.base_url, "--template", TEMPLATE).returncode == 0
    assert tables(out) == (40, 0, True)
    _check_answers(out)
    first = read_output(out)
    # Same rows again plus five new ones: the earlier forty are folded and reused, not re-sent.
    rows += [{"id": 40 + i, "name": f"new {i}", "topic": f"gift {i}"} for i in range(5)]
    write_csv(src, rows)
    result = run_job(src, out, server.base_url, "--template", TEMPLATE)
    assert result.returncode == 0, result.stderr
    assert server.stats.requests == 45
    assert tables(out) == (0, 45, False)  # this run resumed: it folded at the end too
    _check_answers(out)
    assert read_output(out)[:40] == first
