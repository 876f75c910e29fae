"""Request validation: every bad body gets a clear 4xx naming the parameter, never a crash."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.protocol.tokens import count_prompt_tokens
from batchrun.sim import (
    CONTEXT_LIMIT,
    SimConfig,
    Simulator,
    SimulatorThread,
    answer_text,
)

from .helpers import (
    PNG_1PX,
    WEATHER_TOOL,
    Client,
    Reply,
    chat,
    new_session,
    run_with,
    user,
)


def test_model_defaults_to_sim_1_and_unknown_models_get_404() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post({"messages": user("no model")})
        assert r.status == 200 and r.json["model"] == "sim-1"
        r = await client.post(chat("x") | {"model": "gpt-9"})
        assert r.status == 404
        assert r.error["code"] == "model_not_found" and "gpt-9" in r.error["message"]
        r = await client.post(chat("x") | {"model": "sim-large"})
        assert r.status == 200 and r.json["model"] == "sim-large"
        r = await client.get("/models")
        assert [m["id"] for m in r.json["data"]] == ["sim-1", "sim-large"]

    run_with(SimConfig(models=("sim-1", "sim-large")), scenario)


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"frequency_penalty": 2.1}, "frequency_penalty"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": 7}, "stop"),
    ({"n": 2}, "n"),
    ({"stream": True}, "stream"),
    ({"model": 42}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0]"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"max_token": 10}, "max_token"),
]


@pytest.mark.parametrize(("change", "param"), INVALID, ids=[p for _, p in INVALID])
def test_invalid_parameters_get_400_naming_them(change: dict[str, Any], param: str) -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("valid otherwise") | change)
        assert r.status == 400, r.raw
        assert r.error["type"] == "invalid_request_error"
        assert r.error["param"] == param
        assert sim.stats.ok == 0 and sim.stats.status_counts == {400: 1}

    run_with(SimConfig(), scenario)


def test_streaming_refused_with_a_clear_message() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat(stream=True))
        assert r.error["message"] == "streaming not supported by the simulator"

    run_with(SimConfig(), scenario)


def test_valid_edge_values_are_accepted() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        edges = {
            "temperature": 0,
            "top_p": 1,
            "frequency_penalty": -2,
            "presence_penalty": 2,
            "max_tokens": 1,
            "stop": ["a", "b", "c", "d"],
            "n": 1,
            "stream": False,
            "seed": 7,
            "user": "u1",
        }
        r = await client.post(chat("edges", **edges))
        assert r.status == 200, r.raw
        r = await client.post(chat("edges", temperature=2, stop="x", top_p=0.01))
        assert r.status == 200, r.raw

    run_with(SimConfig(), scenario)


def test_unparseable_body_gets_400() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        for raw in (b"{not json", b"[1, 2]", b""):
            r = await client.post(raw)
            assert r.status == 400 and r.error["type"] == "invalid_request_error"
        assert sim.stats.requests == 3

    run_with(SimConfig(), scenario)


def test_context_length_exceeded() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("word " * 110_000))
        assert r.status == 400 and r.error["code"] == "context_length_exceeded"
        assert "128000" in r.error["message"]

    run_with(SimConfig(), scenario)


def test_images_are_counted_and_bad_data_urls_refused() -> None:
    def image(url: str) -> dict[str, Any]:
        return {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                    ],
                }
            ]
        }

    async def scenario(sim: Simulator, client: Client) -> None:
        assert (await client.post(image(f"data:image/png;base64,{PNG_1PX}"))).status == 200
        assert (await client.post(image("https://example.com/cat.jpg"))).status == 200
        for bad in (
            "data:image/png;base64,@@@not base64",
            "data:text/plain;base64,aGk=",
            "ftp://example.com/x.png",
        ):
            r = await client.post(image(bad))
            assert r.status == 400 and "image_url" in r.error["param"], bad
        assert (sim.stats.images_data_url, sim.stats.images_url) == (1, 1)
        r = await client.post(image(f"data:image/png;base64,{PNG_1PX}"))
        assert r.content == answer_text(user("what is this?"))
        assert r.json["usage"]["prompt_tokens"] == count_prompt_tokens(
            image(f"data:image/png;base64,{PNG_1PX}")["messages"]
        )

    run_with(SimConfig(), scenario)


def test_malformed_schemas_and_tools_never_crash_the_server() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        odd = {
            "type": "object",
            "required": True,
            "properties": {
                "n": {"type": "integer", "minimum": "5"},
                "s": {"type": "string", "maxLength": -1},
                "a": {"type": "array", "minItems": "x"},
                "r": {"$ref": "#/nowhere"},
            },
        }
        fmt = {"type": "json_schema", "json_schema": {"name": "odd", "schema": odd}}
        r = await client.post(chat("odd", response_format=fmt))
        assert r.status == 200 and isinstance(json.loads(r.content or ""), dict)
        for tools in ([5], [{"type": "function", "function": 5}], "x"):
            assert (await client.post(chat(tools=tools))).status == 400
        r = await client.post(chat(tools=[WEATHER_TOOL], tool_choice={"function": 5}))
        assert r.status == 400 and r.error["param"] == "tool_choice"

    run_with(SimConfig(), scenario)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


PARAMS = [
    "model",
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "n",
    "stream",
    "response_format",
    "tools",
    "tool_choice",
    "frequency_penalty",
    "presence_penalty",
    "seed",
]


MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool", "bot"]),
        "content": JSON | st.text(max_size=30),
    },
    optional={"tool_call_id": JSON, "tool_calls": JSON},
)


SCHEMA_WORDS = st.sampled_from(
    [
        "type",
        "properties",
        "items",
        "required",
        "enum",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "minItems",
        "maxItems",
        "maxLength",
        "anyOf",
        "allOf",
        "$ref",
        "const",
        "format",
        "object",
        "string",
    ]
)


SCHEMAS = st.recursive(
    JSON, lambda inner: st.dictionaries(SCHEMA_WORDS, inner, max_size=4), max_leaves=16
).filter(lambda v: isinstance(v, dict))


VALID_MESSAGES = st.just([{"role": "user", "content": "CALL_TOOL please"}])


BODIES = (
    st.fixed_dictionaries(
        {"messages": st.lists(MESSAGE, max_size=3) | JSON}, optional={name: JSON for name in PARAMS}
    )
    | st.fixed_dictionaries(
        {
            "messages": VALID_MESSAGES,
            "response_format": st.builds(
                lambda schema: {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
                SCHEMAS,
            ),
        }
    )
    | st.fixed_dictionaries(
        {
            "messages": VALID_MESSAGES,
            "tools": st.lists(
                st.builds(
                    lambda schema: {"type": "function", "function": {"name": "f", "parameters": schema}},
                    SCHEMAS,
                ),
                min_size=1,
                max_size=2,
            ),
        }
    )
)


def test_arbitrary_bodies_get_an_answer_or_a_clean_4xx() -> None:
    async def post(session: aiohttp.ClientSession, url: str, body: Any) -> Reply:
        # Stdlib json: it encodes integers beyond 64 bits, which the server must refuse cleanly.
        return await Client(session, url).post(json.dumps(body).encode())

    with SimulatorThread() as sim, asyncio.Runner() as runner:
        session = runner.run(new_session())

        @settings(max_examples=150, deadline=None, database=None)
        @given(BODIES)
        def check(body: dict[str, Any]) -> None:
            reply = runner.run(post(session, sim.base_url, body))
            assert reply.status in (200, 400), (reply.status, reply.raw, body)
            doc = reply.json
            assert ("choices" in doc) if reply.status == 200 else ("error" in doc)

        try:
            check()
        finally:
            runner.run(session.close())


def test_context_length_is_counted_by_the_providers_tokenizer() -> None:
    text = "word " * 70_000  # about 87,500 of our tokens: fits 128k, but not at twice that

    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat(text, max_tokens=5))
        assert r.status == 400 and r.error["code"] == "context_length_exceeded"
        tokens = round(count_prompt_tokens(user(text)) * 2)
        assert f"you requested {tokens + 5} tokens ({tokens} in the messages, 5 in the completion)" \
            in r.error["message"]

    assert count_prompt_tokens(user(text)) < CONTEXT_LIMIT
    run_with(SimConfig(tokenizer_ratio=2.0), scenario)
