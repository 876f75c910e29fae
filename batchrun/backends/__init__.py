"""Backends: how pending jobs become outcomes. One small protocol, chosen in one place.

    online   each job is its own request, paced by the limiter (`backends.online`)
    batch    jobs go out as JSONL files in the provider's Batch API at half price (`backends.batch`)

Every backend reads the same plan and commits to the same journal, so an output started by one
can be finished by another without paying twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from ..config import RunConfig
from ..context import RunContext
from ..pending import Job


class Backend(Protocol):
    """Turns the run's pending jobs into committed outcomes."""

    async def deliver(self, jobs: AsyncIterator[list[Job]], run: RunContext) -> None:
        """Settle `jobs` (or as many as the run allows before it stops) into `run.journal`."""
        ...


def choose_backend(config: RunConfig) -> Backend:
    """The backend a run's config asks for."""
    if config.backend == "batch":
        from .batch import BatchBackend

        return BatchBackend()
    from .online import OnlineBackend

    return OnlineBackend()
