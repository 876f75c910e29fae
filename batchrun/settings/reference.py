"""The docs' reference pages of options and job-file keys, generated from the declarations.

    python -m batchrun.settings.reference options > docs/options.md
    python -m batchrun.settings.reference job-file > docs/job-file.md

The tables come from the settings declared on `RunConfig`; the prose around them is here.
`tests/test_reference_docs.py` regenerates both pages and compares, so a setting cannot be added,
renamed or redescribed without its docs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from batchrun.data.locations import STATE_ENV
from batchrun.settings.config import CACHE_ENV, SETTINGS
from batchrun.settings.endpoints import ENDPOINT_SETTINGS, PER_ENDPOINT
from batchrun.settings.providers import DEFAULT_KEY_ENVS, FALLBACK_KEY_ENV, PRESETS
from batchrun.settings.setting import Setting, show

_GENERATED = ("<!-- Generated from the settings declared in batchrun/settings/config.py by "
              "`python -m batchrun.settings.reference {page}`: edit those, then regenerate. -->")
_FLAG_TYPES = {float: "FLOAT", int: "INTEGER", str: "TEXT"}

OPTIONS_INTRO = """\
# Options of `batchrun run`

{generated}

Every option can also be set in the job file (column "Job file", and the
[job-file reference](job-file.md)); a flag wins over the file, the file wins over the defaults.
`batchrun plan` takes the same options, and `--format [text|json]` (default `text`): `json`
prints the plan as one JSON object, for scripts. The key itself is never an option's value: it
comes from the environment or a file (see [Environment](#environment)).
"""

JOB_FILE_INTRO = """\
# Job-file reference

{generated}

A job file is TOML with these sections; unknown sections or keys are refused (exit 2) with the
list of known ones. Relative paths in a job file are relative to the job file's folder; paths
given as flags are relative to the working directory. Every key but `[request] tools`,
`[request] tool_choice`, `[pricing]` and the [`[[endpoints]]`](#endpoints) tables' is also a flag
of `batchrun run` (column "Flag"; see [options](options.md)); a flag wins over the file.

```toml
[input]
path = "../data/reviews.csv"
template = "Summarize this review of {{product}} in one sentence: {{review}}"

[output]
path = "../out/summaries.parquet"

[provider]
name = "openai"

[request]
model = "gpt-4o-mini"
temperature = 0
max_tokens = 80

[limits]
rpm = 500
tpm = 200_000
max_cost = 2.00
```
"""

ENDPOINTS_INTRO = """\
## `[[endpoints]]`

A run may send its rows to several endpoints: each `[[endpoints]]` table is one, with its own
base URL or preset, model, key and limits ([several endpoints](endpoints.md)). Endpoints without
`fallback = true` share the rows; fallback endpoints get only rows that failed on the others, in
the order of the list. The run's `--rpm`, `--tpm`, `--concurrency` and `[limits]` are each
endpoint's defaults. With `[[endpoints]]`, the settings of a run's one endpoint are refused
(exit 2), as flags or as keys, since the endpoints describe them: {refused}; so are
`--fallback-model` and `--backend batch`.

```toml
[[endpoints]]
name = "A"
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"
api_key_env = "OPENAI_KEY_A"
rpm = 3000

[[endpoints]]
name = "big"
provider = "llmost"
model = "openai/gpt-4o"
fallback = true
```
"""

JOB_FILE_OUTRO = """\
Built-in prices (USD per 1M tokens) cover common OpenAI and Anthropic models (an organization
prefix such as `openai/` is ignored, dated snapshots price like their family); for anything else,
or a gateway's own prices, set `[pricing]`. Without a price the cost reads "unknown" and
`--max-cost` is refused.
"""


def _environment() -> list[tuple[str, str]]:
    """(variables, what they do) of the environment a run reads."""
    presets = dict.fromkeys(p.key_env for p in PRESETS.values() if p.key_env)
    presets.pop(FALLBACK_KEY_ENV, None)
    return [
        (_codes(DEFAULT_KEY_ENVS), "The API key, for whatever endpoint the run names, unless "
         "`--api-key-file` or `--api-key-env` says where it is ([the key]"
         "(providers.md#the-key))."),
        (_codes(presets), "A preset's own key, read after `BATCHRUN_API_KEY` for that preset "
         "only ([providers](providers.md))."),
        (_codes([FALLBACK_KEY_ENV]), "OpenAI's key: read for the `openai` preset and for a base "
         "URL whose host no preset names; never sent to another provider's preset."),
        ("`RAY_ADDRESS`", "The Ray cluster `--engine ray` joins when `--ray-address` is not "
         "given; without either, the run starts a local Ray for itself."),
        ("`BATCHRUN_PROGRESS_EVERY`", "Seconds between plain progress lines or `progress` "
         "events when stderr is not a terminal (default 5; any number above 0)."),
        ("`BATCHRUN_BATCH_POLL`", "Batch: poll batches every this many seconds (default: from "
         "5 s, growing to 60 s)."),
        (f"`{CACHE_ENV}`", "The [shared response cache](cache.md) of a run that gives no "
         "`--cache`."),
        (f"`{STATE_ENV}`", "Where the journal and lock of an `s3://` output live on this "
         "machine (default `$XDG_STATE_HOME/batchrun`, else `~/.local/state/batchrun`)."),
        ("`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `AWS_REGION`, "
         "`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`",
         "Credentials, region and endpoint of "
         "`s3://` inputs and outputs ([object storage](storage.md))."),
        ("`ARROW_DEFAULT_MEMORY_POOL`", "Arrow's memory allocator; the `batchrun` command sets "
         "`jemalloc` unless it is set, so memory freed while reading and writing is returned."),
    ]


def options_page() -> str:
    """docs/options.md: every `run` option, then the environment a run reads."""
    rows = [[_code(s.flag.replace("/", " / ")), _value(s), _option_default(s),
             _code(f"[{s.section}] {s.key}" + (" = false" if not s.flag_value else "")),
             s.description] for s in SETTINGS if s.flag is not None]
    rows.append(["`-h, --help`", "", "", "", "Show the options and exit."])
    return "\n".join([
        OPTIONS_INTRO.format(generated=_GENERATED.format(page="options")),
        _table(["Option", "Value", "Default", "Job file", "What it does"], rows),
        "## Environment\n",
        "A run reads these variables; none of them is needed for a local server.\n",
        _table(["Variable", "What it does"], [list(row) for row in _environment()]),
    ])


def job_file_page() -> str:
    """docs/job-file.md: every section and key, section by section."""
    sections = list(dict.fromkeys(s.section for s in SETTINGS))
    rows = [[f"`[{s.section}]`", _code(s.key), _job_type(s), _job_default(s),
             _code(s.flag.replace("/", " / ")) if s.flag else "", s.description]
            for section in sections for s in SETTINGS if s.section == section]
    refused = [s for s in SETTINGS if s.name in PER_ENDPOINT]
    endpoint_rows = [[_code(s.key), _job_type(s), _job_default(s), s.description]
                     for s in ENDPOINT_SETTINGS]
    return "\n".join([
        JOB_FILE_INTRO.format(generated=_GENERATED.format(page="job-file")),
        _table(["Section", "Key", "Type", "Default", "Flag", "Meaning"], rows),
        ENDPOINTS_INTRO.format(refused=", ".join(
            f"{_code(s.flag or '')} ({_code(f'[{s.section}] {s.key}')})" for s in refused)),
        _table(["Key", "Type", "Default", "Meaning"], endpoint_rows),
        JOB_FILE_OUTRO,
    ]).rstrip("\n") + "\n"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _code(text: str) -> str:
    return f"`{text}`"


def _codes(names: Iterable[str]) -> str:
    return ", ".join(_code(name) for name in names)


def _value(s: Setting) -> str:
    """What the flag takes, named as --help names it (nothing for an on/off flag)."""
    if s.value is bool:
        return ""
    if s.choices:
        return ", ".join(_code(c) for c in s.choices)
    name = s.metavar or _FLAG_TYPES[s.value]
    return f"{name} (repeatable)" if s.multiple else name


def _option_default(s: Setting) -> str:
    if s.shown_default is not None:
        return s.shown_default
    if s.value is bool:
        return "off"  # the flag not given
    return "" if s.default in (None, ()) else _code(show(s.default))


def _job_type(s: Setting) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "bool", list: "list",
             tuple: "list", dict: "table"}
    types = [t for t in s.types if not (t is int and float in s.types)]
    return " or ".join(dict.fromkeys(names[t] for t in types))


def _job_default(s: Setting) -> str:
    if s.shown_default is not None:
        return s.shown_default
    if isinstance(s.default, bool):
        return _code(str(s.default).lower())
    if isinstance(s.default, str):
        return _code(f'"{s.default}"')
    return "" if s.default in (None, ()) else _code(show(s.default))


def main(argv: list[str]) -> int:
    """Print one page: `options` or `job-file`."""
    pages = {"options": options_page, "job-file": job_file_page}
    if len(argv) != 1 or argv[0] not in pages:
        print("usage: python -m batchrun.settings.reference options|job-file", file=sys.stderr)
        return 2
    sys.stdout.write(pages[argv[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
