"""Locations: what an input or output path means (its format) and the files that live beside it.

The one home of the naming rules: `x.parquet` or `x.jsonl` has its usage sidecar at
`x.usage.parquet` and its journal at `x.journal.sqlite` (journal.journal_path), so every module
that needs one of those names imports it from here.
"""

from __future__ import annotations

from pathlib import Path

OUTPUT_SUFFIXES = (".parquet", ".jsonl")  # Parquet, or the batch output format
REQUESTS_SUFFIX = ".jsonl"  # an input in the batch input format


def is_requests(path: Path | str) -> bool:
    """True when an input is read as batch requests (`custom_id`, `method`, `url`, `body`)."""
    return str(path).lower().endswith(REQUESTS_SUFFIX)


def is_jsonl_output(path: Path | str) -> bool:
    """True when an output is written in the batch output format, one JSON line per row."""
    return str(path).endswith(".jsonl")


def output_stem(name: str) -> str:
    """An output's file name without its format suffix: the stem its siblings are named after."""
    for suffix in OUTPUT_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def sibling(output: Path, suffix: str) -> Path:
    """A file beside the output, named after it: `sibling(x.jsonl, ".usage.parquet")`."""
    return output.with_name(output_stem(output.name) + suffix)


def usage_path(output: Path) -> Path:
    """The per-model usage totals beside the output (`x.usage.parquet`, whatever the format)."""
    return sibling(output, ".usage.parquet")
