"""Backends: how pending jobs become outcomes. One small protocol, chosen in one place.

    online   each job is its own request, paced by the limiter (`backends.online`)
    batch    jobs go out as JSONL files in the provider's Batch API at half price (`backends.batch`)
    ray      the same sending core in Ray Data actors, one limit for the cluster (`batchrun.ray`)

Every backend reads the same plan and commits to the same journal, so an output started by one
can be finished by another without paying twice.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import Protocol

from ..config import RunConfig
from ..context import RunContext
from ..errors import UsageError
from ..pending import Job


class Backend(Protocol):
    """Turns the run's pending jobs into committed outcomes."""

    async def deliver(self, jobs: AsyncIterator[list[Job]], run: RunContext) -> None:
        """Settle `jobs` (or as many as the run allows before it stops) into `run.journal`."""
        ...


def choose_backend(config: RunConfig) -> Backend:
    """The backend a run's config asks for."""
    if config.backend == "batch":
        if config.engine == "ray":
            raise UsageError("--backend batch runs on the provider's Batch API, --engine ray sends "
                             "online from a Ray cluster: choose one")
        from .batch import BatchBackend

        return BatchBackend()
    if config.engine == "ray":
        return _ray_backend()
    from .online import OnlineBackend

    return OnlineBackend()


def _ray_backend() -> Backend:
    """The Ray engine, or exit 2 with how to install it (Ray is an optional extra). Only whether
    Ray is there is asked here: importing Ray and Ray Data (~1.5 s) overlaps the run's start."""
    from ..ray import NO_RAY

    if importlib.util.find_spec("ray") is None:
        raise UsageError(NO_RAY)
    from ..ray.backend import RayBackend

    return RayBackend()
