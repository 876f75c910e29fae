"""RunConfig: every setting of a run, declared once, merged from defaults, a job file and flags.

Each setting is declared on its field (`batchrun.settings.setting`): the command line's option,
the job file's section and key, the accepted types and check, whether it shapes the request, and
its line in the docs all come from there.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from batchrun.data.locations import is_requests, is_url
from batchrun.data.openai_api import MAX_BATCH_LINES, MAX_BATCH_MB
from batchrun.errors import UsageError
from batchrun.settings import checks
from batchrun.settings.checks import at_least, in_range, positive
from batchrun.settings.endpoints import (
    FLAGS,
    MAX_CONCURRENCY,
    PER_ENDPOINT,
    SECTION,
    Endpoint,
    Limits,
    build_endpoints,
    locate,
    model_names,
    read_tables,
    refuse_per_endpoint,
    with_fallback_models,
)
from batchrun.settings.files import FORMATS, locations, read_schema, read_tools
from batchrun.settings.prices import Price, run_price
from batchrun.settings.providers import PRESETS, Preset
from batchrun.settings.setting import (
    Setting,
    checked,
    declaration,
    declared,
    setting,
    settings_field,
)

CACHE_ENV = "BATCHRUN_CACHE"  # the shared response cache of every run that names none
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a run needs, validated; the API key is not in here (see ``keys.resolve_key``).

    The fields' order is the order of `--help`, of the docs' tables and of the known keys a
    job-file error lists, and the order in which the settings that shape a request are hashed
    (`request_fingerprint`): keep base_url, model, then the prompt's settings, then the body's.
    """

    # A local path, or an object-store URL (`s3://bucket/key`).
    input: Path | str = field(metadata=declaration(
        "input", str, key="path", flag="--input", metavar="PATH", path=True,
        help="CSV, TSV or Parquet file of prompts, or batch JSONL requests.",
        doc="CSV, TSV (or `.txt`, read as comma-separated CSV) or Parquet file of prompts, or a "
            "batch JSONL file of requests "
            "([batch files](output.md#openai-batch-files)), read in streamed batches; a path or "
            "an [`s3://` URL](storage.md)."))
    # The local home of the output: the file itself, or its staging copy (output_url).
    output: Path = field(metadata=declaration(
        "output", str, key="path", flag="--output", metavar="PATH", path=True,
        help="Parquet file to write, or .jsonl for the batch output format "
             "(default: INPUT.out.parquet).",
        doc="Parquet file to write (or `.jsonl`: the [batch output format]"
            "(output.md#openai-batch-files)); a path or an `s3://` URL. Its journal, lock and "
            "usage sidecar live beside it (a URL's journal and lock: in a local state folder). "
            "With `--engine ray`, a local path with neither suffix is a folder: a Parquet dataset.",
        shown_default="`INPUT.out.parquet`"))
    provider: str | None = setting(
        None, "provider", str, key="name", flag="--provider", choices=tuple(PRESETS),
        help="Provider preset: base URL, key variable and quirks.",
        doc="Preset: base URL, key variable, quirks ([providers.md](providers.md)).")
    base_url: str = field(metadata=declaration(
        "provider", str, flag="--base-url", metavar="URL", shapes="endpoint",
        help="OpenAI-compatible base URL (…/v1).",
        doc="Any OpenAI-compatible base URL ending in `/v1`; overrides the preset's.",
        shown_default="the preset's; OpenAI's without one"))
    model: str | None = setting(
        None, "request", str, flag="--model", shapes="body",
        help="Model name sent in each request.", shown_default="the preset's, if it has one")
    fallback_models: tuple[str, ...] = setting(
        (), "request", str, flag="--fallback-model", metavar="MODEL", multiple=True,
        accepts=(str, list, tuple), check=model_names,
        help="Another model on the same endpoint and key, for rows the model cannot answer "
             "(repeatable, tried in order).",
        doc="Another model on the same base URL, key and limits: a row that fails on `--model` "
            "for a reason another model may not share (context length, content filter, ...) is "
            "tried on it; repeat the flag (or give a list) for several, tried in order "
            "([several endpoints](endpoints.md#--fallback-model)).")
    api_key_env: str | None = setting(
        None, "provider", str, flag="--api-key-env", metavar="NAME",
        help="Name of the environment variable holding the API key (default "
             "BATCHRUN_API_KEY, then the provider's own, e.g. MEGALLM_API_KEY; "
             "OPENAI_API_KEY only for OpenAI or a host no preset names).",
        doc="The *name* of the environment variable that holds the key ([the key]"
            "(providers.md#the-key)).",
        shown_default="`BATCHRUN_API_KEY`, then the provider's own; `OPENAI_API_KEY` only for "
                      "OpenAI or a host no preset names")
    api_key_file: Path | None = setting(
        None, "provider", str, flag="--api-key-file", metavar="PATH", path=True,
        help="File holding the API key (must not be readable by others).",
        doc="A file holding the key; refused if others can read it (`chmod 600`).")
    prompt_column: str = setting(
        "prompt", "input", str, flag="--prompt-column", metavar="NAME", shapes="prompt",
        help="Column holding the prompt (default {default}).")
    messages_column: str | None = setting(
        None, "input", str, flag="--messages-column", metavar="NAME", shapes="prompt",
        help="Column holding a whole chat as a JSON list of {role, content}.",
        doc="Column holding a whole chat as a JSON list of `{role, content}` (not with a "
            "template).")
    template: str | None = setting(
        None, "input", str, flag="--template", metavar="TEXT", shapes="prompt",
        help="Prompt template with {column} placeholders; {{ and }} for braces.",
        doc="Prompt built from columns: `{column}` placeholders, `{{` and `}}` for braces.")
    system: str | None = setting(
        None, "input", str, flag="--system", metavar="TEXT", shapes="prompt",
        help="System prompt sent before each prompt.")
    id_column: str | None = setting(
        None, "input", str, flag="--id-column", metavar="NAME",
        help="Column that identifies rows (checked to exist).",
        doc="Column that identifies rows (checked to exist; kept in the output).")
    image_column: str | None = setting(
        None, "input", str, flag="--image-column", metavar="NAME", shapes="prompt",
        help="Column holding an image URL or a local image file (relative to the input's "
             "folder), sent inline as a data URL.")
    encoding: str = setting(
        "utf8", "input", str, flag="--encoding", metavar="NAME", check=checks.known_encoding,
        help="Text encoding of a CSV input (default utf-8).",
        doc="Text encoding of a CSV input (`utf-8`, `latin-1`, `cp1252`, ...).",
        shown_default="`utf-8`")
    temperature: float | None = setting(
        None, "request", float, flag="--temperature", check=in_range(0, 2), shapes="body",
        help="Sampling temperature, 0 to 2.",
        doc="Sampling temperature, 0 to 2. At 0, identical requests are sent once (dedup).")
    max_tokens: int | None = setting(
        None, "request", int, flag="--max-tokens", check=at_least(1), shapes="body",
        help="Most tokens per answer (>= 1).",
        doc="Most tokens per answer (at least 1); also what the TPM limiter and budgets "
            "reserve.", shown_default="the server's")
    top_p: float | None = setting(
        None, "request", float, flag="--top-p", check=in_range(0, 1, lo_open=True),
        shapes="body", help="Nucleus sampling mass, (0, 1].")
    frequency_penalty: float | None = setting(
        None, "request", float, flag="--frequency-penalty", check=in_range(-2, 2),
        shapes="body", help="Frequency penalty, -2 to 2.")
    presence_penalty: float | None = setting(
        None, "request", float, flag="--presence-penalty", check=in_range(-2, 2),
        shapes="body", help="Presence penalty, -2 to 2.")
    stop: tuple[str, ...] = setting(
        (), "request", str, flag="--stop", metavar="TEXT", multiple=True,
        accepts=(str, list, tuple), check=checks.stops, shapes="body",
        help=f"Stop sequence (repeatable, at most {checks.MAX_STOPS}).",
        doc=f"Stop sequence; repeat the flag (or give a list) for several, at most "
            f"{checks.MAX_STOPS}.")
    seed: int | None = setting(
        None, "request", int, flag="--seed", shapes="body",
        help="Sampling seed, for providers that honour it.")
    response_format: str = setting(
        "text", "request", str, flag="--response-format", metavar="FORMAT", path=True,
        shapes="body", help="text, json_object, or a JSON-schema file; fills the parsed column.",
        doc="`text`, `json_object`, or a JSON-schema file: answers are checked and land typed "
            "in `parsed`.")
    schema: Mapping[str, Any] | None = field(default=None, compare=False)  # read from response_format
    tools: tuple[Mapping[str, Any], ...] = setting(
        (), "request", list, accepts=(list, tuple, str), check=checks.tools, path=True,
        shapes="body",
        help="Tools offered to the model: inline `[[request.tools]]` tables or a JSON file; calls "
             "land in `response` as JSON.")
    tool_choice: str | Mapping[str, Any] | None = setting(
        None, "request", str, accepts=(str, dict), check=checks.tool_choice, shapes="body",
        help="`none`, `auto`, `required`, or one tool by name.")
    rpm: float | None = setting(
        None, "limits", float, flag="--rpm", check=positive,
        help="Requests per minute to stay under.",
        doc="Requests per minute to stay under (lowered automatically by `x-ratelimit-*` "
            "headers and 429s).")
    tpm: float | None = setting(
        None, "limits", float, flag="--tpm", check=positive,
        help="Tokens per minute to stay under (prompt + max_tokens).",
        doc="Tokens per minute to stay under (prompt estimate + `max_tokens` per request).")
    concurrency: int = setting(
        16, "limits", int, flag="--concurrency", check=in_range(1, MAX_CONCURRENCY),
        help="Requests in flight at once (default {default}).",
        doc="Requests in flight at once (1 to 10,000).")
    max_attempts: int = setting(
        6, "retry", int, flag="--max-attempts", check=in_range(1, 100),
        help="Attempts per row before it fails (default {default}).",
        doc="Attempts per row before it fails for good (1 to 100). A 429 about rate is the "
            "provider asking to wait, not a failed attempt: it does not count.")
    row_deadline: float = setting(
        900.0, "retry", float, flag="--row-deadline", check=positive,
        help="Seconds a row may spend waiting and retrying before it fails (default {default}).",
        doc="Seconds a row may spend waiting (429s) and retrying before it fails for good; a "
            "resume tries it again.")
    timeout: float = setting(
        120.0, "limits", float, flag="--timeout", check=positive,
        help="Seconds per request (default {default}).")
    max_cost: float | None = setting(
        None, "limits", float, flag="--max-cost", check=positive,
        help="Stop before this run spends more USD.",
        doc="Stop (exit 3) before this run spends more USD; needs a known price.")
    max_total_tokens: int | None = setting(
        None, "limits", int, flag="--max-total-tokens", check=positive,
        help="Stop before this run uses more tokens.",
        doc="Stop (exit 3) before this run uses more tokens.")
    price: Price | None = settings_field(  # None: the built-in price list's
        Setting("pricing", float, name="input_per_million", check=at_least(0),
                help="USD per 1M prompt tokens (overrides the built-in price list).",
                shown_default="the built-in price list's"),
        Setting("pricing", float, name="output_per_million", check=at_least(0),
                help="USD per 1M completion tokens.", shown_default="the built-in price list's"),
        Setting("pricing", float, name="cached_input_per_million", check=at_least(0),
                help="USD per 1M prompt tokens the provider served from its prompt cache "
                     "(`usage.prompt_tokens_details.cached_tokens`); needs input_per_million "
                     "and output_per_million.",
                shown_default="the input price"))
    batch_price: Price | None = settings_field(  # None: half of `price`
        Setting("pricing", float, name="batch_input_per_million", check=at_least(0),
                help="Batch API price per 1M prompt tokens.",
                shown_default="half of the online price"),
        Setting("pricing", float, name="batch_output_per_million", check=at_least(0),
                help="Batch API price per 1M completion tokens.",
                shown_default="half of the online price"))
    fresh: bool = setting(
        False, "run", bool, flag="--fresh", help="Ignore earlier progress and start over.",
        doc="Forget earlier progress for this output and start over (refused, exit 2, while a "
            "Batch API batch of it is still live: `batchrun cancel` it first).")
    retry_failed: bool = setting(
        False, "run", bool, flag="--retry-failed",
        help="Send rows that failed for good in earlier runs again.")
    dedup: bool | None = setting(
        None, "run", bool, flag="--dedup/--no-dedup",
        help="Send identical requests once (default: on when temperature is 0).",
        doc="Send identical requests once and share the answer.",
        shown_default="on when temperature is 0")
    allow_insecure_http: bool = setting(
        False, "provider", bool, flag="--allow-insecure-http",
        help="Allow sending the key over plain http to a non-loopback host.",
        doc="Allow sending the key over plain `http` to a non-loopback host.")
    progress: bool = setting(
        True, "run", bool, flag="--no-progress", flag_value=False, help="No progress display.",
        doc="Progress display, progress lines and `progress` events; `--no-progress` (or "
            "`false`) turns them off.")
    cache: Path | None = setting(
        None, "run", str, flag="--cache", metavar="PATH", path=True,
        help="Shared response cache: answer rows another run already paid for, at no cost "
             f"(default ${CACHE_ENV} if set).",
        doc="A [shared response cache](cache.md) file: a row whose request was answered before "
            f"(by any run, to any output) is answered from it at no cost; `${CACHE_ENV}` sets it "
            "for every run. Opt-in.",
        shown_default=f"`${CACHE_ENV}`, else none")
    report: bool = setting(
        False, "run", bool, flag="--report",
        help="Write an HTML report of the run beside the output (OUTPUT.report.html).",
        doc="Write the run's [HTML report](report.md) beside the output "
            "(`OUTPUT.report.html`), also when it stops early; the summary and the `finish` "
            "event name it.")
    log_format: str = setting(
        "text", "run", str, flag="--log-format", choices=("text", "json"),
        help="Log lines as text or one JSON object per line.",
        doc="`json`: every stderr line is one JSON object (see [Logs](logs.md)).")
    log_level: str = setting(
        "warning", "run", str, flag="--log-level", choices=("debug", "info", "warning", "error"),
        help="Least severe log level shown (default {default}; info with --log-format json).",
        doc="Least severe record shown (`info` with `--log-format json`).")
    backend: str = setting(
        "online", "run", str, flag="--backend", choices=("online", "batch"),
        help="online (default): one request per row; batch: the provider's Batch API at half "
             "price, answers within 24 h.",
        doc="`online`: one request per row, as fast as the limits allow. `batch`: the "
            "provider's Batch API, at half price, answers within 24 h (see [Batch mode]"
            "(batch.md)).")
    batch_size: int = setting(
        MAX_BATCH_LINES, "run", int, flag="--batch-size", check=in_range(1, MAX_BATCH_LINES),
        help=f"Batch: requests per batch input file (default {{default}}; files also split at "
             f"{MAX_BATCH_MB} MB).",
        doc=f"Batch: requests per batch input file (at most {MAX_BATCH_LINES:,}); files are "
            f"also split at {MAX_BATCH_MB} MB.")
    no_wait: bool = setting(
        False, "run", bool, flag="--no-wait",
        help="Batch: submit what is pending, collect finished batches, then exit (exit 75 while "
             "batches run).",
        doc="Batch: submit what is pending, collect the batches that ended, then exit: 0 when "
            "every row is done, 75 while batches still run (needs `--backend batch`).")
    batch_fallback: str = setting(
        "none", "run", str, flag="--batch-fallback", choices=("none", "online"),
        help="Batch: send rows a batch could not answer (expired, 5xx) online instead of in a "
             "new batch.",
        doc="Batch: rows a batch could not answer (expired, cancelled, 5xx) go online instead "
            "of into a new batch.")
    engine: str = setting(
        "local", "run", str, flag="--engine", choices=("local", "ray"),
        help="Where requests are sent from: this process, or Ray actors (default {default}).",
        doc="`ray`: send from Ray Data actors across a cluster, under one rate limit (see "
            "[On a Ray cluster](ray.md)); needs "
            "`pip install 'batchrun[ray]'`.")
    ray_address: str | None = setting(
        None, "run", str, flag="--ray-address", metavar="ADDR",
        help="Ray cluster to join (default RAY_ADDRESS, else a local Ray for the run).",
        doc="Ray cluster to join.",
        shown_default="`RAY_ADDRESS`, else a local Ray started for the run")
    workers: int = setting(
        2, "run", int, flag="--workers", check=in_range(1, 10_000),
        help="Sender actors of --engine ray (default {default}).",
        doc="Sender actors of `--engine ray` (1 to 10,000); `--rpm`, `--tpm`, `--concurrency` "
            "are their total.")
    job_file: Path | None = None
    output_url: str | None = None  # where the output is published, for an object-store output
    # `[[endpoints]]` and `--fallback-model` (settings.endpoints): () for a run with one endpoint.
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def dedup_enabled(self) -> bool:
        """Identical requests share one answer: asked for, or implied by temperature 0."""
        return self.dedup if self.dedup is not None else self.temperature == 0

    @property
    def preset(self) -> Preset | None:
        """The provider preset, if one was named."""
        return PRESETS.get(self.provider) if self.provider else None

    @property
    def output_name(self) -> str:
        """The output as the user named it: its URL, or its path."""
        return self.output_url or str(self.output)

    @property
    def endpoint(self) -> str:
        """The base URL as reports show it: the simulator preset's port is chosen at run time."""
        if self.provider == "simulator" and not self.base_url:
            return "in-process simulator (loopback)"
        return self.base_url

    def at(self, endpoint: Endpoint) -> RunConfig:
        """The run's settings as one endpoint sends them: its URL, model, key variable and
        limits (so the key rules, the limiter and the sender work per endpoint unchanged)."""
        return replace(self, base_url=endpoint.base_url, provider=endpoint.provider,
                       model=endpoint.model, api_key_env=endpoint.api_key_env,
                       rpm=endpoint.rpm, tpm=endpoint.tpm, concurrency=endpoint.concurrency,
                       endpoints=(), fallback_models=())

    @property
    def is_local(self) -> bool:
        """A loopback base URL or a local preset: the key is optional."""
        return (self.preset is not None and self.preset.local) or is_loopback(self.base_url)


