"""A request's identity stays put: resume keys and batch fingerprints of known requests are pinned.

Existing journals resume by these keys and live batches are found again by these fingerprints,
so a change of either value is a break, however tidy the code that caused it. The values below
were computed by the code before the settings were declared once; they must never change.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from batchrun.protocol.render import BodyRenderer, Renderer
from batchrun.settings.config import (
    BODY_PARAMETERS,
    REQUEST_SHAPING,
    SETTINGS,
    RunConfig,
    request_fingerprint,
)

from .helpers import prompts_csv, run_cli

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
FULL = RunConfig(
    input=Path("in.csv"), output=Path("out.parquet"), base_url="https://api.example.test/v1",
    model="gpt-4o-mini", template="Review of {product}: {review}", system="Be brief.",
    temperature=0.7, max_tokens=50, top_p=0.9, frequency_penalty=-1.5, presence_penalty=1.25,
    stop=("END", "###"), seed=1234, response_format="json_object", tools=(TOOL,),
    tool_choice="auto")
PLAIN = RunConfig(input=Path("in.csv"), output=Path("out.parquet"),
                  base_url="http://127.0.0.1:8000/v1", model="sim-1")


def test_the_resume_key_and_body_of_a_request_with_every_parameter_are_pinned() -> None:
    request = Renderer(FULL, ["product", "review"]).render({"product": "lamp", "review": "bright"})
    assert request.key.hex() == "5a2c930202e0b697ab5c88e366275383"
    assert request.body == (
        b'{"frequency_penalty":-1.5,"max_tokens":50,"messages":[{"content":"Be brief.","role":'
        b'"system"},{"content":"Review of lamp: bright","role":"user"}],"model":"gpt-4o-mini",'
        b'"presence_penalty":1.25,"response_format":{"type":"json_object"},"seed":1234,"stop":'
        b'["END","###"],"temperature":0.7,"tool_choice":"auto","tools":[{"function":{"name":"f",'
        b'"parameters":{"type":"object"}},"type":"function"}],"top_p":0.9}')
    plain = Renderer(PLAIN, ["prompt"]).render({"prompt": "hello"})
    assert plain.key.hex() == "fa9379c299a0d19aae1913b386457fa0"


def test_the_resume_keys_of_a_schema_request_and_a_batch_jsonl_body_are_pinned() -> None:
    schema = replace(PLAIN, base_url="https://api.example.test/v1", model="gpt-4o-mini",
                     system="Be brief.", temperature=0.5, max_tokens=20, seed=7,
                     response_format="schemas/label.json",
                     schema={"type": "object", "properties": {"label": {"type": "string"}}})
    assert Renderer(schema, ["prompt"]).render({"prompt": "hello"}).key.hex() == (
        "321e319c86c00b69fc7589b9f3b97442")
    body = {"model": "m", "temperature": 0, "stop": "x",
            "messages": [{"role": "user", "content": "hi"}]}
    jsonl = replace(schema, input=Path("in.jsonl"), response_format="text", schema=None)
    request = BodyRenderer(jsonl, None).render({"body": orjson.dumps(body).decode()})
    assert request.key.hex() == "5ef7546ac43a110013cd86442659aa06"
    assert b'"temperature":0.0' in request.body  # a body's 0 hashes as the flag's 0.0


def test_batch_fingerprints_are_pinned_so_live_batches_are_found_again() -> None:
    assert request_fingerprint(FULL) == "47e0dee39b04d68a"
    assert request_fingerprint(PLAIN) == "e83f193a51be92bd"
    # The settings that shape a request, derived from their declarations: these, in this order.
    assert REQUEST_SHAPING == (
        "base_url", "model", "prompt_column", "messages_column", "template", "system",
        "image_column", "temperature", "max_tokens", "top_p", "frequency_penalty",
        "presence_penalty", "stop", "seed", "response_format", "tools", "tool_choice")


def test_settings_that_shape_nothing_leave_the_fingerprint_alone() -> None:
    others = [s.name for s in SETTINGS if not s.shapes and s.name in RunConfig.__dataclass_fields__]
    assert {"rpm", "concurrency", "progress", "fresh", "input", "output"} <= set(others)
    for name in others:
        value = getattr(PLAIN, name)
        changed = (not value if isinstance(value, bool) else 3 if isinstance(value, int | float)
                   else Path("x") if isinstance(value, Path) else "x")
        assert request_fingerprint(replace(PLAIN, **{name: changed})) == (
            request_fingerprint(PLAIN)), name
    assert request_fingerprint(replace(PLAIN, system="Be brief.")) != request_fingerprint(PLAIN)


def test_every_body_parameter_set_in_the_job_is_sent() -> None:
    body = orjson.loads(Renderer(FULL, ["product", "review"])
                        .render({"product": "lamp", "review": "bright"}).body)
    assert set(BODY_PARAMETERS) <= set(body)


def test_the_output_metadata_names_the_job_by_the_same_fingerprint(tmp_path: Path, sim) -> None:
    server = sim()
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", prompts_csv(tmp_path / "in.csv", 2), "--output", out,
                     "--base-url", server.base_url, "--model", "sim-1", "--no-progress")
    assert result.returncode == 0, result.stderr
    meta = orjson.loads(pq.read_schema(out).metadata[b"batchrun"])
    expected = replace(PLAIN, base_url=server.base_url)
    assert meta["config_fingerprint"] == request_fingerprint(expected)
