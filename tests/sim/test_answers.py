"""Answers: deterministic per prompt, usage, max_tokens, prefill, structured output and tools."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest

from batchrun.protocol.tokens import count_prompt_tokens
from batchrun.sim import (
    SimConfig,
    Simulator,
    answer_text,
    expected_answer,
)

from .helpers import (
    OTHER_TOOL,
    WEATHER_TOOL,
    Client,
    chat,
    run_with,
    user,
    validates,
)


def test_normal_answer_and_usage() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("Summarize: the cat sat on the mat"))
        assert r.status == 200
        doc = r.json
        assert doc["id"].startswith("chatcmpl-sim-")
        assert doc["object"] == "chat.completion" and doc["model"] == "sim-1"
        choice = doc["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] == "stop"
        content = choice["message"]["content"]
        marker = hashlib.sha256(b"Summarize: the cat sat on the mat").hexdigest()[:12]
        assert content.startswith(f"[{marker}]")
        prompt = count_prompt_tokens(user("Summarize: the cat sat on the mat"))
        words = len(content.split())
        assert doc["usage"] == {
            "prompt_tokens": prompt,
            "completion_tokens": words,
            "total_tokens": prompt + words,
        }
        stats = sim.stats
        assert (stats.requests, stats.ok, stats.status_counts) == (1, 1, {200: 1})
        assert stats.billed_total_tokens == prompt + words
        assert stats.billed_by_prompt == {"Summarize: the cat sat on the mat": 1}
        assert list(sim.last_bodies) == [chat("Summarize: the cat sat on the mat")]

    run_with(SimConfig(), scenario)


def test_answer_text_is_deterministic_and_per_prompt() -> None:
    answers = {answer_text(user(f"prompt {i}")) for i in range(200)}
    assert len(answers) == 200
    for answer in answers:
        assert 5 <= len(answer.split()) <= 40
        assert re.match(r"\[[0-9a-f]{12}\] ", answer)
    assert answer_text(user("same")) == answer_text(user("same"))
    multimodal = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        }
    ]
    assert answer_text(multimodal) == answer_text(user("describe"))


PROMPT_CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"messages": user("plain")}, {}),
    ({"messages": [{"role": "system", "content": "Be terse."}, *user("with system")]}, {}),
    ({"messages": user("short"), "max_tokens": 3}, {"max_tokens": 3}),
    ({"messages": user("long enough"), "max_tokens": 500}, {"max_tokens": 500}),
    (
        {"messages": user("json please"), "response_format": {"type": "json_object"}},
        {"response_format": {"type": "json_object"}},
    ),
    ({"messages": [*user("Write a poem"), {"role": "assistant", "content": "Waves on"}]}, {}),
    ({"messages": user("ünïcödé ✓ 日本")}, {}),
]


@pytest.mark.parametrize(("body", "kwargs"), PROMPT_CASES)
def test_expected_answer_matches_server(body: dict[str, Any], kwargs: dict[str, Any]) -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(body)
        assert r.status == 200, r.raw
        content, finish = expected_answer(
            body["messages"], kwargs.get("max_tokens"), response_format=kwargs.get("response_format")
        )
        assert r.content == content
        assert r.json["choices"][0]["finish_reason"] == finish
        assert r.json["usage"]["completion_tokens"] == len(content.split())

    run_with(SimConfig(), scenario)


def test_max_tokens_cuts_the_answer_with_finish_length() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        full = answer_text(user("cut me"))
        r = await client.post(chat("cut me", max_tokens=2))
        assert r.content == " ".join(full.split()[:2])
        assert r.json["choices"][0]["finish_reason"] == "length"
        assert r.json["usage"]["completion_tokens"] == 2
        r = await client.post(chat("cut me", max_tokens=len(full.split())))
        assert r.content == full and r.json["choices"][0]["finish_reason"] == "stop"

    run_with(SimConfig(), scenario)


def test_assistant_prefill_is_continued_under_the_users_marker() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        messages = [*user("Write a poem"), {"role": "assistant", "content": "Waves on"}]
        r = await client.post({"messages": messages})
        plain = answer_text(user("Write a poem"))
        assert r.content is not None and r.content != plain
        assert r.content.split()[0] == plain.split()[0]

    run_with(SimConfig(), scenario)


def test_json_object_answer() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        r = await client.post(chat("give json", response_format={"type": "json_object"}))
        doc = json.loads(r.content or "")
        assert doc["answer"] == answer_text(user("give json"))
        assert doc["words"] == len(doc["answer"].split())
        r = await client.post(chat("BADJSON here", response_format={"type": "json_object"}))
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.content or "")

    run_with(SimConfig(), scenario)


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "spam": {"type": "boolean"},
        "summary": {"type": "string", "maxLength": 30},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4},
        "author": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "exclusiveMinimum": 17}},
            "required": ["name", "age"],
        },
        "note": {"type": ["string", "null"]},
    },
    "required": ["label", "score", "stars", "spam", "summary", "tags", "author"],
    "additionalProperties": False,
}


def test_json_schema_answers_validate() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        fmt = {"type": "json_schema", "json_schema": {"name": "review", "schema": SCHEMA}}
        labels = set()
        for i in range(20):
            r = await client.post(chat(f"review {i}", response_format=fmt))
            doc = json.loads(r.content or "")
            assert validates(doc, SCHEMA), doc
            labels.add(doc["label"])
            assert r.content == expected_answer(user(f"review {i}"), response_format=fmt)[0]
        assert len(labels) > 1  # deterministic per prompt, but varied across prompts

    run_with(SimConfig(), scenario)


def test_tool_calls() -> None:
    async def scenario(sim: Simulator, client: Client) -> None:
        tools = [WEATHER_TOOL, OTHER_TOOL]
        r = await client.post(chat("weather? CALL_TOOL", tools=tools))
        choice = r.json["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        args = json.loads(call["function"]["arguments"])
        assert validates(args, WEATHER_TOOL["function"]["parameters"])  # type: ignore[index]
        r = await client.post(chat("plain", tools=tools))
        assert r.json["choices"][0]["finish_reason"] == "stop" and r.content
        r = await client.post(chat("plain", tools=tools, tool_choice="required"))
        assert r.json["choices"][0]["finish_reason"] == "tool_calls"
        named = {"type": "function", "function": {"name": "lookup"}}
        r = await client.post(chat("plain", tools=tools, tool_choice=named))
        call = r.json["choices"][0]["message"]["tool_calls"][0]
        assert call["function"]["name"] == "lookup"
        assert isinstance(json.loads(call["function"]["arguments"])["id"], int)
        r = await client.post(chat("CALL_TOOL", tools=tools, tool_choice="none"))
        assert r.json["choices"][0]["finish_reason"] == "stop"
        # A tool result turn is valid input.
        messages = [
            *user("CALL_TOOL"),
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": '{"t": 3}'},
        ]
        assert (await client.post({"messages": messages, "tools": tools})).status == 200

    run_with(SimConfig(), scenario)
