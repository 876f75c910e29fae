"""Endpoints: the places one run may send a row to (`[[endpoints]]`, `--fallback-model`).

    config.endpoints                       # () for a run with one endpoint (the flags describe it)
    config.at(endpoint)                    # the RunConfig one endpoint sends with

A run without `[[endpoints]]` and `--fallback-model` has one endpoint, described by the flags and
the job file's [provider] and [request] sections, and `config.endpoints` is empty. With them,
each `Endpoint` holds its own base URL, model, key variable and limits (the run's `--rpm`,
`--tpm` and `--concurrency` are each endpoint's defaults); pool endpoints share the rows, and
fallback endpoints (`fallback = true`) get only rows that failed elsewhere, in their order.

Where an endpoint is (`locate`: a preset fills the base URL, the model and the quirks) is worked
out by the same code for the flags' one endpoint and for each `[[endpoints]]` table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from batchrun.errors import UsageError
from batchrun.settings.checks import in_range, positive
from batchrun.settings.providers import PRESETS
from batchrun.settings.setting import Setting, checked, declaration, declared, setting

SECTION = "endpoints"  # the job file's array of tables: [[endpoints]]
MAX_CONCURRENCY = 10_000  # requests in flight at once, for the run and for each endpoint


def _named(value: Any) -> str | None:
    return "must not be empty" if not value.strip() else None


def model_names(value: Any) -> str | None:
    """One model name, or a list of non-empty ones (`--fallback-model`)."""
    names = [value] if isinstance(value, str) else value
    return None if all(isinstance(n, str) and n.strip() for n in names) else (
        "must be non-empty model names")


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One endpoint of a run, its defaults filled in: where, which model, which key, how fast.

    Each field is also declared as a key of a `[[endpoints]]` table (its type, check and docs
    line, as `RunConfig`'s settings are).
    """

    name: str = field(metadata=declaration(  # shown in the `endpoint` column, sidecar, status, report
        SECTION, str, check=_named,
        help="Its name, unique: shown in the output's `endpoint` column, the usage sidecar, "
             "`batchrun status` and the report.", shown_default="required"))
    base_url: str = field(metadata=declaration(
        SECTION, str, help="Its OpenAI-compatible base URL ending in `/v1`; overrides its "
                           "preset's.", shown_default="its preset's (one of the two is required)"))
    provider: str | None = setting(
        None, SECTION, str, choices=tuple(PRESETS),
        help="Its preset: base URL, default model, key variable and quirks "
             "([providers.md](providers.md)).")
    model: str | None = setting(
        None, SECTION, str, help="The model its requests name.",
        shown_default="its preset's, if it has one (else required)")
    api_key_env: str | None = setting(  # the *name* of the variable holding its key
        None, SECTION, str,
        help="The *name* of the environment variable holding its key; its key goes to it alone.",
        shown_default="its provider's own variable ([keys](endpoints.md#keys))")
    rpm: float | None = setting(
        None, SECTION, float, check=positive, help="Its requests per minute.",
        shown_default="the run's `--rpm`")
    tpm: float | None = setting(
        None, SECTION, float, check=positive, help="Its tokens per minute.",
        shown_default="the run's `--tpm`")
    concurrency: int = setting(
        16, SECTION, int, check=in_range(1, MAX_CONCURRENCY),
        help="Its requests in flight at once (1 to 10,000).",
        shown_default="the run's `--concurrency`")
    fallback: bool = setting(  # gets only rows that failed on the endpoints before it
        False, SECTION, bool,
        help="A fallback endpoint: it gets only rows that failed on the others, in the order of "
             "the list (all rows once every other endpoint is retired).")


ENDPOINT_SETTINGS: tuple[Setting, ...] = tuple(declared(Endpoint))
_BY_KEY = {s.key: s for s in ENDPOINT_SETTINGS}
# The RunConfig settings each endpoint gives for itself: with [[endpoints]], the run's are refused.
PER_ENDPOINT = {"provider": "provider", "base_url": "base_url", "model": "model",
                "api_key_env": "api_key_env", "api_key_file": "api_key_env"}


@dataclass(frozen=True)
class Place:
    """How a message names where one endpoint's settings were given: the flags, or a table."""

    prefix: str  # before each message: "" for the flags, "endpoint 'A': " for a table
    url: str  # what a bad base URL is called there
    no_model: str  # the whole line for a missing model


FLAGS = Place("", "--base-url", "no model: give --model NAME or [request] model in the job file")


def locate(provider: str | None, base_url: str | None, model: str | None, place: Place, *,
           model_optional: bool | None = None) -> tuple[str | None, str, str | None]:
    """Provider, base URL and model: a preset fills what is not given (OpenAI, if nothing is).

    `model_optional`: None as the preset says (LLMost uses the account's default model), True
    when the requests name their model themselves, False when a model is required.
    """
    preset = PRESETS.get(provider) if provider else None
    url = base_url or (preset.base_url if preset else None)
    if url is None:
        provider, preset, url = "openai", PRESETS["openai"], PRESETS["openai"].base_url
    url = url.rstrip("/")
    if url:  # "": the simulator preset's server, started on a free port when the run begins
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"{place.prefix}{place.url} {url!r} must be an http(s) URL such as https://host/v1")
    model = model or (preset.default_model if preset else None)
    if model_optional is None:
        model_optional = preset is not None and preset.model_optional
    if model is None and not model_optional:
        raise UsageError(place.no_model)
    if model and preset and preset.model_needs_org_prefix and "/" not in model:
        raise UsageError(f"{place.prefix}{preset.name} model ids carry an organization prefix: "
                         f"use e.g. 'openai/{model}'")
    return provider, url, model