def is_loopback(url: str) -> bool:
    """True when the URL's host is on this machine: `localhost` or a loopback IP address.

    Names are not resolved, and only `localhost` is trusted by name: `127.example.com` is remote.
    """
    host = (urlsplit(url).hostname or "").lower()
    if host in LOOPBACK_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


SETTINGS: tuple[Setting, ...] = tuple(declared(RunConfig))
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}
FIELDS = SETTINGS  # the old name, for tests/test_readme.py until its tables move to docs/
PATH_SETTINGS = tuple(s.name for s in SETTINGS if s.path)
# The settings that shape a request, in field order: what names a request for resume (rendered
# into its body and key by `protocol.render`), and what a batch's metadata and the output's
# metadata fingerprint. Existing batches are found again by this hash: its names and their order
# must not change unless a new setting shapes requests.
REQUEST_SHAPING = tuple(s.name for s in SETTINGS if s.shapes)
BODY_PARAMETERS = tuple(s.name for s in SETTINGS if s.shapes == "body")


def request_fingerprint(config: RunConfig) -> str:
    """A short hash of the settings that shape requests (never the key, which is not in config)."""
    shaping = {name: str(getattr(config, name)) for name in REQUEST_SHAPING}
    return hashlib.sha256(orjson.dumps(shaping)).hexdigest()[:16]


