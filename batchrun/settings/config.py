"""RunConfig: every setting of a run, merged from defaults, a job file and flags, validated once."""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from batchrun.data.locations import (
    OUTPUT_SUFFIXES,
    check_url,
    home,
    is_requests,
    is_url,
    usage_path,
    usage_url,
)
from batchrun.errors import UsageError
from batchrun.settings.prices import Price, run_price
from batchrun.settings.providers import PRESETS, Preset

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True)
class Field:
    """One setting: its job-file section, accepted types and range check."""

    name: str
    section: str
    types: tuple[type, ...]
    check: Callable[[Any], str | None] | None = None  # returns a complaint or None
    key: str | None = None  # the key inside the section when it differs from `name`


def _range(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = (lo < v if lo_open else lo <= v) and v <= hi and not math.isnan(v)
        return None if ok else f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}]"

    return check


def _at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be at least {lo:g}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _choice(*options: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def _stops(v: Any) -> str | None:
    if isinstance(v, str):
        return None
    if not all(isinstance(s, str) and s for s in v):
        return "must be non-empty strings"
    return None if len(v) <= 4 else "allows at most 4 sequences"


_TOOL_CHOICES = ("none", "auto", "required")


def _tools(v: Any) -> str | None:
    if isinstance(v, str):
        return None  # a JSON file holding the list; loaded and checked in _load_tools
    for i, tool in enumerate(v):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not (
            isinstance(tool, dict) and tool.get("type") == "function"
            and isinstance(function, dict) and isinstance(function.get("name"), str)
            and function["name"]
        ):
            return f"entry {i} must be a table {{type = \"function\", function = {{name, parameters}}}}"
        if not isinstance(function.get("parameters", {}), dict):
            return f"entry {i}: function.parameters must be a JSON schema table"
    return None if v else "must not be empty"


def _tool_choice(v: Any) -> str | None:
    if isinstance(v, str):
        return None if v in _TOOL_CHOICES else f"must be one of {', '.join(_TOOL_CHOICES)} or a table"
    function = v.get("function")
    if v.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
        return 'must be {type = "function", function = {name = "..."}}'
    return None


def _known_encoding(name: str) -> str | None:
    import codecs

    try:
        codecs.lookup(name)
    except LookupError:
        return "is not a known text encoding (try utf-8, latin-1, cp1252)"
    return None


NUM = (int, float)
MAX_BATCH_LINES = 50_000  # requests one Batch API input file may hold (OpenAI's limit)
FIELDS: tuple[Field, ...] = (
    Field("input", "input", (str,), key="path"),
    Field("prompt_column", "input", (str,)),
    Field("messages_column", "input", (str,)),
    Field("template", "input", (str,)),
    Field("system", "input", (str,)),
    Field("id_column", "input", (str,)),
    Field("image_column", "input", (str,)),
    Field("encoding", "input", (str,), lambda v: _known_encoding(v)),
    Field("output", "output", (str,), key="path"),
    Field("provider", "provider", (str,), _choice(*PRESETS), key="name"),
    Field("base_url", "provider", (str,)),
    Field("api_key_env", "provider", (str,)),
    Field("api_key_file", "provider", (str,)),
    Field("allow_insecure_http", "provider", (bool,)),
    Field("model", "request", (str,)),
    Field("temperature", "request", NUM, _range(0, 2)),
    Field("max_tokens", "request", (int,), _at_least(1)),
    Field("top_p", "request", NUM, _range(0, 1, lo_open=True)),
    Field("frequency_penalty", "request", NUM, _range(-2, 2)),
    Field("presence_penalty", "request", NUM, _range(-2, 2)),
    Field("stop", "request", (str, list, tuple), _stops),
    Field("seed", "request", (int,)),
    Field("response_format", "request", (str,)),
    Field("tools", "request", (list, tuple, str), _tools),  # a list of tables or a JSON file
    Field("tool_choice", "request", (str, dict), _tool_choice),
    Field("rpm", "limits", NUM, _positive),
    Field("tpm", "limits", NUM, _positive),
    Field("concurrency", "limits", (int,), _range(1, 10_000)),
    Field("timeout", "limits", NUM, _positive),
    Field("max_cost", "limits", NUM, _positive),
    Field("max_total_tokens", "limits", (int,), _positive),
    Field("max_attempts", "retry", (int,), _range(1, 100)),
    Field("row_deadline", "retry", NUM, _positive),
    Field("input_per_million", "pricing", NUM, _at_least(0)),
    Field("output_per_million", "pricing", NUM, _at_least(0)),
    Field("batch_input_per_million", "pricing", NUM, _at_least(0)),
    Field("batch_output_per_million", "pricing", NUM, _at_least(0)),
    Field("fresh", "run", (bool,)),
    Field("retry_failed", "run", (bool,)),
    Field("dedup", "run", (bool,)),
    Field("progress", "run", (bool,)),
    Field("report", "run", (bool,)),
    Field("log_format", "run", (str,), _choice("text", "json")),
    Field("log_level", "run", (str,), _choice("debug", "info", "warning", "error")),
    Field("backend", "run", (str,), _choice("online", "batch")),
    Field("batch_size", "run", (int,), _range(1, MAX_BATCH_LINES)),
    Field("no_wait", "run", (bool,)),
    Field("batch_fallback", "run", (str,), _choice("none", "online")),
    Field("engine", "run", (str,), _choice("local", "ray")),
    Field("ray_address", "run", (str,)),
    Field("workers", "run", (int,), _range(1, 10_000)),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, validated; the API key is not in here (see ``keys.resolve_key``)."""

    input: Path | str  # a local path, or an object-store URL (`s3://bucket/key`)
    output: Path  # the local home of the output: the file itself, or its staging copy
    base_url: str
    provider: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    allow_insecure_http: bool = False
    prompt_column: str = "prompt"
    messages_column: str | None = None
    template: str | None = None
    system: str | None = None
    id_column: str | None = None
    image_column: str | None = None
    encoding: str = "utf8"
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_format: str = "text"  # "text", "json_object", or a schema file path
    schema: Mapping[str, Any] | None = field(default=None, compare=False)
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: str | Mapping[str, Any] | None = None
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int = 16
    timeout: float = 120.0
    max_attempts: int = 6
    row_deadline: float = 900.0  # seconds a row may spend waiting and retrying
    max_cost: float | None = None
    max_total_tokens: int | None = None
    price: Price | None = None
    batch_price: Price | None = None  # [pricing] batch_*; None: half of `price`
    fresh: bool = False
    retry_failed: bool = False
    dedup: bool | None = None  # None: on when the request is deterministic (temperature 0)
    progress: bool = True
    report: bool = False  # write OUTPUT.report.html at the end of the run
    log_format: str = "text"
    log_level: str = "warning"
    backend: str = "online"  # "online" or "batch" (the provider's Batch API)
    batch_size: int = MAX_BATCH_LINES  # lines per batch input file
    no_wait: bool = False  # batch: submit and collect what is ready, then exit (75 if running)
    batch_fallback: str = "none"  # "online": rows a batch could not answer are sent online
    engine: str = "local"  # "ray": the senders run as Ray Data actors (batchrun.ray)
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local Ray started for the run
    workers: int = 2  # sender actors of the Ray engine
    job_file: Path | None = None
    output_url: str | None = None  # where the output is published, for an object-store output

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
    by_place = {(f.section, f.key or f.name): f for f in FIELDS}
    sections = sorted({f.section for f in FIELDS})
    flat: dict[str, Any] = {}
    for section, table in raw.items():
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
            flat[spec.name] = _checked(spec, value, f"{path}: [{section}] {key}")
    # Relative paths in a job file are relative to the job file's directory, so a job runs the
    # same from any working directory (`batchrun run jobs/demo.toml` reads `jobs/../data/...`).
    # Paths given as flags stay relative to the working directory, as on any command line.
    for name in PATH_SETTINGS:
        value = flat.get(name)
        if isinstance(value, str) and not is_url(value) and not (
                name == "response_format" and value in FORMATS):
            flat[name] = str(path.parent / Path(value).expanduser())
    return flat


FORMATS = ("text", "json_object")
PATH_SETTINGS = ("input", "output", "api_key_file", "response_format", "tools")


def _checked(spec: Field, value: Any, where: str) -> Any:
    if isinstance(value, bool) and bool not in spec.types:
        raise UsageError(f"{where} must be {_type_names(spec.types)}, not a boolean")
    if not isinstance(value, spec.types):
        raise UsageError(f"{where} must be {_type_names(spec.types)}, not {type(value).__name__}")
    # Command-line bytes that are not UTF-8 arrive as lone surrogates; no request can carry them.
    texts = [value] if isinstance(value, str) else value if isinstance(value, list | tuple) else []
    for text in texts:
        if isinstance(text, str) and not _is_utf8(text):
            raise UsageError(f"{where} holds bytes that are not valid UTF-8 text; check the value "
                             "and the shell's locale (LANG)")
    if spec.check is not None:
        complaint = spec.check(value)
        if complaint:
            raise UsageError(f"{where} {complaint} (got {value!r})")
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    names.update({list: "a list", tuple: "a list", dict: "a table"})
    return " or ".join(dict.fromkeys(names[t] for t in types))


def build_config(job_file: Path | None, overrides: Mapping[str, Any]) -> RunConfig:
    """Merge defaults < job file < flags (None means 'not given') into a validated RunConfig."""
    settings: dict[str, Any] = load_job_file(job_file) if job_file else {}
    for name, value in overrides.items():
        if value is None or (name == "stop" and value == ()):
            continue
        spec = FIELDS_BY_NAME.get(name)
        settings[name] = _checked(spec, value, f"--{name.replace('_', '-')}") if spec else value
    return _finish(settings, job_file)


def _finish(s: dict[str, Any], job_file: Path | None) -> RunConfig:
    """Check what only the settings together can tell, and build the RunConfig from them."""
    if not s.get("input"):
        raise UsageError("no input: give --input PATH or [input] path in the job file")
    # With the Ray engine, an output that is no file format is a folder: a Parquet dataset.
    input_path, output, output_url = _locations(s.pop("input"), s.pop("output", None),
                                                folders=s.get("engine") == "ray")
    provider, base_url, model = _endpoint(s, input_path)
    tools = _request_tools(s)
    if s.get("template") is not None and s.get("messages_column") is not None:
        raise UsageError("--template and --messages-column cannot be used together; choose one")

    stop = s.pop("stop", ())
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    _checked(FIELDS_BY_NAME["stop"], stop, "--stop")
    response_format = s.pop("response_format", "text")
    schema = _load_schema(response_format)
    price = _price(s)
    batch_price = _price(s, "batch_")
    if s.get("no_wait") and s.get("backend", "online") != "batch":
        raise UsageError("--no-wait applies to --backend batch; add --backend batch or drop it")
    if s.get("max_cost") is not None and run_price(
        model, price, s.get("backend", "online"), batch_price
    ) is None:
        raise UsageError(
            f"--max-cost needs a price, and model {model or '(account default)'} has no built-in "
            "one: set [pricing] input_per_million and output_per_million in the job file"
        )
    api_key_file = s.pop("api_key_file", None)
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
        tools=tools,
        job_file=job_file,
        output_url=output_url,
        **s,
    )


def _endpoint(s: dict[str, Any], input_path: Path | str) -> tuple[str | None, str, str | None]:
    """Provider, base URL and model: a preset fills what is not given (OpenAI, if nothing is)."""
    provider = s.pop("provider", None)
    preset = PRESETS.get(provider) if provider else None
    base_url = s.pop("base_url", None) or (preset.base_url if preset else None)
    if base_url is None:
        provider, preset, base_url = "openai", PRESETS["openai"], PRESETS["openai"].base_url
    base_url = base_url.rstrip("/")
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--base-url {base_url!r} must be an http(s) URL such as https://host/v1")
    model = s.pop("model", None) or (preset.default_model if preset else None)
    # A batch JSONL input's bodies name their model; a body that does not needs --model (render).
    if model is None and not (preset and preset.model_optional) and not is_requests(input_path):
        raise UsageError("no model: give --model NAME or [request] model in the job file")
    if model and preset and preset.model_needs_org_prefix and "/" not in model:
        raise UsageError(
            f"{preset.name} model ids carry an organization prefix: use e.g. 'openai/{model}'"
        )
    return provider, base_url, model


def _request_tools(s: dict[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """[request] tools (inline or a JSON file), and a tool_choice that names one of them."""
    tools = _load_tools(s.pop("tools", ()))
    if s.get("tool_choice") is not None:
        choice = s["tool_choice"]
        if not tools:
            raise UsageError("tool_choice needs tools: add [request] tools to the job file")
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if named is not None and named not in {t["function"]["name"] for t in tools}:
            raise UsageError(f"tool_choice names tool '{named}', which is not in [request] tools")
    return tools


def _price(s: dict[str, Any], prefix: str = "") -> Price | None:
    """[pricing] {prefix}input_per_million and {prefix}output_per_million, given together or not."""
    names = (f"{prefix}input_per_million", f"{prefix}output_per_million")
    given = [name for name in names if name in s]
    if not given:
        return None
    if len(given) == 1:
        raise UsageError(f"[pricing] needs both {names[0]} and {names[1]}")
    return Price(float(s.pop(names[0])), float(s.pop(names[1])))


def _load_tools(value: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, str):
        return tuple(value)
    try:
        tools = orjson.loads(Path(value).read_bytes())
    except FileNotFoundError:
        raise UsageError(f"tools file {value} does not exist") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UsageError(f"tools file {value} is not readable JSON ({exc})") from None
    if not isinstance(tools, list):
        raise UsageError(f"tools file {value} must hold a JSON list of tools")
    _checked(FIELDS_BY_NAME["tools"], tools, f"tools file {value}:")
    return tuple(tools)


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same path, through symlinks, `..`, or a hard link."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _locations(given_input: str, given_output: str | None,
               folders: bool = False) -> tuple[Path | str, Path, str | None]:
    """(input, the output's local home, the output's URL if it is remote), checked; `folders`:
    a local output with no file format is a folder (the Ray engine's Parquet dataset)."""
    input_path: Path | str = given_input if is_url(given_input) else Path(given_input)
    if is_url(given_input):
        check_url(given_input)  # a malformed URL fails here, before anything else
    target = given_output or _default_output(input_path)
    name = target.rpartition("/")[2] if is_url(target) else Path(target).name
    folder = folders and not is_url(target) and not name.endswith(OUTPUT_SUFFIXES)
    if not name.endswith(OUTPUT_SUFFIXES) and not folder:
        raise UsageError(f"--output {target} must end in .parquet (or .jsonl for the batch "
                         "output format)")
    if is_url(target):
        check_url(target)
        if target == input_path or usage_url(target) == input_path:
            raise UsageError(f"--output {target} or its usage file is the input; choose another")
        return input_path, home(target), target
    output = Path(target)
    if isinstance(input_path, Path):
        if _same_file(output, input_path):
            raise UsageError(f"--output {output} is the input file; choose another output path")
        sidecar = usage_path(output)
        if _same_file(sidecar, input_path):
            raise UsageError(f"--output {output}: its usage file {sidecar} is the input file; "
                             "choose another output")
    if output.is_dir() and not folder:
        raise UsageError(f"--output {output} is a directory; give a file path ending in .parquet")
    return input_path, output, None


def _default_output(input_path: Path | str) -> str:
    """INPUT.out.parquet beside the input (in the same bucket for a URL)."""
    if isinstance(input_path, str):
        head, _, name = input_path.rpartition("/")
        return f"{head}/{name.rsplit('.', 1)[0]}.out.parquet"
    return str(input_path.with_name(input_path.stem + ".out.parquet"))


def _load_schema(response_format: str) -> Mapping[str, Any] | None:
    if response_format in ("text", "json_object"):
        return None
    path = Path(response_format)
    try:
        schema = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(
            f"--response-format {response_format!r}: not 'text', 'json_object' or an existing "
            "JSON-schema file"
        ) from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UsageError(f"--response-format {path}: not a readable JSON schema ({exc})") from None
    if not isinstance(schema, dict):
        raise UsageError(f"--response-format {path}: a JSON schema must be a JSON object")
    return schema
