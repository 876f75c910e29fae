"""The collection table, without HTTP: each kind of output/error line becomes the right verdict."""

from __future__ import annotations

import orjson

from batchrun.backends.batch_collect import Rules, collect
from batchrun.backends.batch_files import FileSplitter, batch_line, count_files
from batchrun.journal.batches import Carried
from batchrun.protocol.outcome import ERROR, EXHAUSTED, OK, ROW_FATAL
from batchrun.running.rows import Job
from batchrun.settings.prices import Price

PRICE = Price(0.5, 1.0)  # sim-1's online price, halved
RULES = Rules("text", None, "sim-1", PRICE, max_attempts=3)
A, B, C, D = (bytes([i]) * 16 for i in range(1, 5))


def _ok(key: bytes, content: str = "fine") -> dict:
    body = {"id": "chatcmpl-1", "model": "sim-1", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}}
    return {"id": "batch_req_1", "custom_id": key.hex(),
            "response": {"status_code": 200, "body": body}, "error": None}


def _status(key: bytes, status: int, message: str, code: str | None = None) -> dict:
    return {"id": "batch_req_2", "custom_id": key.hex(), "response": {"status_code": status, "body": {
        "error": {"message": message, "type": "invalid_request_error", "code": code}}},
            "error": None}


def _expired(key: bytes) -> dict:
    return {"id": "batch_req_3", "custom_id": key.hex(), "response": None,
            "error": {"code": "batch_expired", "message": "not executed before the window"}}


def _file(*lines: dict) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def test_answers_row_errors_and_retryable_lines_are_told_apart() -> None:
    output = _file(_ok(A, "answer A"))
    errors = _file(_status(B, 400, "maximum context length exceeded", "context_length_exceeded"),
                   _status(C, 500, "server had an error"), _expired(D))
    got = collect([output, errors], {A, B, C, D}, {}, RULES, "expired")
    by_key = {o.key: o for o in got.outcomes}
    assert by_key[A].status == OK and by_key[A].response == "answer A"
    assert by_key[A].attempts == 1 and by_key[A].latency_ms is None
    assert by_key[A].cost_usd == PRICE.cost(10, 4)
    assert by_key[B].status == ERROR and by_key[B].error_kind == ROW_FATAL
    assert "context" in (by_key[B].error or "")
    assert sorted(r.key for r in got.returned) == sorted([C, D])
    assert all(r.counted for r in got.returned)
    assert (got.prompt_tokens, got.completion_tokens) == (10, 4)
    assert got.stop is None and got.unknown == 0


def test_rows_without_a_line_go_back_and_attempts_run_out() -> None:
    carried = {B: Carried(tries=2, prompt_tokens=7, completion_tokens=3, last_error="500")}
    got = collect([], {A, B}, carried, RULES, "expired")
    assert [r.key for r in got.returned] == [A]
    assert "expired" in got.returned[0].error
    (exhausted,) = got.outcomes
    assert exhausted.key == B and exhausted.error_kind == EXHAUSTED and exhausted.attempts == 3
    # What earlier answers that were not kept used is billed all the same: it stays in the row.
    assert (exhausted.prompt_tokens, exhausted.completion_tokens) == (7, 3)


def test_our_own_cancel_and_a_failed_validation_use_no_attempt() -> None:
    ours = collect([], {A}, {}, RULES, "cancelled", ours=True)
    assert [(r.key, r.counted) for r in ours.returned] == [(A, False)]
    theirs = collect([], {A}, {}, RULES, "cancelled")
    assert [(r.key, r.counted) for r in theirs.returned] == [(A, True)]
    failed = collect([], {A}, {}, RULES, "failed")
    assert [(r.key, r.counted) for r in failed.returned] == [(A, False)]


def test_fallback_online_keeps_leftovers_pending_whatever_their_attempts() -> None:
    rules = Rules("text", None, "sim-1", PRICE, max_attempts=1, exhaust=False)
    got = collect([_file(_status(A, 503, "overloaded"))], {A}, {}, rules, "completed")
    assert not got.outcomes and [r.key for r in got.returned] == [A]


def test_lines_we_did_not_submit_and_garbage_are_ignored_not_trusted() -> None:
    stranger = _ok(D)
    got = collect([_file(_ok(A), stranger, _ok(A, "a second answer")) + b"not json\n"],
                  {A}, {}, RULES, "completed")
    assert [o.response for o in got.outcomes] == ["fine"]  # the first line for a key wins
    assert (got.unknown, got.unreadable) == (1, 1)


def test_a_job_wide_refusal_in_a_line_stops_and_keeps_the_row_pending() -> None:
    got = collect([_file(_status(A, 401, "Incorrect API key provided", "invalid_api_key"))], {A},
                  {}, RULES, "completed")
    assert got.stop and "401" in got.stop
    assert [(r.key, r.counted) for r in got.returned] == [(A, False)]


def test_input_files_split_by_lines_and_by_bytes() -> None:
    jobs = [Job(bytes([i]) * 16, b'{"model":"sim-1","messages":[]}', 10, 0.0) for i in range(10)]
    line = batch_line(jobs[0])
    assert orjson.loads(line) == {"custom_id": jobs[0].key.hex(), "method": "POST",
                                  "url": "/v1/chat/completions",
                                  "body": {"model": "sim-1", "messages": []}}
    by_lines = FileSplitter(max_lines=4)
    files = [*by_lines.add(jobs), by_lines.rest()]
    assert [len(f.jobs) for f in files if f] == [4, 4, 2]
    by_bytes = FileSplitter(max_lines=100, max_bytes=len(line) * 3)
    files = [*by_bytes.add(jobs), by_bytes.rest()]
    assert [len(f.jobs) for f in files if f] == [3, 3, 3, 1]
    assert all(f.size <= len(line) * 3 for f in files if f)
    assert count_files(2_500, 2_500 * 100, 1_000) == 3
    assert count_files(10, 10 * 10**8, 50_000) == 6  # 1 GB of bodies: six files of 200 MB
