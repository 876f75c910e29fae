"""How durations read everywhere (plan, progress, summary, status): one format, one home."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """A compact duration: '4.2s', '42s', '2m05s', '3h07m'; '?' when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
