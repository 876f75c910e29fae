"""The files a run's settings name: the input and output, checked against each other, and the
JSON schema and tools files, read."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from batchrun.data.locations import (
    OUTPUT_SUFFIXES,
    check_url,
    home,
    is_url,
    usage_path,
    usage_url,
)
from batchrun.errors import UsageError

FORMATS = ("text", "json_object")  # --response-format values that are not a schema file


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same path, through symlinks, `..`, or a hard link."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def locations(given_input: str, given_output: str | None,
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


def read_schema(response_format: str) -> Mapping[str, Any] | None:
    """The JSON schema a --response-format file holds (None for text and json_object)."""
    if response_format in FORMATS:
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


def read_tools(path: str) -> list[Any]:
    """The list of tools a [request] tools file holds (each checked by the caller)."""
    try:
        tools = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise UsageError(f"tools file {path} does not exist") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UsageError(f"tools file {path} is not readable JSON ({exc})") from None
    if not isinstance(tools, list):
        raise UsageError(f"tools file {path} must hold a JSON list of tools")
    return tools
