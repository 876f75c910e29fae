"""Checks of one setting's value: each returns what is wrong ("must be ...") or None.

A complaint ends the line "--flag {complaint} (got value)" or "job.toml: [section] key
{complaint} (got value)" (`batchrun.settings.config`); the type was checked before.
"""

from __future__ import annotations

import math
from typing import Any

from batchrun.settings.setting import Check

TOOL_CHOICES = ("none", "auto", "required")
MAX_STOPS = 4  # stop sequences one request may carry (OpenAI's limit)


def in_range(lo: float, hi: float, *, lo_open: bool = False) -> Check:
    """lo <= v <= hi (lo < v with lo_open)."""

    def check(v: Any) -> str | None:
        ok = (lo < v if lo_open else lo <= v) and v <= hi and not math.isnan(v)
        return None if ok else f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}]"

    return check


def at_least(lo: float) -> Check:
    """v >= lo, and finite (an infinite price means nothing)."""

    def check(v: Any) -> str | None:
        if not v >= lo:
            return f"must be at least {lo:g}"
        return None if math.isfinite(v) else "must be a finite number"

    return check


def positive(v: Any) -> str | None:
    """v > 0 and finite: a limit of `inf` would be no limit, which is leaving the setting out."""
    if not v > 0:
        return "must be greater than 0"
    return None if math.isfinite(v) else "must be a finite number greater than 0"


def stops(v: Any) -> str | None:
    """One stop sequence, or a list of at most four non-empty ones."""
    if isinstance(v, str):
        return None
    if not all(isinstance(s, str) and s for s in v):
        return "must be non-empty strings"
    return None if len(v) <= MAX_STOPS else f"allows at most {MAX_STOPS} sequences"


def tools(v: Any) -> str | None:
    """A non-empty list of function tools (or a JSON file of one, loaded and checked later)."""
    if isinstance(v, str):
        return None  # a JSON file holding the list; loaded and checked in build_config
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


def tool_choice(v: Any) -> str | None:
    """none, auto, required, or one function by name."""
    if isinstance(v, str):
        return None if v in TOOL_CHOICES else f"must be one of {', '.join(TOOL_CHOICES)} or a table"
    function = v.get("function")
    if v.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
        return 'must be {type = "function", function = {name = "..."}}'
    return None


def known_encoding(name: str) -> str | None:
    """A text encoding Python knows."""
    import codecs

    try:
        codecs.lookup(name)
    except LookupError:
        return "is not a known text encoding (try utf-8, latin-1, cp1252)"
    return None
