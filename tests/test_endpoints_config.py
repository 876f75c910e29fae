"""Several endpoints in the settings: `[[endpoints]]` and `--fallback-model` parsed and checked,
the run's limits as each endpoint's defaults, each endpoint's key for it alone, and the plan.

Every refusal goes through the real command line against two simulators, which must see no
request at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchrun.errors import MissingKey, UsageError
from batchrun.settings.config import build_config
from batchrun.settings.endpoints import Endpoint
from batchrun.settings.keys import resolve_keys

from .helpers import TEST_KEY, clean_env, parse_plan, prompts_csv, refused, run_cli

OTHER_KEY = "sk-second-endpoint-key-93b7"


def endpoints_job(tmp_path: Path, tables: str, extra: str = "") -> Path:
    """A job file reading 3 prompts, with `extra` sections and then `tables`."""
    src = prompts_csv(tmp_path / "in.csv", 3)
    job = tmp_path / "job.toml"
    job.write_text(f'[input]\npath = "{src.name}"\n[output]\npath = "out.parquet"\n{extra}\n'
                   f"{tables}\n", encoding="utf-8")
    return job


def two(a: str, b: str, *, more: str = "") -> str:
    """Endpoint A (3,000 rpm, sim-1, KEY_A) and B (1,500 rpm, sim-large, KEY_B), then `more`."""
    return (f'[[endpoints]]\nname = "A"\nbase_url = "{a}"\nmodel = "sim-1"\n'
            f'api_key_env = "KEY_A"\nrpm = 3000\n'
            f'[[endpoints]]\nname = "B"\nbase_url = "{b}"\nmodel = "sim-large"\n'
            f'api_key_env = "KEY_B"\nrpm = 1500\n{more}')


@pytest.fixture
def sims(sim):
    """Two simulators, each behind its own key."""
    return sim(api_key=TEST_KEY), sim(api_key=OTHER_KEY)


def keys_env(**extra: str) -> dict[str, str]:
    return clean_env(KEY_A=TEST_KEY, KEY_B=OTHER_KEY, **extra)


def assert_refused(result, sims, *needles: str) -> str:
    line = refused(result, *needles)
    assert TEST_KEY not in line and OTHER_KEY not in line
    assert [s.stats.requests for s in sims] == [0, 0]
    return line


# --- the run's one-endpoint settings are refused with [[endpoints]] --------------------------


@pytest.mark.parametrize("flags, needle", [
    (("--model", "sim-1"), "--model cannot be used with [[endpoints]]"),
    (("--base-url", "http://127.0.0.1:9/v1"), "--base-url cannot be used with [[endpoints]]"),
    (("--provider", "openai"), "--provider cannot be used with [[endpoints]]"),
    (("--api-key-env", "KEY_A"), "--api-key-env cannot be used with [[endpoints]]"),
    (("--fallback-model", "sim-large"), "--fallback-model cannot be used with [[endpoints]]"),
    (("--backend", "batch"), "--backend batch with several endpoints is not supported yet"),
])
def test_per_endpoint_flags_are_refused_with_endpoints(tmp_path: Path, sims, flags, needle) -> None:
    job = endpoints_job(tmp_path, two(*(s.base_url for s in sims)))
    result = run_cli("run", job, "--no-progress", *flags, env=keys_env())
    line = assert_refused(result, sims, needle)
    if "cannot be used" in needle:
        assert "the endpoints describe it" in line or "fallback = true" in line


def test_a_key_file_is_refused_with_endpoints(tmp_path: Path, sims) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(TEST_KEY)
    key_file.chmod(0o600)
    job = endpoints_job(tmp_path, two(*(s.base_url for s in sims)))
    result = run_cli("run", job, "--no-progress", "--api-key-file", key_file, env=keys_env())
    assert_refused(result, sims, "--api-key-file cannot be used with [[endpoints]]",
                   "api_key_env in each [[endpoints]] table")


@pytest.mark.parametrize("extra, needle", [
    ('[provider]\nname = "openai"', "[provider] name cannot be used with [[endpoints]]"),
    ('[provider]\nbase_url = "https://x.example/v1"', "[provider] base_url cannot be used"),
    ('[provider]\napi_key_env = "KEY_A"', "[provider] api_key_env cannot be used"),
    ('[provider]\napi_key_file = "key"', "[provider] api_key_file cannot be used"),
    ('[request]\nmodel = "sim-1"', "[request] model cannot be used with [[endpoints]]"),
    ('[request]\nfallback_models = ["sim-large"]', "[request] fallback_models cannot be used"),
    ('[run]\nbackend = "batch"', "not supported yet"),
])
def test_per_endpoint_job_file_keys_are_refused_with_endpoints(
        tmp_path: Path, sims, extra: str, needle: str) -> None:
    job = endpoints_job(tmp_path, two(*(s.base_url for s in sims)), extra)
    assert_refused(run_cli("run", job, "--no-progress", env=keys_env()), sims, needle)


# --- each [[endpoints]] table checked --------------------------------------------------------


def _table(url: str, **keys: object) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    return f"[[endpoints]]\n{lines}".replace("{url}", url)


@pytest.mark.parametrize("tables, needle", [
    ([{"name": "A", "base_url": "{url}", "modle": "sim-1"}], "endpoint 'A': unknown key 'modle'"),
    ([{"name": "A", "base_url": "{url}", "model": "sim-1", "rpm": "fast"}],
     "endpoint 'A': rpm must be an integer or a number, not str"),
    ([{"name": "A", "base_url": "{url}", "model": "sim-1", "fallback": "yes"}],
     "endpoint 'A': fallback must be true or false"),
    ([{"name": "A", "base_url": "{url}", "model": "sim-1", "concurrency": 0}],
     "endpoint 'A': concurrency must be in [1, 10000]"),
    ([{"name": "A", "base_url": "{url}", "model": "sim-1", "tpm": -5}],
     "endpoint 'A': tpm must be greater than 0"),
    ([{"name": "A", "provider": "nope", "model": "sim-1"}], "endpoint 'A': provider must be one of"),
    ([{"name": 7, "base_url": "{url}", "model": "sim-1"}], "[[endpoints]] #1: name must be a string"),
    ([{"name": " ", "base_url": "{url}", "model": "sim-1"}], "name must not be empty"),
    ([{"base_url": "{url}", "model": "sim-1"}], "[[endpoints]] #1 has no name"),
    ([{"name": "A", "base_url": "{url}"}], "endpoint 'A' has no model: add model = "),
    ([{"name": "A", "model": "sim-1"}], "endpoint 'A' says nowhere to send: add base_url"),
    ([{"name": "A", "base_url": "ftp://host/v1", "model": "sim-1"}],
     "endpoint 'A': base_url 'ftp://host/v1' must be an http(s) URL"),
    ([{"name": "A", "provider": "llmost", "model": "gpt-4o"}],
     "endpoint 'A': llmost model ids carry an organization prefix: use e.g. 'openai/gpt-4o'"),
    ([{"name": "A", "base_url": "{url}", "model": "sim-1"},
      {"name": "A", "base_url": "{url}", "model": "sim-large"}], "endpoint 'A' is listed twice"),
    ([{"name": "A", "base_url": "{url}", "model": "sim-1", "fallback": True}],
     "every endpoint has fallback = true"),
])
def test_a_bad_endpoint_table_is_refused_naming_the_endpoint(
        tmp_path: Path, sims, tables: list[dict], needle: str) -> None:
    text = "".join(_table(sims[0].base_url, **t) for t in tables)
    job = endpoints_job(tmp_path, text)
    assert_refused(run_cli("run", job, "--no-progress", env=keys_env()), sims, needle)


@pytest.mark.parametrize("text, needle", [
    ('[endpoints]\nname = "A"\n', "write each endpoint as a [[endpoints]] table"),
    ("endpoints = []\n", "endpoints is empty"),
    ('endpoints = ["A"]\n', "endpoints must be [[endpoints]] tables"),
])
def test_endpoints_that_are_not_tables_are_refused(tmp_path: Path, sims, text, needle) -> None:
    job = tmp_path / "job.toml"
    prompts_csv(tmp_path / "in.csv", 3)
    job.write_text(f'{text}[input]\npath = "in.csv"\n', encoding="utf-8")
    assert_refused(run_cli("run", job, "--no-progress", env=keys_env()), sims, needle)


# --- defaults, presets, and the run's settings --------------------------------------------


def test_the_runs_limits_are_each_endpoints_defaults_and_its_own_keys_win(tmp_path: Path) -> None:
    tables = (_table("", name="A", base_url="http://127.0.0.1:9/v1", model="sim-1", rpm=3000)
              + _table("", name="B", base_url="http://127.0.0.1:8/v1", model="sim-large",
                       concurrency=2, fallback=True))
    job = endpoints_job(tmp_path, tables, "[limits]\nrpm = 100\ntpm = 5000\nconcurrency = 8")
    a, b = build_config(job, {"concurrency": 4}).endpoints
    assert (a.rpm, a.tpm, a.concurrency, a.fallback) == (3000, 5000, 4, False)
    assert (b.rpm, b.tpm, b.concurrency, b.fallback) == (100, 5000, 2, True)


def test_the_run_sends_as_its_first_pool_endpoint_until_the_pool_says_otherwise(
        tmp_path: Path) -> None:
    tables = (_table("", name="big", base_url="http://127.0.0.1:8/v1", model="sim-large",
                     fallback=True)
              + _table("", name="A", base_url="http://127.0.0.1:9/v1/", model="sim-1",
                       api_key_env="KEY_A"))
    config = build_config(endpoints_job(tmp_path, tables), {})
    assert [e.name for e in config.endpoints] == ["big", "A"]  # the order of the file
    assert (config.base_url, config.model, config.api_key_env) == (
        "http://127.0.0.1:9/v1", "sim-1", "KEY_A")
    at = config.at(config.endpoints[0])
    assert (at.base_url, at.model, at.endpoints, at.fallback_models) == (
        "http://127.0.0.1:8/v1", "sim-large", (), ())


def test_a_preset_fills_an_endpoint_as_it_fills_the_runs(tmp_path: Path) -> None:
    tables = (_table("", name="L", provider="llmost", model="openai/gpt-4o-mini")
              + _table("", name="S", provider="simulator")
              + _table("", name="M", provider="megallm", base_url="https://proxy.example/v1",
                       model="gpt-4o"))
    lm, sim_endpoint, mega = build_config(endpoints_job(tmp_path, tables), {}).endpoints
    assert lm == Endpoint(name="L", base_url="https://llmost.ru/api/v1", provider="llmost",
                          model="openai/gpt-4o-mini", concurrency=16)
    assert (sim_endpoint.provider, sim_endpoint.model, sim_endpoint.base_url) == (
        "simulator", "sim-1", "")
    assert (mega.provider, mega.base_url) == ("megallm", "https://proxy.example/v1")


def test_max_cost_needs_a_price_for_every_endpoints_model(tmp_path: Path, sims) -> None:
    tables = two(*(s.base_url for s in sims), more=_table(
        "", name="own", base_url=sims[0].base_url, model="my-own-model", fallback=True))
    job = endpoints_job(tmp_path, tables)
    result = run_cli("run", job, "--no-progress", "--max-cost", "1", env=keys_env())
    assert_refused(result, sims, "endpoint 'own'", "my-own-model", "[pricing]")


# --- --fallback-model -----------------------------------------------------------------------


def test_fallback_models_are_endpoints_on_the_runs_url_key_and_limits(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 3)
    config = build_config(None, {
        "input": str(src), "base_url": "http://127.0.0.1:9/v1", "model": "small",
        "api_key_env": "KEY_A", "rpm": 60, "fallback_models": ("big", "bigger")})
    shared = {"base_url": "http://127.0.0.1:9/v1", "provider": None, "api_key_env": "KEY_A",
              "rpm": 60, "tpm": None, "concurrency": 16}
    assert config.endpoints == (
        Endpoint(name="small", model="small", **shared),
        Endpoint(name="big", model="big", fallback=True, **shared),
        Endpoint(name="bigger", model="bigger", fallback=True, **shared))
    assert (config.model, config.fallback_models) == ("small", ("big", "bigger"))


def test_fallback_models_from_the_job_file(tmp_path: Path) -> None:
    job = endpoints_job(tmp_path, "", '[provider]\nname = "llmost"\n[request]\n'
                        'model = "openai/small"\nfallback_models = ["openai/big"]')
    config = build_config(job, {})
    assert [(e.name, e.base_url, e.fallback) for e in config.endpoints] == [
        ("openai/small", "https://llmost.ru/api/v1", False),
        ("openai/big", "https://llmost.ru/api/v1", True)]
    # A flag wins over the file, as for any setting.
    assert [e.name for e in build_config(job, {"fallback_models": ("openai/x",)}).endpoints] == [
        "openai/small", "openai/x"]


def test_without_endpoints_a_run_has_none(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 3)
    config = build_config(None, {"input": str(src), "model": "m", "fallback_models": ()})
    assert config.endpoints == () and config.fallback_models == ()


@pytest.mark.parametrize("flags, needle", [
    (("--model", "sim-1", "--fallback-model", "sim-1"), "--fallback-model sim-1 is given twice"),
    (("--model", "sim-1", "--fallback-model", "big", "--fallback-model", "big"), "given twice"),
    (("--model", "sim-1", "--fallback-model", "big", "--backend", "batch"), "not supported yet"),
    (("--provider", "llmost", "--model", "openai/a", "--fallback-model", "gpt-4o"),
     "--fallback-model gpt-4o: llmost model ids carry an organization prefix"),
    (("--provider", "llmost", "--fallback-model", "openai/b"),
     "--fallback-model needs --model"),
    (("--model", "sim-1", "--fallback-model", ""), "--fallback-model must be non-empty"),
])
def test_bad_fallback_models_are_refused(tmp_path: Path, sims, flags, needle) -> None:
    src = prompts_csv(tmp_path / "in.csv", 3)
    args = ("--base-url", sims[0].base_url) if "--provider" not in flags else ()
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet", *args, *flags,
                     "--no-progress", env=keys_env(BATCHRUN_API_KEY=TEST_KEY))
    assert_refused(result, sims, needle)


# --- keys: each endpoint's for it alone -----------------------------------------------------


def _config(tmp_path: Path, tables: str, extra: str = ""):
    return build_config(endpoints_job(tmp_path, tables, extra), {})


def test_each_endpoint_gets_its_own_key_and_no_other(tmp_path: Path) -> None:
    config = _config(tmp_path, two("https://a.example/v1", "https://b.example/v1"))
    keys = resolve_keys(config, {"KEY_A": TEST_KEY, "KEY_B": OTHER_KEY,
                                 "BATCHRUN_API_KEY": "sk-shared", "OPENAI_API_KEY": "sk-openai"})
    assert {name: (k.reveal(), k.source) for name, k in keys.items() if k} == {
        "A": (TEST_KEY, "KEY_A"), "B": (OTHER_KEY, "KEY_B")}


def test_on_several_hosts_a_key_that_names_no_provider_is_not_shared(tmp_path: Path) -> None:
    tables = (_table("", name="oa", provider="openai", model="gpt-4o-mini")
              + _table("", name="lm", provider="llmost", model="openai/gpt-4o-mini"))
    config = _config(tmp_path, tables)
    environ = {"BATCHRUN_API_KEY": "sk-shared", "OPENAI_API_KEY": "sk-openai",
               "LLMOST_API_KEY": "sk-llmost"}
    keys = resolve_keys(config, environ)
    assert {name: k.reveal() for name, k in keys.items() if k} == {
        "oa": "sk-openai", "lm": "sk-llmost"}
    # An endpoint on a host no preset names must say which variable holds its key.
    tables += _table("", name="own", base_url="https://gw.example/v1", model="m")
    with pytest.raises(MissingKey) as missing:
        resolve_keys(_config(tmp_path, tables), environ)
    assert missing.value.message.startswith("endpoint 'own': no API key: name the variable")
    assert "api_key_env" in missing.value.message and "sk-" not in missing.value.message


def test_endpoints_on_one_host_keep_the_runs_key_rules(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 3)
    config = build_config(None, {"input": str(src), "provider": "megallm", "model": "a",
                                 "fallback_models": ("b",)})
    keys = resolve_keys(config, {"BATCHRUN_API_KEY": "sk-shared", "OPENAI_API_KEY": "sk-openai"})
    assert {name: k.reveal() for name, k in keys.items() if k} == {
        "a": "sk-shared", "b": "sk-shared"}
    with pytest.raises(MissingKey) as missing:  # OpenAI's key is never sent to MegaLLM
        resolve_keys(config, {"OPENAI_API_KEY": "sk-openai"})
    assert missing.value.message.startswith(
        "endpoint 'a': no API key: set MEGALLM_API_KEY or BATCHRUN_API_KEY in the environment")


def test_a_missing_key_names_the_endpoint_and_its_variable(tmp_path: Path) -> None:
    config = _config(tmp_path, two("https://a.example/v1", "https://b.example/v1"))
    with pytest.raises(MissingKey) as missing:
        resolve_keys(config, {"KEY_A": TEST_KEY})
    assert missing.value.message == (
        "endpoint 'B': no API key: set KEY_B in the environment (or name another with "
        "api_key_env in its [[endpoints]] table)")


def test_a_key_is_not_sent_in_clear_text_to_an_endpoints_remote_host(tmp_path: Path) -> None:
    config = _config(tmp_path, two("https://a.example/v1", "http://b.example/v1"))
    with pytest.raises(UsageError) as refusal:
        resolve_keys(config, {"KEY_A": TEST_KEY, "KEY_B": OTHER_KEY})
    assert refusal.value.message.startswith(
        "endpoint 'B': refusing to send the API key over plain http to b.example")
    insecure = _config(tmp_path, two("https://a.example/v1", "http://b.example/v1"),
                       "[provider]\nallow_insecure_http = true")
    assert set(resolve_keys(insecure, {"KEY_A": TEST_KEY, "KEY_B": OTHER_KEY})) == {"A", "B"}


def test_local_endpoints_need_no_key(tmp_path: Path, sims) -> None:
    tables = (_table("", name="A", base_url=sims[0].base_url, model="sim-1")
              + _table("", name="B", base_url=sims[1].base_url, model="sim-1"))
    assert resolve_keys(_config(tmp_path, tables), {"BATCHRUN_API_KEY": TEST_KEY}) == {
        "A": None, "B": None}  # two hosts: BATCHRUN_API_KEY is not shared, and none is needed


# --- the plan -------------------------------------------------------------------------------


def _plan(tmp_path: Path, sims, *extra: str, env: dict[str, str] | None = None):
    big = _table("", name="big", base_url=sims[0].base_url, model="sim-large", rpm=600,
                 fallback=True)
    job = endpoints_job(tmp_path, two(*(s.base_url for s in sims), more=big),
                        "[request]\nmax_tokens = 10")
    return run_cli("plan", job, *extra, env=env if env is not None else keys_env())


def test_plan_shows_each_endpoint_the_pools_pace_and_the_cost_split(tmp_path: Path, sims) -> None:
    result = _plan(tmp_path, sims)
    assert result.returncode == 0, result.stderr
    plan = parse_plan(result.stdout)
    assert plan["endpoints"] == "2 in the pool (A, B), 1 fallback (big)"
    a = plan["A"]
    assert a.startswith(f"sim-1 at {sims[0].base_url}; 3,000 rpm, no tpm, 16 in flight; "
                        "key KEY_A; ~67% of the rows, at most $")
    assert plan["B"].startswith(f"sim-large at {sims[1].base_url}; 1,500 rpm, no tpm, 16 in "
                                "flight; key KEY_B; ~33% of the rows, at most $")
    assert plan["big"].endswith("fallback: only rows that fail elsewhere")
    assert plan["time"].endswith("(rpm binds; 0.0s at the pool's 4,500 rpm)")
    assert plan["cost"].startswith("at most $") and "across the pool" in plan["cost"]
    assert plan["url"] == sims[0].base_url + "/chat/completions"
    assert plan["headers"]["Authorization"] == "Bearer ***"
    assert "model" not in plan and "key" not in plan  # each endpoint's line says them
    assert TEST_KEY not in result.stdout + result.stderr
    assert OTHER_KEY not in result.stdout + result.stderr
    assert [s.stats.requests for s in sims] == [0, 0]


def test_plan_json_lists_the_endpoints_and_their_split(tmp_path: Path, sims) -> None:
    result = _plan(tmp_path, sims, "--format", "json", "--rpm", "10")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    a, b, big = plan["endpoints"]
    assert [(e["name"], e["model"], e["rpm"], e["fallback"], e["key_from"]) for e in (a, b, big)] \
        == [("A", "sim-1", 3000, False, "KEY_A"), ("B", "sim-large", 1500, False, "KEY_B"),
            ("big", "sim-large", 600, True, None)]  # no api_key_env: KEY_A is A's alone
    assert (a["share"], b["share"], big["share"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3),
                                                      None)
    assert big["cost_usd_max"] is None and plan["price"] is None  # each has its own
    assert plan["cost_usd_max"] == pytest.approx(a["cost_usd_max"] + b["cost_usd_max"])
    # sim-large costs 5x sim-1 per token: B's half-size share costs more than A's.
    assert b["cost_usd_max"] > a["cost_usd_max"] > 0
    assert plan["time"]["rpm"] == 4500 and plan["time"]["binds"] == "rpm"
    assert plan["time"]["min_seconds"] == pytest.approx(3 / 4500 * 60)
    assert TEST_KEY not in result.stdout and OTHER_KEY not in result.stdout


def test_plan_names_the_key_each_endpoint_still_needs(tmp_path: Path, sims) -> None:
    result = _plan(tmp_path, sims, "--format", "json", env=clean_env(KEY_A=TEST_KEY))
    assert result.returncode == 0, result.stderr
    a, b, _ = json.loads(result.stdout)["endpoints"]
    assert (a["key_from"], a["key_needed"]) == ("KEY_A", None)
    assert b["key_from"] is None  # loopback: a run goes on without a key, as for one endpoint
    text = _plan(tmp_path, sims, env=clean_env()).stdout
    assert "no key (a local server needs none)" in parse_plan(text)["A"]


def test_plan_of_a_remote_endpoint_without_its_key_says_which_variable(tmp_path: Path) -> None:
    job = endpoints_job(tmp_path, two("https://a.example/v1", "https://b.example/v1"))
    result = run_cli("plan", job, env=clean_env(KEY_A=TEST_KEY))
    assert result.returncode == 0, result.stderr
    assert "key none found (set KEY_B);" in parse_plan(result.stdout)["B"]


def test_a_single_endpoint_plan_lists_no_endpoints(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    result = run_cli("plan", "--input", src, "--base-url", server.base_url, "--model", "sim-1",
                     "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["endpoints"] == []
    text = run_cli("plan", "--input", src, "--base-url", server.base_url, "--model", "sim-1")
    assert "endpoints" not in parse_plan(text.stdout) and "model" in parse_plan(text.stdout)


def test_plan_of_fallback_models_shows_them_as_fallbacks(tmp_path: Path, sim) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 3)
    result = run_cli("plan", "--input", src, "--base-url", server.base_url, "--model", "sim-1",
                     "--fallback-model", "sim-large", "--rpm", "60", "--format", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [(e["name"], e["fallback"], e["rpm"], e["base_url"]) for e in plan["endpoints"]] == [
        ("sim-1", False, 60, server.base_url), ("sim-large", True, 60, server.base_url)]
    assert plan["time"]["rpm"] == 60  # a fallback adds nothing to the pool's pace
    assert server.stats.requests == 0


# --- a run: each endpoint's key reaches its own server, and no other ----------------------


def test_a_pooled_run_sends_each_endpoint_only_its_own_key(tmp_path: Path, sims) -> None:
    job = endpoints_job(tmp_path, two(*(s.base_url for s in sims)))
    prompts_csv(tmp_path / "in.csv", 40)
    result = run_cli("run", job, "--no-progress", "--concurrency", "2",
                     env=keys_env(BATCHRUN_API_KEY="sk-third-key"))
    assert result.returncode == 0, result.stderr
    a, b = (s.stats.authorizations for s in sims)
    assert set(a) == {f"Bearer {TEST_KEY}"} and set(b) == {f"Bearer {OTHER_KEY}"}
    assert sum(a.values()) + sum(b.values()) == 40
    for secret in (TEST_KEY, OTHER_KEY, "sk-third-key"):
        assert secret not in result.stdout + result.stderr


def test_a_key_that_names_no_provider_reaches_no_endpoint_on_another_host(
        tmp_path: Path, sim) -> None:
    first, second = sim(), sim()  # loopback: a key is optional, so none is better than a stray one
    tables = (_table("", name="A", base_url=first.base_url, model="sim-1")
              + _table("", name="B", base_url=second.base_url, model="sim-1"))
    result = run_cli("run", endpoints_job(tmp_path, tables), "--no-progress",
                     env=clean_env(BATCHRUN_API_KEY=TEST_KEY))
    assert result.returncode == 0, result.stderr
    assert first.stats.requests + second.stats.requests == 3
    assert set(first.stats.authorizations) | set(second.stats.authorizations) == {""}


def test_the_python_api_takes_endpoints_as_tables(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 3)
    config = build_config(None, {"input": str(src), "rpm": 50, "endpoints": [
        {"name": "A", "base_url": "http://127.0.0.1:9/v1", "model": "sim-1"}]})
    assert config.endpoints == (Endpoint(name="A", base_url="http://127.0.0.1:9/v1",
                                         model="sim-1", rpm=50),)
    with pytest.raises(UsageError, match="--model cannot be used with"):
        build_config(None, {"input": str(src), "model": "m", "endpoints": [
            {"name": "A", "base_url": "http://127.0.0.1:9/v1", "model": "sim-1"}]})


def test_run_dataframe_takes_endpoints_and_fallback_models_by_name(tmp_path: Path, sim) -> None:
    import pandas as pd

    from batchrun import run_dataframe

    first, second = sim(), sim()
    df = pd.DataFrame({"prompt": [f"question {i}" for i in range(6)]})
    frame = run_dataframe(df, progress=False, concurrency=1, endpoints=[
        {"name": "A", "base_url": first.base_url, "model": "sim-1"},
        {"name": "B", "base_url": second.base_url, "model": "sim-1"}])
    assert list(frame["status"]) == ["ok"] * 6
    assert first.stats.requests + second.stats.requests == 6
    with pytest.raises(UsageError) as refusal:
        run_dataframe(df, model="sim-1", fallback_models=["sim-1"], base_url=first.base_url)
    assert refusal.value.message.startswith("fallback_models sim-1 is given twice")
