"""`batchrun cache stats PATH` and `batchrun cache prune PATH`: what a shared cache holds, kept small."""

from __future__ import annotations

import re
import time
from pathlib import Path

from batchrun.errors import UsageError
from batchrun.journal.cache import Cache, CacheStats
from batchrun.running.summary import duration

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_SIZES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '45s' or plain seconds; exit 2 otherwise."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not found:
        raise UsageError(f"--older-than {text!r}: give an age such as 30d, 12h, 90m or 45s")
    return float(found[1]) * _UNITS[found[2] or "s"]


def parse_size(text: str) -> int:
    """'500MB', '1GB', '64MiB' or plain bytes; exit 2 otherwise."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", text.lower())
    if not found:
        raise UsageError(f"--max-size {text!r}: give a size such as 500MB, 1GB or 64MiB")
    return int(float(found[1]) * _SIZES[found[2] or ""])


def stats(path: Path, now: float | None = None) -> str:
    """A few lines about the cache at `path`."""
    with Cache(path, create=False) as cache:
        return render_stats(cache.stats(), time.time() if now is None else now)


def prune(path: Path, older_than: str | None, max_size: str | None) -> str:
    """Drop old or least recently used answers; a line saying what is left."""
    if older_than is None and max_size is None:
        raise UsageError("cache prune: give --older-than AGE, --max-size SIZE, or both")
    age = parse_age(older_than) if older_than is not None else None
    size = parse_size(max_size) if max_size is not None else None
    with Cache(path, create=False) as cache:
        dropped = cache.prune(age, size)
        left = cache.stats()
    return (f"{path}: {dropped:,} answers dropped, {left.answers:,} kept "
            f"({_bytes(left.answer_bytes)} of answers, {_bytes(left.bytes_on_disk)} on disk)")


def render_stats(s: CacheStats, now: float) -> str:
    """The stats as a person reads them."""
    lines = [f"{s.path}: {s.answers:,} answers, {_bytes(s.answer_bytes)} of text, "
             f"{_bytes(s.bytes_on_disk)} on disk"]
    if s.oldest is not None and s.newest is not None:
        lines.append(f"  oldest    {duration(now - s.oldest)} ago")
        lines.append(f"  newest    {duration(now - s.newest)} ago")
    for model, count in s.models[:10]:
        lines.append(f"  model     {model}: {count:,}")
    return "\n".join(lines)


def _bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