def load_job_file(path: Path) -> dict[str, Any]:
    """Read a job file into flat settings, refusing unknown keys and wrong types."""
    import tomllib  # here: a run from flags alone does not pay for the TOML parser's import

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"job file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read job file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"job file {path} is not valid TOML: {exc}") from None
    by_place = {(s.section, s.key): s for s in SETTINGS}
    sections = sorted({s.section for s in SETTINGS})
    flat: dict[str, Any] = {}
    for section, table in raw.items():
        if section == SECTION:  # [[endpoints]]: an array of tables, checked table by table
            flat[SECTION] = read_tables(table, str(path))
            continue
        if not isinstance(table, dict):
            raise UsageError(
                f"{path}: top-level key '{section}' must be a section, one of [{'], ['.join(sections)}]"
            )
        if section not in sections:
            raise UsageError(f"{path}: unknown section [{section}]; known: {', '.join(sections)}")
        for key, value in table.items():
            spec = by_place.get((section, key))
            if spec is None:
                known = ", ".join(k for s, k in by_place if s == section)
                raise UsageError(f"{path}: unknown key '{key}' in [{section}]; known: {known}")
            flat[spec.name] = checked(spec, value, f"{path}: [{section}] {key}")
    # Relative paths in a job file are relative to the job file's directory, so a job runs the
    # same from any working directory (`batchrun run jobs/demo.toml` reads `jobs/../data/...`).
    # Paths given as flags stay relative to the working directory, as on any command line.
    for name in PATH_SETTINGS:
        value = flat.get(name)
        if isinstance(value, str) and not is_url(value) and not (
                name == "response_format" and value in FORMATS):
            flat[name] = str(path.parent / Path(value).expanduser())
    return flat


