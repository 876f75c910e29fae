"""Shipped job files and provider presets, checked through `batchrun plan` (which sends nothing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from batchrun.settings.providers import PRESETS

from .helpers import (
    TEST_KEY,
    clean_env,
    cli_in_process,
    parse_plan,
    prompts_csv,
    read_output,
    run_cli,
)

REPO = Path(__file__).resolve().parent.parent
JOBS = sorted((REPO / "jobs").glob("*.toml"))
DUMMY_KEYS = {name: TEST_KEY for name in ("OPENAI_API_KEY", "MEGALLM_API_KEY", "LLMOST_API_KEY",
                                          "OPENROUTER_API_KEY")}


def test_the_shipped_jobs_are_there() -> None:
    names = {p.name for p in JOBS}
    assert {"summarize.toml", "classify.toml", "megallm.toml", "llmost.toml",
            "local.toml"} <= names


@pytest.mark.parametrize("job", JOBS, ids=[p.name for p in JOBS])
def test_every_shipped_job_passes_plan(job: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"  # plan writes nothing; a fresh output keeps earlier runs out
    result = run_cli("plan", job, "--output", out, env=clean_env(**DUMMY_KEYS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = parse_plan(result.stdout)
    assert plan["input"].endswith("rows") and int(plan["to"].split()[1].replace(",", "")) > 0
    assert plan["url"].endswith("/chat/completions")
    assert TEST_KEY not in result.stdout + result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.fixture
def preset_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, dict]]:
    """`batchrun plan` on a 3-row input, in this process; returns (exit code, stderr, plan)."""
    src = prompts_csv(tmp_path / "in.csv", 3)

    def plan(*args: str, **env: str) -> tuple[int, str, dict]:
        with monkeypatch.context() as patch:
            code, out, err = cli_in_process(patch, capsys, "plan", "--input", src, *args, env=env)
        assert TEST_KEY not in out + err
        return code, err, parse_plan(out) if code == 0 else {}

    return plan


@pytest.mark.parametrize("name, url, key_env", [
    ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    ("megallm", "https://ai.megallm.io/v1", "MEGALLM_API_KEY"),
    ("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
])
def test_remote_presets_have_their_url_and_key_variable(preset_plan, name: str, url: str,
                                                        key_env: str) -> None:
    model = "openai/gpt-4o" if PRESETS[name].model_needs_org_prefix else "gpt-4o"
    code, err, plan = preset_plan("--provider", name, "--model", model,
                                  **{key_env: TEST_KEY})
    assert code == 0, err
    assert plan["url"] == url + "/chat/completions"
    assert plan["headers"]["Authorization"] == "Bearer ***"
    assert plan["body"]["model"] == model
    code, err, keyless = preset_plan("--provider", name, "--model", model)
    assert code == 0, err  # no key: the plan still runs (it sends nothing) ...
    assert keyless["key"].startswith(f"none found; before a run, set {key_env}")  # ... and names it
    assert "Authorization" not in keyless["headers"]


def test_llmost_model_ids_need_an_org_prefix(preset_plan) -> None:
    code, err, _ = preset_plan("--provider", "llmost", "--model", "gpt-4o",
                               LLMOST_API_KEY=TEST_KEY)
    assert code == 2 and "organization prefix" in err and "openai/gpt-4o" in err
    code, err, plan = preset_plan("--provider", "llmost", "--model", "openai/gpt-4o",
                                  LLMOST_API_KEY=TEST_KEY)
    assert code == 0, err
    assert plan["url"] == "https://llmost.ru/api/v1/chat/completions"
    assert plan["body"]["model"] == "openai/gpt-4o"
    assert "$2.5 in" in plan["cost"]  # the org prefix does not hide the built-in gpt-4o price


def test_llmost_without_a_model_uses_the_account_default(preset_plan) -> None:
    code, err, plan = preset_plan("--provider", "llmost", LLMOST_API_KEY=TEST_KEY)
    assert code == 0, err
    assert "model" not in plan["body"]
    assert "default model" in plan["model"]
    assert plan["cost"].startswith("unknown")


@pytest.mark.parametrize("name, url", [("vllm", "http://127.0.0.1:8000/v1"),
                                       ("ollama", "http://127.0.0.1:11434/v1")])
def test_local_presets_need_no_key(preset_plan, name: str, url: str) -> None:
    code, err, plan = preset_plan("--provider", name, "--model", "qwen2.5:7b")
    assert code == 0, err
    assert plan["url"] == url + "/chat/completions"
    assert "Authorization" not in plan["headers"]


def test_simulator_preset_runs_without_key_model_or_url(preset_plan, tmp_path: Path) -> None:
    code, err, plan = preset_plan("--provider", "simulator")
    assert code == 0, err
    assert plan["body"]["model"] == "sim-1" and "Authorization" not in plan["headers"]
    out = tmp_path / "sim.parquet"
    result = run_cli("run", "--input", tmp_path / "in.csv", "--output", out,
                     "--provider", "simulator", "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = read_output(out)
    assert [r["status"] for r in rows] == ["ok"] * 3 and rows[0]["model"] == "sim-1"
