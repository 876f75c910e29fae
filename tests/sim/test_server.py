"""The server: body size, the key, stats and reset endpoints, alternative paths."""

from __future__ import annotations

from batchrun.sim import (
    SimConfig,
    Simulator,
    Step,
)

from .helpers import (
    Client,
    chat,
    run_with,
)


def test_oversized_body_gets_413() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("x" * 5000))
        assert r.status == 413 and r.error["code"] == "request_too_large"
        assert (await client.post(chat("small"))).status == 200

    run_with(SimConfig(max_body_bytes=2000), scenario)


def test_api_key_required_and_never_echoed() -> None:
    key = "sk-sim-secret-123456"

    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat())
        assert r.status == 401 and r.error["type"] == "invalid_request_error"
        r = await client.post(chat(), headers={"Authorization": "Bearer sk-wrong-key-999"})
        assert r.status == 401 and r.error["code"] == "invalid_api_key"
        assert b"sk-wrong-key-999" not in r.raw and key.encode() not in r.raw
        r = await client.get("/models")
        assert r.status == 401
        r = await client.post(chat(), headers={"Authorization": f"Bearer {key}"})
        assert r.status == 200
        assert sim.stats.status_counts == {401: 2, 200: 1}

    run_with(SimConfig(api_key=key), scenario)


def test_stats_and_reset_endpoints() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        sim.script(Step.status(500))
        await client.post(chat("a"))
        await client.post(chat("b"))
        stats = (await client.get("/_stats")).json
        assert stats["requests"] == 2 and stats["ok"] == 1
        assert stats["status_counts"] == {"500": 1, "200": 1}
        assert stats["billed_by_prompt"] == {"b": 1} and len(stats["arrivals"]) == 2
        async with client.session.post(sim.base_url.removesuffix("/v1") + "/_reset") as r:
            assert r.status == 200
        assert (await client.get("/_stats")).json["requests"] == 0
        assert sim.stats.requests == 0

    run_with(SimConfig(), scenario)


def test_alternative_paths() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        root = sim.base_url.removesuffix("/v1")
        for path in ("/chat/completions", "/api/v1/chat/completions"):
            async with client.session.post(root + path, json=chat()) as r:
                assert r.status == 200

    run_with(SimConfig(), scenario)