def build_config(job_file: Path | None, overrides: Mapping[str, Any]) -> RunConfig:
    """Merge defaults < job file < flags (None means 'not given') into a validated RunConfig."""
    settings: dict[str, Any] = load_job_file(job_file) if job_file else {}
    # How each setting was given, as messages name it: the flag, else the job file's key.
    given = {name: f"[{SETTINGS_BY_NAME[name].section}] {SETTINGS_BY_NAME[name].key}"
             for name in settings if name in SETTINGS_BY_NAME}
    for name, value in overrides.items():
        spec = SETTINGS_BY_NAME.get(name)
        if value is None or (spec is not None and spec.multiple and value == ()):
            continue
        if name == SECTION:  # the Python API's endpoints=[{...}, ...]: tables, as in a job file
            settings[name] = read_tables(value, "endpoints")
        elif spec is not None:
            given[name] = spec.flag.split("/")[0] if spec.flag else f"--{name.replace('_', '-')}"
            settings[name] = checked(spec, value, given[name])
        else:
            settings[name] = value
    return _finish(settings, job_file, given)


def _finish(s: dict[str, Any], job_file: Path | None, given: Mapping[str, str]) -> RunConfig:
    """Check what only the settings together can tell, and build the RunConfig from them."""
    if not s.get("input"):
        raise UsageError("no input: give --input PATH or [input] path in the job file")
    # With the Ray engine, an output that is no file format is a folder: a Parquet dataset.
    input_path, output, output_url = locations(s.pop("input"), s.pop("output", None),
                                               folders=s.get("engine") == "ray")
    provider, base_url, model, endpoints = _endpoints(s, input_path, given)
    tools = _request_tools(s)
    if s.get("template") is not None and s.get("messages_column") is not None:
        raise UsageError("--template and --messages-column cannot be used together; choose one")

    stop = s.pop("stop", ())
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    checked(SETTINGS_BY_NAME["stop"], stop, "--stop")
    response_format = s.pop("response_format", "text")
    schema = read_schema(response_format)
    price = _price(s)
    batch_price = _price(s, "batch_")
    if s.get("no_wait") and s.get("backend", "online") != "batch":
        raise UsageError("--no-wait applies to --backend batch; add --backend batch or drop it")
    if s.get("max_cost") is not None:
        _priced_for_budget(endpoints, model, price, batch_price, s.get("backend", "online"))
    api_key_file = s.pop("api_key_file", None)
    cache = s.pop("cache", None) or os.environ.get(CACHE_ENV) or None
    known = {f.name for f in fields(RunConfig)}
    unknown = set(s) - known
    if unknown:  # a programming error in a caller, not a user mistake
        raise TypeError(f"unknown settings: {sorted(unknown)}")
    return RunConfig(
        input=input_path,
        output=output,
        base_url=base_url,
        provider=provider,
        model=model,
        stop=stop,
        response_format=response_format,
        schema=schema,
        price=price,
        batch_price=batch_price,
        api_key_file=Path(api_key_file) if api_key_file else None,
        cache=Path(cache).expanduser() if cache else None,
        tools=tools,
        job_file=job_file,
        output_url=output_url,
        endpoints=endpoints,
        **s,
    )


