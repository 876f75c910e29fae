"""The Files API: batch uploads stored and served back, refusals as strict as OpenAI's."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from batchrun.sim import SimConfig

from .helpers import batch_api, chat, jsonl, request_line

FILE_KEYS = {"id", "object", "bytes", "created_at", "filename", "purpose", "status", "expires_at",
             "status_details"}


def test_upload_retrieve_and_download_a_batch_file() -> None:
    data = jsonl([request_line("a", "first"), request_line("b", "second")])

    async def main() -> None:
        async with batch_api() as (sim, api, _):
            r = await api.upload(data, filename="rows.jsonl")
            assert r.status == 200
            file = r.json
            assert set(file) == FILE_KEYS
            assert file["id"].startswith("file-") and file["object"] == "file"
            assert (file["bytes"], file["filename"], file["purpose"]) == (len(data), "rows.jsonl", "batch")
            assert (await api.get(f"/files/{file['id']}")).json == file
            content = await api.get(f"/files/{file['id']}/content")
            assert content.status == 200 and content.raw == data
            assert sim.stats.files_uploaded == 1 and sim.stats.requests == 0  # not chat requests

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kwargs", "param", "fragment"),
    [
        ({"purpose": None}, "purpose", "Missing required parameter: 'purpose'"),
        ({"purpose": "fine-tune"}, "purpose", "only 'batch' files"),
        ({"filename": "rows.csv"}, "file", "Must be .jsonl"),
    ],
)
def test_upload_refusals_name_the_field(kwargs: dict[str, str | None], param: str, fragment: str) -> None:
    async def main() -> None:
        async with batch_api() as (sim, api, _):
            r = await api.upload(b"{}\n", **kwargs)  # type: ignore[arg-type]  # None drops the field
            assert r.status == 400 and r.error["param"] == param and fragment in r.error["message"]
            assert sim.stats.files_uploaded == 0

    asyncio.run(main())


def test_upload_must_be_multipart_with_known_fields_only() -> None:
    async def main() -> None:
        async with batch_api() as (_, api, client):
            r = await api.post("/files", {"purpose": "batch"})
            assert r.status == 400 and "multipart/form-data" in r.error["message"]
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("colour", "blue")
            form.add_field("file", b"{}\n", filename="rows.jsonl")  # a file part: sent as multipart
            async with client.session.post(api.base_url + "/files", data=form) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["param"] == "colour"
            form = aiohttp.FormData(default_to_multipart=True)
            form.add_field("purpose", "batch")
            async with client.session.post(api.base_url + "/files", data=form) as resp:
                assert resp.status == 400
                assert "Missing required parameter: 'file'" in (await resp.json())["error"]["message"]

    asyncio.run(main())


def test_unknown_files_are_404() -> None:
    async def main() -> None:
        async with batch_api() as (_, api, _client):
            for path in ("/files/file-nope", "/files/file-nope/content"):
                r = await api.get(path)
                assert r.status == 404 and r.error["message"] == "No such File object: file-nope"

    asyncio.run(main())


def test_files_and_batches_need_the_key_when_one_is_set() -> None:
    async def main() -> None:
        async with batch_api(SimConfig(api_key="sk-sim-secret")) as (_, api, _client):
            r = await api.upload(b"{}\n")
            assert r.status == 401 and "sk-sim-secret" not in r.raw.decode()
            assert (await api.get("/batches")).status == 401
            api.session.headers["Authorization"] = "Bearer sk-sim-secret"
            assert (await api.upload(b"{}\n")).status == 200

    asyncio.run(main())


def test_a_provider_without_a_batch_api_answers_404_everywhere_but_chat() -> None:
    async def main() -> None:
        async with batch_api(SimConfig(batch_api=False)) as (sim, api, client):
            replies = [
                await api.upload(jsonl([request_line("a", "x")])),
                await api.create("file-x"),
                await api.get("/batches"),
                await api.get("/batches/batch_x"),
                await api.post("/batches/batch_x/cancel"),
                await api.get("/files/file-x/content"),
            ]
            for r in replies:
                assert r.status == 404 and r.error["message"].startswith("Invalid URL (")
            assert (await client.post(chat("still online"))).status == 200
            assert (sim.stats.files_uploaded, sim.stats.batches_created) == (0, 0)

    asyncio.run(main())
