"""Hostile server answers: each becomes a row error or a retry, never a crash, hang or memory blow-up."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from batchrun.protocol.retry import Kind
from batchrun.sending.http import MAX_BODY_BYTES, Sender, connections
from batchrun.settings.keys import Secret
from batchrun.sim import Step, expected_answer

from .helpers import read_output, run_cli, write_csv


def _ok_body(content: Any = "fine", usage: Any = None, **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "id": "x-1", "object": "chat.completion", "model": "sim-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
    }
    if usage is not None:
        doc["usage"] = usage
    doc.update(extra)
    return orjson.dumps(doc)


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
# prompt word -> (steps the server answers it with, expected status, text in the error)
CASES: dict[str, tuple[tuple[Step, ...], str, str | None]] = {
    "alphaContentNumber": ((Step.body(_ok_body(42, USAGE)),), "error", "content is not text"),
    "bravoChoicesDict": ((Step.body(orjson.dumps({"choices": {"0": {}}, "usage": USAGE})),),
                         "error", "no choices"),
    "charlieEmptyChoices": ((Step.body(orjson.dumps({"choices": [], "usage": USAGE})),),
                            "error", "no choices"),
    "deltaUsageStrings": ((Step.body(_ok_body("x", {"prompt_tokens": "3",
                                                    "completion_tokens": "2"})),),
                          "error", "usage"),
    "echoNegative": ((Step.body(_ok_body("x", {**USAGE, "completion_tokens": -7})),),
                     "error", "usage"),
    "foxtrotAbsurd": ((Step.body(_ok_body("x", {**USAGE, "total_tokens": 10**15})),),
                      "error", "usage"),
    "golfBoolTokens": ((Step.body(_ok_body("x", {**USAGE, "prompt_tokens": True})),),
                       "error", "usage"),
    "hotelNonUtf8": ((Step.body(b'{"choices": [{"message": {"content": "\xff\xfe oops"}}]}'),),
                     "error", "not JSON"),
    "indiaNotObject": ((Step.body(b"[1, 2, 3]"),), "error", "not a JSON object"),
    "julietHtml": ((Step.body(b"<html>502 Bad Gateway</html>", 502,
                              {"Content-Type": "text/html"}),), "error", "HTTP 502"),
    "kiloErrorIn200": ((Step.body(orjson.dumps({"error": {"message": "upstream fell over"}})),),
                       "error", "upstream fell over"),
    "limaNullContent": ((Step.body(_ok_body(None, USAGE)),), "error", "no content"),
    "mikeTrickle": ((Step.trickle(0.2),), "error", "timeout"),
    "novemberNoUsage": ((Step.body(_ok_body("answer without usage")),), "ok", None),
    "oscarBadThenOk": ((Step.body(b"{\"choices\": [tr"), Step.ok()), "ok", None),
    "papaHuge": ((Step.huge(MAX_BODY_BYTES + (1 << 20)),), "error", "larger than"),
    "quebecHugeUnicodeError": ((Step.body(orjson.dumps({"error": {"message": "\u202e" * 5000}}),
                                          400),), "error", "HTTP 400"),
    "romeoFine": ((Step.ok(),), "ok", None),
}


@pytest.mark.slow
def test_every_hostile_answer_is_a_row_error_or_a_retry(tmp_path: Path, sim) -> None:
    server = sim()
    for word, (steps, _, _) in CASES.items():
        server.rule(word, *steps)
    src = write_csv(tmp_path / "in.csv", [{"prompt": f"please answer {w}"} for w in CASES])
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--no-progress", "--max-attempts", "2",
                     "--timeout", "2", "--concurrency", "32", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    rows = {r["prompt"].split()[-1]: r for r in read_output(out)}
    for word, (_, status, needle) in CASES.items():
        row = rows[word]
        assert row["status"] == status, (word, row)
        if status == "error":
            assert needle is not None and needle in row["error"], (word, row["error"])
            assert row["response"] is None, (word, row)
            assert len(row["error"]) <= 600 and "\n" not in row["error"]
    # Retried twice when a retry may help; not resent when it would only pay again.
    assert rows["alphaContentNumber"]["attempts"] == 2
    assert rows["mikeTrickle"]["attempts"] == 2
    assert rows["papaHuge"]["attempts"] == 1
    assert rows["quebecHugeUnicodeError"]["attempts"] == 1
    assert rows["oscarBadThenOk"]["attempts"] == 2
    # A readable answer that fails judgement was still billed: its usage is kept and counted.
    assert rows["limaNullContent"]["total_tokens"] == 2 * USAGE["total_tokens"]
    text = "please answer oscarBadThenOk"
    assert rows["oscarBadThenOk"]["response"] == expected_answer(
        [{"role": "user", "content": text}])[0]
    # Missing usage: a good answer with unknown (null) token counts, not zeros.
    no_usage = rows["novemberNoUsage"]
    assert no_usage["response"] == "answer without usage"
    assert (no_usage["prompt_tokens"], no_usage["completion_tokens"],
            no_usage["total_tokens"]) == (None, None, None)
    _totals_agree(out, read_output(out))


def _totals_agree(out: Path, rows: list[dict[str, Any]]) -> None:
    """Metadata totals, the sidecar and the rows tell the same token story."""
    meta = orjson.loads(pq.read_schema(out).metadata[b"batchrun"])
    sidecar = pq.read_table(out.with_name(out.name.replace(".parquet", ".usage.parquet")))
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        from_rows = sum(r[name] or 0 for r in rows)
        assert meta["usage"][name] == from_rows, name
        assert sum(sidecar.column(name).to_pylist()) == from_rows, name
    assert meta["rows"]["ok"] == sum(r["status"] == "ok" for r in rows)
    assert meta["rows"]["error"] == sum(r["status"] == "error" for r in rows)


async def _serve_and_send(handler: Any) -> Any:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with connections(f"http://127.0.0.1:{port}/v1", 2) as pool:
            sender = Sender(pool, Secret("k"), 10.0)
            return await sender.send(b"{}")
    finally:
        await runner.cleanup()


def test_an_endless_chunked_body_is_cut_at_the_size_limit() -> None:
    # No Content-Length: the limit must hold while reading, not only from the header.
    written = {"bytes": 0}

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b" " * (1 << 20)
        try:
            while written["bytes"] < 4 * MAX_BODY_BYTES:
                await response.write(chunk)
                written["bytes"] += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return response

    reply = asyncio.run(_serve_and_send(endless))
    assert reply.answer is None and reply.failure is not None
    assert reply.failure.kind is Kind.ROW and "larger than" in reply.failure.message
    assert written["bytes"] < 4 * MAX_BODY_BYTES  # the client hung up instead of reading on


def test_a_gzip_bomb_is_cut_at_the_size_limit_after_decompression() -> None:
    bomb = gzip.compress(b'{"choices": [{"message": {"content": "' + b" " * (4 * MAX_BODY_BYTES))
    assert len(bomb) < MAX_BODY_BYTES // 100

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Type": "application/json",
                                                "Content-Encoding": "gzip"})

    reply = asyncio.run(_serve_and_send(gzipped))
    assert reply.failure is not None and "larger than" in reply.failure.message


def test_an_endless_retry_after_stops_the_job_instead_of_freezing_it(tmp_path: Path, sim) -> None:
    server = sim()
    server.rule("sierra", Step.status(429, retry_after="999999"), times=1)
    rows = [{"prompt": "p sierra"}] + [{"prompt": f"p {i}"} for i in range(20)]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    args = ("run", "--input", src, "--output", out, "--base-url", server.base_url, "--model",
            "sim-1", "--no-progress", "--concurrency", "1")
    result = run_cli(*args, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "retry-after" in result.stderr and "again later" in result.stderr
    assert "Traceback" not in result.stderr
    # The stop kept the row pending: the next run (the server calm again) answers everything.
    again = run_cli(*args, timeout=60)
    assert again.returncode == 0, again.stderr
    assert all(r["status"] == "ok" for r in read_output(out))