def _priced_for_budget(endpoints: tuple[Endpoint, ...], model: str | None, price: Price | None,
                       batch_price: Price | None, backend: str) -> None:
    """--max-cost needs a price for every model the run may pay for."""
    models: list[tuple[str | None, str]] = [(e.model, f" (endpoint '{e.name}')")
                                             for e in endpoints] or [(model, "")]
    for priced, which in models:
        if run_price(priced, price, backend, batch_price) is None:
            raise UsageError(
                f"--max-cost needs a price, and model {priced or '(account default)'}{which} has "
                "no built-in one: give it in a job file's [pricing] section (input_per_million "
                "and output_per_million; no flag sets a price), or use --max-total-tokens")


def _endpoints(s: dict[str, Any], input_path: Path | str, given: Mapping[str, str],
               ) -> tuple[str | None, str, str | None, tuple[Endpoint, ...]]:
    """The run's endpoints (none but the flags' one: `()`), and the provider, base URL and model
    of the run itself: with `[[endpoints]]`, its first pool endpoint's."""
    limits = Limits(s.get("rpm"), s.get("tpm"),
                    s.get("concurrency", SETTINGS_BY_NAME["concurrency"].default))
    models = s.pop("fallback_models", ())
    models = (models,) if isinstance(models, str) else tuple(models)
    tables = s.pop(SECTION, None)
    if tables is not None:
        refuse_per_endpoint({name: how for name, how in given.items()
                             if name in PER_ENDPOINT or name == "fallback_models"})
        endpoints = build_endpoints(tables, limits)
        first = next(e for e in endpoints if not e.fallback)
        s["api_key_env"] = first.api_key_env
        provider, base_url, model = first.provider, first.base_url, first.model
    else:
        provider, base_url, model = _endpoint(s, input_path)
        endpoints = with_fallback_models(provider, base_url, model, s.get("api_key_env"), limits,
                                         models) if models else ()
    s["fallback_models"] = models
    if endpoints and s.get("backend") == "batch":
        raise UsageError("--backend batch with several endpoints is not supported yet: run them "
                         "online, or one endpoint with the Batch API")
    return provider, base_url, model, endpoints


