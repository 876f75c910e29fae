"""A key goes only where it was meant to: OpenAI's key never reaches another provider's preset.

The simulator counts the Authorization headers it received, so each test sees exactly which key
(if any) arrived at the server.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from .helpers import TEST_KEY, clean_env, parse_plan, prompts_csv, refused, run_cli

OTHER_KEY = "sk-other-provider-key-77d1"  # a second key: the one a preset must not get


def _run(tmp_path: Path, base_url: str, *extra: str, env: dict[str, str]) -> tuple[int, str]:
    tmp_path.mkdir(exist_ok=True)
    src = prompts_csv(tmp_path / "in.csv", 3)
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet", "--base-url",
                     base_url, "--no-progress", *extra, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr


@pytest.mark.parametrize("preset, model", [
    ("megallm", "sim-1"), ("llmost", "openai/sim-1"), ("openrouter", "openai/sim-1"),
    ("vllm", "sim-1"), ("simulator", "sim-1"),
])
def test_an_openai_key_alone_never_reaches_another_providers_server(
        tmp_path: Path, sim, preset: str, model: str) -> None:
    # The preset's server is on loopback here (a tunnel, a local gateway), where a key is
    # optional: the run goes on without one rather than with OpenAI's.
    server = sim()
    code, err = _run(tmp_path, server.base_url, "--provider", preset, "--model", model,
                     env=clean_env(OPENAI_API_KEY=TEST_KEY))
    assert code == 0, err
    assert server.stats.ok == 3
    assert server.stats.authorizations == {"": 3}  # no Authorization header at all


def test_a_preset_gets_its_own_key_and_never_openais(tmp_path: Path, sim) -> None:
    server = sim(api_key=TEST_KEY)  # refuses (401) any request without exactly this key
    code, err = _run(tmp_path, server.base_url, "--provider", "megallm", "--model", "sim-1",
                     env=clean_env(MEGALLM_API_KEY=TEST_KEY, OPENAI_API_KEY=OTHER_KEY))
    assert code == 0, err
    assert server.stats.authorizations == {f"Bearer {TEST_KEY}": 3}


def test_batchrun_api_key_and_api_key_env_are_still_sent_to_a_preset(tmp_path: Path, sim) -> None:
    server = sim(api_key=TEST_KEY)
    code, err = _run(tmp_path, server.base_url, "--provider", "llmost", "--model", "openai/sim-1",
                     env=clean_env(BATCHRUN_API_KEY=TEST_KEY, OPENAI_API_KEY=OTHER_KEY))
    assert code == 0, err
    # --api-key-env is the user's own choice, even of OpenAI's variable.
    code, err = _run(tmp_path / "again", server.base_url, "--provider", "llmost", "--model",
                     "openai/sim-1", "--api-key-env", "OPENAI_API_KEY",
                     env=clean_env(OPENAI_API_KEY=TEST_KEY, LLMOST_API_KEY=OTHER_KEY))
    assert code == 0, err
    assert server.stats.authorizations == {f"Bearer {TEST_KEY}": 6}


def test_a_plain_base_url_may_use_the_openai_key_as_the_openai_sdk_does(
        tmp_path: Path, sim) -> None:
    server = sim(api_key=TEST_KEY)
    code, err = _run(tmp_path, server.base_url, "--model", "sim-1",
                     env=clean_env(OPENAI_API_KEY=TEST_KEY))
    assert code == 0, err
    assert server.stats.authorizations == {f"Bearer {TEST_KEY}": 3}


@pytest.mark.parametrize("flags, variable", [
    (("--provider", "megallm", "--model", "gpt-4o-mini"), "MEGALLM_API_KEY"),
    (("--provider", "llmost", "--model", "openai/gpt-4o-mini"), "LLMOST_API_KEY"),
    (("--provider", "openrouter", "--model", "openai/gpt-4o-mini"), "OPENROUTER_API_KEY"),
    # A base URL on a preset's host is that provider, named or not.
    (("--base-url", "https://ai.megallm.io/v1", "--model", "gpt-4o-mini"), "MEGALLM_API_KEY"),
])
def test_a_remote_preset_with_only_the_openai_key_exits_2_having_sent_nothing(
        tmp_path: Path, flags: tuple[str, ...], variable: str) -> None:
    src = prompts_csv(tmp_path / "in.csv", 2)
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, *flags, "--no-progress",
                     env=clean_env(OPENAI_API_KEY=TEST_KEY))
    line = refused(result, "no API key", variable, "OPENAI_API_KEY is set")
    assert line.index(variable) < line.index("BATCHRUN_API_KEY")  # its own variable first
    assert TEST_KEY not in result.stdout + result.stderr
    # plan sends nothing, so it goes on without a key, and says which one a run will need.
    planned = run_cli("plan", "--input", src, "--output", out, *flags,
                      env=clean_env(OPENAI_API_KEY=TEST_KEY))
    assert planned.returncode == 0, planned.stderr
    key_line = next(ln for ln in planned.stdout.splitlines() if ln.startswith("  key "))
    assert key_line.startswith("  key       none found; before a run, set " + variable)
    assert "OPENAI_API_KEY is set" in key_line
    assert "Authorization:" not in planned.stdout  # the sample request carries no key at all
    assert TEST_KEY not in planned.stdout + planned.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # no journal, no lock


def test_plan_and_the_start_event_name_where_the_key_came_from(tmp_path: Path, sim) -> None:
    server = sim(api_key=TEST_KEY)
    src = prompts_csv(tmp_path / "in.csv", 2)
    out = tmp_path / "out.parquet"
    env = clean_env(MEGALLM_API_KEY=TEST_KEY, OPENAI_API_KEY=OTHER_KEY)
    common = ("--input", src, "--output", out, "--base-url", server.base_url, "--provider",
              "megallm", "--model", "sim-1")
    plan = run_cli("plan", *common, env=env)
    assert plan.returncode == 0, plan.stderr
    facts = parse_plan(plan.stdout)
    assert facts["key"] == "MEGALLM_API_KEY" and facts["headers"]["Authorization"] == "Bearer ***"
    as_json = run_cli("plan", *common, "--format", "json", env=env)
    assert orjson.loads(as_json.stdout)["key_from"] == "MEGALLM_API_KEY"

    key_file = tmp_path / "key.txt"
    key_file.write_text(TEST_KEY + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    result = run_cli("run", *common, "--api-key-file", key_file, "--log-format", "json",
                     "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    events = [orjson.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    start = next(e for e in events if e.get("event") == "start")
    assert start["key_from"] == f"--api-key-file {key_file}"
    for text in (plan.stdout, as_json.stdout, result.stdout, result.stderr):
        assert TEST_KEY not in text and OTHER_KEY not in text


def test_a_local_run_without_a_key_says_so_in_the_plan(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 1)
    plan = run_cli("plan", "--input", src, "--base-url", server.base_url, "--provider", "vllm",
                   "--model", "sim-1", env=clean_env(OPENAI_API_KEY=TEST_KEY))
    assert plan.returncode == 0, plan.stderr
    facts = parse_plan(plan.stdout)
    assert facts["key"].startswith("none") and "Authorization" not in facts["headers"]