def read_tables(value: Any, where: str) -> list[dict[str, Any]]:
    """The `[[endpoints]]` tables as given, each key known and of the right type (the checks
    that need the whole list, or the run's settings, are `build_endpoints`')."""
    if isinstance(value, Mapping):
        raise UsageError(f"{where}: endpoints is one table; write each endpoint as a "
                         "[[endpoints]] table (two brackets)")
    if not isinstance(value, list | tuple) or not all(isinstance(t, Mapping) for t in value):
        raise UsageError(f"{where}: endpoints must be [[endpoints]] tables, each with a name, "
                         "a base_url or provider, and a model")
    tables = []
    for i, table in enumerate(value, 1):
        name = table.get("name")
        label = f"{where}: endpoint '{name}'" if isinstance(name, str) and name.strip() else (
            f"{where}: [[endpoints]] #{i}")
        for key, given in table.items():
            spec = _BY_KEY.get(key)
            if spec is None:
                raise UsageError(f"{label}: unknown key '{key}'; known: {', '.join(_BY_KEY)}")
            checked(spec, given, f"{label}: {key}")
        tables.append(dict(table))
    return tables


@dataclass(frozen=True)
class Limits:
    """The run's own limits: each endpoint's defaults."""

    rpm: float | None
    tpm: float | None
    concurrency: int


def build_endpoints(tables: Sequence[Mapping[str, Any]], limits: Limits) -> tuple[Endpoint, ...]:
    """The run's endpoints from checked `[[endpoints]]` tables: named once each, located, their
    limits defaulting to the run's, and at least one that is not a fallback."""
    if not tables:
        raise UsageError("endpoints is empty: add [[endpoints]] tables, each with a name, a "
                         "base_url or provider, and a model")
    endpoints: list[Endpoint] = []
    for i, table in enumerate(tables, 1):
        name = table.get("name")
        if name is None:
            raise UsageError(f"[[endpoints]] #{i} has no name: add name = \"...\" (shown in the "
                             "output's endpoint column)")
        if any(e.name == name for e in endpoints):
            raise UsageError(f"endpoint '{name}' is listed twice: give each [[endpoints]] table "
                             "a name of its own")
        place = Place(f"endpoint '{name}': ", "base_url",
                      f"endpoint '{name}' has no model: add model = \"NAME\" to its "
                      "[[endpoints]] table")
        if not table.get("base_url") and not table.get("provider"):
            raise UsageError(f"endpoint '{name}' says nowhere to send: add base_url = "
                             "\"https://host/v1\" or provider = \"NAME\" to its [[endpoints]] table")
        provider, base_url, model = locate(table.get("provider"), table.get("base_url"),
                                           table.get("model"), place, model_optional=False)
        endpoints.append(Endpoint(
            name=name, base_url=base_url, provider=provider, model=model,
            api_key_env=table.get("api_key_env"),
            rpm=table.get("rpm", limits.rpm), tpm=table.get("tpm", limits.tpm),
            concurrency=table.get("concurrency", limits.concurrency),
            fallback=table.get("fallback", False)))
    if all(e.fallback for e in endpoints):
        raise UsageError("every endpoint has fallback = true: at least one must share the rows "
                         "(drop fallback from one [[endpoints]] table)")
    return tuple(endpoints)


def with_fallback_models(provider: str | None, base_url: str, model: str | None,
                         api_key_env: str | None, limits: Limits,
                         models: Sequence[str]) -> tuple[Endpoint, ...]:
    """`--fallback-model`: the run's one endpoint (named after its model), then one fallback
    endpoint per model on the same base URL, key and limits, in the order given."""
    if model is None:
        raise UsageError("--fallback-model needs --model: the run's own model is tried first")
    endpoints: list[Endpoint] = []
    for name in (model, *models):
        if any(e.name == name for e in endpoints):
            raise UsageError(f"--fallback-model {name} is given twice (or is the run's --model "
                             "itself): name each fallback model once")
        # The preset's quirks hold for each model (LLMost's organization prefix).
        locate(provider, base_url, name, Place(f"--fallback-model {name}: ", "--base-url", ""))
        endpoints.append(Endpoint(
            name=name, base_url=base_url, provider=provider, model=name, api_key_env=api_key_env,
            rpm=limits.rpm, tpm=limits.tpm, concurrency=limits.concurrency,
            fallback=bool(endpoints)))
    return tuple(endpoints)


def refuse_per_endpoint(given: Mapping[str, str]) -> None:
    """With `[[endpoints]]`, the run's own endpoint settings are refused (exit 2).

    `given` maps each RunConfig setting given for the run to how it was given (`--model`,
    `[request] model`).
    """
    for name, label in given.items():
        if name == "fallback_models":
            raise UsageError(f"{label} cannot be used with [[endpoints]]: add the fallback "
                             "model as an [[endpoints]] table with fallback = true")
        if name in PER_ENDPOINT:
            raise UsageError(f"{label} cannot be used with [[endpoints]]: the endpoints describe "
                             f"it (set {PER_ENDPOINT[name]} in each [[endpoints]] table)")


def in_try_order(endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """The order a row that fails on one endpoint tries the others in: the pool endpoints, then
    the fallbacks, each as listed (the pool's routing, its cache lookups and its resume)."""
    return [e for e in endpoints if not e.fallback] + [e for e in endpoints if e.fallback]