def _endpoint(s: dict[str, Any], input_path: Path | str) -> tuple[str | None, str, str | None]:
    """Provider, base URL and model of the flags' one endpoint (`endpoints.locate`)."""
    # A batch JSONL input's bodies name their model; a body that does not needs --model (render).
    return locate(s.pop("provider", None), s.pop("base_url", None), s.pop("model", None), FLAGS,
                  model_optional=True if is_requests(input_path) else None)


def _request_tools(s: dict[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """[request] tools (inline or a JSON file), and a tool_choice that names one of them."""
    given = s.pop("tools", ())
    if isinstance(given, str):  # a JSON file holding the list
        given = checked(SETTINGS_BY_NAME["tools"], read_tools(given), f"tools file {given}:")
    tools: tuple[Mapping[str, Any], ...] = tuple(given)
    if s.get("tool_choice") is not None:
        choice = s["tool_choice"]
        if not tools:
            raise UsageError("tool_choice needs tools: add [request] tools to the job file")
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if named is not None and named not in {t["function"]["name"] for t in tools}:
            raise UsageError(f"tool_choice names tool '{named}', which is not in [request] tools")
    return tools


def _price(s: dict[str, Any], prefix: str = "") -> Price | None:
    """[pricing] {prefix}input_per_million and {prefix}output_per_million, given together or not,
    and the optional {prefix}cached_input_per_million with them."""
    names = (f"{prefix}input_per_million", f"{prefix}output_per_million")
    cached = f"{prefix}cached_input_per_million"
    given = [name for name in names if name in s]
    if not given:
        if cached in s:
            raise UsageError(f"[pricing] {cached} needs {names[0]} and {names[1]} too")
        return None
    if len(given) == 1:
        raise UsageError(f"[pricing] needs both {names[0]} and {names[1]}")
    cached_price = s.pop(cached, None)
    return Price(float(s.pop(names[0])), float(s.pop(names[1])),
                 float(cached_price) if cached_price is not None else None)


def as_keywords(message: str) -> str:
    """A message for a Python caller: the flags it names as the keyword arguments that set them
    (`--max-cost` reads `max_cost`, `--no-progress` reads `progress=False`), for the APIs that
    take settings by name."""
    for spec in sorted(SETTINGS, key=lambda s: -len(s.flag or "")):
        flags = (spec.flag or "").split("/")
        for i, flag in enumerate(f for f in flags if f):
            if spec.value is not bool:
                word = spec.name
            elif len(flags) == 2:  # --dedup/--no-dedup
                word = f"{spec.name}={i == 0}"
            else:
                word = f"{spec.name}={spec.flag_value}"
            message = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", word, message)
    return message
