"""The Batch API: a batch's life from validating to its end, answered and billed as online."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from batchrun.protocol.tokens import count_prompt_tokens
from batchrun.sim import SimConfig, expected_answer

from .helpers import BatchAPI, batch_api, chat, jsonl, request_line, user

BATCH_KEYS = {
    "id", "object", "endpoint", "model", "errors", "input_file_id", "completion_window", "status",
    "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at", "finalizing_at",
    "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at", "request_counts", "metadata",
}


def _prompts(n: int) -> list[str]:
    return [f"Summarize review number {i}." for i in range(n)]


def _file(prompts: list[str], **params: Any) -> bytes:
    return jsonl([request_line(f"row-{i}", p, **params) for i, p in enumerate(prompts)])


def test_a_batch_goes_validating_in_progress_finalizing_completed_with_online_answers() -> None:
    prompts = _prompts(5)

    async def main() -> None:
        async with batch_api() as (sim, api, client):
            created = await api.submit(_file(prompts), metadata={"output": "out.parquet", "fp": "abc"})
            assert set(created) == BATCH_KEYS
            assert created["status"] == "validating" and created["object"] == "batch"
            assert created["id"].startswith("batch_") and created["endpoint"] == "/v1/chat/completions"
            assert created["expires_at"] == created["created_at"] + 24 * 3600
            assert created["metadata"] == {"output": "out.parquet", "fp": "abc"}
            done = await api.wait(created["id"])
            assert done["status"] == "completed" and done["errors"] is None
            assert done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
            stamps = [done[k] for k in ("created_at", "in_progress_at", "finalizing_at", "completed_at")]
            assert stamps == sorted(stamps) and done["failed_at"] is None and done["model"] == "sim-1"
            assert done["error_file_id"] is None
            lines = await api.lines(done["output_file_id"])
            assert [line["custom_id"] for line in lines] == [f"row-{i}" for i in range(5)]
            for prompt, line in zip(prompts, lines, strict=True):
                assert set(line) == {"id", "custom_id", "response", "error"} and line["error"] is None
                response = line["response"]
                assert set(response) == {"status_code", "request_id", "body"}
                assert response["status_code"] == 200
                body = response["body"]
                assert body["choices"][0]["message"]["content"] == expected_answer(user(prompt))[0]
                assert body["usage"]["prompt_tokens"] == count_prompt_tokens(user(prompt))
                online = await client.post(chat(prompt))  # the online endpoint answers the same
                assert online.content == body["choices"][0]["message"]["content"]
            stats = sim.stats
            assert (stats.files_uploaded, stats.batches_created, stats.batch_lines_billed) == (1, 1, 5)
            assert stats.billed_by_prompt == {p: 2 for p in prompts}  # once in the batch, once online
            assert stats.requests == 5  # only the online ones are chat requests

    asyncio.run(main())


def test_batch_usage_and_billing_follow_the_tokenizer_ratio() -> None:
    async def main() -> None:
        async with batch_api(SimConfig(tokenizer_ratio=2.0)) as (sim, api, _):
            batch = await api.wait((await api.submit(_file(["a longer prompt than most"])))["id"])
            (line,) = await api.lines(batch["output_file_id"])
            usage = line["response"]["body"]["usage"]
            assert usage["prompt_tokens"] == 2 * count_prompt_tokens(user("a longer prompt than most"))
            assert sim.stats.billed_prompt_tokens == usage["prompt_tokens"]
            assert sim.stats.billed_total_tokens == usage["total_tokens"]

    asyncio.run(main())


def test_refused_lines_and_failed_lines_go_to_the_error_file_unbilled() -> None:
    lines = [request_line(f"ok-{i}", f"fine {i}") for i in range(40)]
    lines.append(request_line("hot", "too hot", temperature=5))

    async def main() -> None:
        async with batch_api(SimConfig(batch_fail_rate=0.25, seed=3)) as (sim, api, _):
            batch = await api.wait((await api.submit(jsonl(lines)))["id"])
            assert batch["status"] == "completed"
            output, errors = await api.lines(batch["output_file_id"]), await api.lines(batch["error_file_id"])
            counts = batch["request_counts"]
            assert counts == {"total": 41, "completed": len(output), "failed": len(errors)}
            assert {x["custom_id"] for x in output + errors} == {x["custom_id"] for x in lines}
            statuses = {x["custom_id"]: x["response"]["status_code"] for x in errors}
            assert statuses.pop("hot") == 400
            assert 3 <= len(statuses) <= 20 and set(statuses.values()) == {500}
            hot = next(x for x in errors if x["custom_id"] == "hot")["response"]["body"]["error"]
            assert hot["param"] == "temperature"
            failed = next(x for x in errors if x["response"]["status_code"] == 500)["response"]["body"]
            assert failed["error"]["type"] == "server_error" and all(x["error"] is None for x in errors)
            billed = sim.stats.billed_by_prompt
            assert sim.stats.batch_lines_billed == len(output) == len(billed)
            assert billed == {x["response"]["body"]["choices"][0]["message"]["content"] and
                              f"fine {x['custom_id'][3:]}": 1 for x in output}

    asyncio.run(main())


def _line_with(**changes: Any) -> dict[str, Any]:
    line = request_line("x", "changed")
    line.update(changes)
    return {k: v for k, v in line.items() if v is not None}


INVALID_FILES: list[tuple[str, bytes, dict[str, Any], str, int | None]] = [
    ("duplicate", jsonl([request_line("same", "a"), request_line("same", "b")]), {},
     "duplicate_custom_id", 2),
    ("mixed models", jsonl([request_line("a", "a"), request_line("b", "b", model="sim-large")]), {},
     "model_mismatch", 2),
    ("not JSON", jsonl([request_line("a", "a")]) + b'{"custom_id": "b", \n', {}, "invalid_json_line", 2),
    ("not an object", b"[1, 2]\n", {}, "invalid_json_line", 1),
    ("no custom_id", jsonl([_line_with(custom_id=None)]), {}, "missing_required_parameter", 1),
    ("no body", jsonl([_line_with(body=None)]), {}, "missing_required_parameter", 1),
    ("no model", jsonl([_line_with(body={"messages": user("m")})]), {}, "missing_required_parameter", 1),
    ("wrong url", jsonl([_line_with(url="/v1/embeddings")]), {}, "url_mismatch", 1),
    ("GET", jsonl([_line_with(method="GET")]), {}, "invalid_value", 1),
    ("extra key", jsonl([_line_with(params={})]), {}, "invalid_request", 1),
    ("empty", b"", {}, "empty_file", None),
    ("over the line limit", _file(_prompts(3)), {"batch_max_lines": 2}, "too_many_tasks", None),
    ("over the size limit", _file(_prompts(3)), {"batch_max_bytes": 100}, "file_too_large", None),
]


@pytest.mark.parametrize(("data", "config", "code", "line"), [x[1:] for x in INVALID_FILES],
                         ids=[x[0] for x in INVALID_FILES])
def test_a_file_that_does_not_validate_fails_the_batch_naming_the_line(
    data: bytes, config: dict[str, Any], code: str, line: int | None
) -> None:
    async def main() -> None:
        async with batch_api(SimConfig(**config)) as (sim, api, _):
            batch = await api.wait((await api.submit(data))["id"])
            assert batch["status"] == "failed" and batch["failed_at"] is not None
            assert batch["in_progress_at"] is None and batch["output_file_id"] is None
            errors = batch["errors"]
            assert errors["object"] == "list"
            assert [(e["code"], e["line"]) for e in errors["data"]][:1] == [(code, line)]
            assert all(set(e) == {"code", "message", "param", "line"} for e in errors["data"])
            assert sim.stats.batch_lines_billed == 0 and not sim.stats.billed_by_prompt

    asyncio.run(main())


CREATE_REFUSALS: list[tuple[dict[str, Any], int, str | None]] = [
    ({"endpoint": "/v1/embeddings"}, 400, "endpoint"),
    ({"completion_window": "48h"}, 400, "completion_window"),
    ({"metadata": {"k": 5}}, 400, "metadata"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    ({"priority": "high"}, 400, "priority"),
    ({"input_file_id": "file-none"}, 404, "id"),
    ({"input_file_id": None}, 400, "input_file_id"),
]


@pytest.mark.parametrize(("change", "status", "param"), CREATE_REFUSALS)
def test_create_refusals_name_the_parameter(change: dict[str, Any], status: int, param: str | None) -> None:
    async def main() -> None:
        async with batch_api() as (sim, api, _):
            file_id = (await api.upload(_file(["p"]))).json["id"]
            r = await api.create(file_id, **change)
            assert r.status == status and r.error["param"] == param, r.raw
            assert sim.stats.batches_created == 0

    asyncio.run(main())


def test_an_output_file_cannot_be_the_input_of_a_batch() -> None:
    async def main() -> None:
        async with batch_api() as (_, api, _client):
            done = await api.wait((await api.submit(_file(["p"])))["id"])
            r = await api.create(done["output_file_id"])
            assert r.status == 400 and "purpose 'batch_output'" in r.error["message"]
            assert (await api.get("/batches/batch_nope")).status == 404

    asyncio.run(main())


def test_expiry_after_a_share_of_lines_keeps_what_is_done() -> None:
    prompts = _prompts(10)

    async def main() -> None:
        async with batch_api(SimConfig(batch_expire_after_fraction=0.6)) as (sim, api, _):
            batch = await api.wait((await api.submit(_file(prompts)))["id"])
            assert batch["status"] == "expired" and batch["expired_at"] is not None
            assert batch["completed_at"] is None
            assert batch["request_counts"] == {"total": 10, "completed": 6, "failed": 0}
            output, errors = await api.lines(batch["output_file_id"]), await api.lines(batch["error_file_id"])
            assert [x["custom_id"] for x in output] == [f"row-{i}" for i in range(6)]
            assert [x["custom_id"] for x in errors] == [f"row-{i}" for i in range(6, 10)]
            for x in errors:
                assert x["response"] is None and x["error"]["code"] == "batch_expired"
            assert sim.stats.billed_by_prompt == {p: 1 for p in prompts[:6]}

    asyncio.run(main())


def test_expiry_after_seconds_cuts_a_slow_batch() -> None:
    async def main() -> None:
        config = SimConfig(batch_lines_per_s=40, batch_expire_after_s=0.3)
        async with batch_api(config) as (sim, api, _):
            batch = await api.wait((await api.submit(_file(_prompts(100))))["id"])
            assert batch["status"] == "expired"
            done = batch["request_counts"]["completed"]
            assert 1 <= done < 100 and sim.stats.batch_lines_billed == done
            assert len(await api.lines(batch["error_file_id"])) == 100 - done

    asyncio.run(main())


def test_a_batch_runs_at_its_pace_and_reports_counts_while_in_progress() -> None:
    async def main() -> None:
        async with batch_api(SimConfig(batch_duration_s=0.6)) as (_, api, _client):
            loop = asyncio.get_running_loop()
            started = loop.time()
            batch_id = (await api.submit(_file(_prompts(12))))["id"]
            seen: set[int] = set()
            while (batch := (await api.get(f"/batches/{batch_id}")).json)["status"] != "completed":
                if batch["status"] == "in_progress":
                    seen.add(batch["request_counts"]["completed"])
                await asyncio.sleep(0.02)
            assert loop.time() - started >= 0.5
            assert any(0 < n < 12 for n in seen)  # counts grow while it runs

    asyncio.run(main())


async def _cancelled(api: BatchAPI, batch_id: str) -> dict[str, Any]:
    r = await api.post(f"/batches/{batch_id}/cancel")
    assert r.status == 200 and r.json["status"] == "cancelling" and r.json["cancelling_at"] is not None
    return await api.wait(batch_id)


def test_cancel_keeps_what_is_done_and_marks_the_rest_cancelled() -> None:
    prompts = _prompts(10)

    async def main() -> None:
        async with batch_api(SimConfig(batch_duration_s=10)) as (sim, api, _):
            batch_id = (await api.submit(_file(prompts)))["id"]
            await api.wait(batch_id, until=frozenset({"in_progress"}))
            while (await api.get(f"/batches/{batch_id}")).json["request_counts"]["completed"] < 1:
                await asyncio.sleep(0.05)  # a line a second: wait for the first one
            batch = await _cancelled(api, batch_id)
            assert batch["status"] == "cancelled" and batch["cancelled_at"] is not None
            done = batch["request_counts"]["completed"]
            assert done >= 1
            errors = await api.lines(batch["error_file_id"])
            assert len(errors) == 10 - done
            assert all(x["error"]["code"] == "batch_cancelled" and x["response"] is None for x in errors)
            assert sim.stats.batch_lines_billed == done
            again = await api.post(f"/batches/{batch_id}/cancel")
            assert again.status == 200 and again.json["status"] == "cancelled"

    asyncio.run(main())


def test_cancel_while_validating_and_after_completion() -> None:
    async def main() -> None:
        async with batch_api(SimConfig(batch_validating_s=0.3)) as (sim, api, _):
            created = await api.submit(_file(_prompts(3)))
            assert (await api.get(f"/batches/{created['id']}")).json["status"] == "validating"
            batch = await _cancelled(api, created["id"])
            assert batch["status"] == "cancelled" and batch["in_progress_at"] is None
            assert len(await api.lines(batch["error_file_id"])) == 3 and batch["output_file_id"] is None
            done = await api.wait((await api.submit(_file(_prompts(2))))["id"])
            refused = await api.post(f"/batches/{done['id']}/cancel")
            assert refused.status == 400 and "'completed'" in refused.error["message"]
            assert sim.stats.batch_lines_billed == 2

    asyncio.run(main())


def test_shuffled_output_holds_every_line_once_in_a_seeded_order() -> None:
    async def order(seed: int) -> list[str]:
        async with batch_api(SimConfig(batch_shuffle=True, seed=seed)) as (_, api, _client):
            batch = await api.wait((await api.submit(_file(_prompts(30))))["id"])
            return [x["custom_id"] for x in await api.lines(batch["output_file_id"])]

    first = asyncio.run(order(1))
    in_order = [f"row-{i}" for i in range(30)]
    assert sorted(first) == sorted(in_order) and first != in_order
    assert asyncio.run(order(1)) == first


def test_list_is_newest_first_with_limit_and_after() -> None:
    async def main() -> None:
        async with batch_api() as (_, api, _client):
            ids = []
            for i in range(5):
                ids.append((await api.submit(_file([f"p{i}"]), metadata={"n": str(i)}))["id"])
            newest = ids[::-1]
            page = (await api.get("/batches?limit=2")).json
            assert page["object"] == "list" and page["has_more"] is True
            assert [b["id"] for b in page["data"]] == newest[:2]
            assert (page["first_id"], page["last_id"]) == (newest[0], newest[1])
            assert [b["metadata"] for b in page["data"]] == [{"n": "4"}, {"n": "3"}]
            page = (await api.get(f"/batches?limit=2&after={page['last_id']}")).json
            assert [b["id"] for b in page["data"]] == newest[2:4] and page["has_more"] is True
            page = (await api.get(f"/batches?limit=2&after={page['last_id']}")).json
            assert [b["id"] for b in page["data"]] == newest[4:] and page["has_more"] is False
            assert len((await api.get("/batches")).json["data"]) == 5  # default limit 20
            for bad in ("0", "101", "x"):
                r = await api.get(f"/batches?limit={bad}")
                assert r.status == 400 and r.error["param"] == "limit"

    asyncio.run(main())


def test_stopping_the_simulator_stops_running_batches() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with batch_api(SimConfig(batch_duration_s=3600)) as (_, api, _client):
            batch_id = (await api.submit(_file(_prompts(3))))["id"]
            await api.wait(batch_id, until=frozenset({"in_progress"}))
            stopping = loop.time()
        assert loop.time() - stopping < 2

    asyncio.run(main())
