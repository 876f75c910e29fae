"""Backends: how pending jobs become outcomes. One small protocol, chosen in one place.

    online   each job is its own request, paced by the limiter (`backends.online`)
    pool     the same, on several endpoints at once, each under its own limits (`backends.pool`)
    batch    jobs go out as JSONL files in the provider's Batch API at half price (`backends.batch`)
    ray      the same sending core in Ray Data actors, one limit for the cluster (`batchrun.ray`)

Every backend reads the same plan and commits to the same journal, so an output started by one
can be finished by another without paying twice.
"""

from __future__ import annotations

from batchrun.errors import UsageError
from batchrun.running.execute import Backend
from batchrun.settings.config import RunConfig


def choose_backend(config: RunConfig) -> Backend:
    """The backend a run's config asks for."""
    if config.backend == "batch":
        if config.engine == "ray":
            raise UsageError("--backend batch runs on the provider's Batch API, --engine ray sends "
                             "online from a Ray cluster: choose one")
        if config.provider == "simulator" and not config.base_url:
            # Its in-process server ends with the run: a batch would never be collected, and each
            # run would submit a new one.
            raise UsageError("--backend batch cannot use the simulator preset's in-process server, "
                             "which ends with the run: start `batchrun simulate --port 8000` and "
                             "pass --base-url http://127.0.0.1:8000/v1, or use --backend online")
        from batchrun.backends.batch import BatchBackend

        return BatchBackend()
    if config.engine == "ray":  # with several endpoints too: one limiter actor per endpoint
        return _ray_backend()
    if config.endpoints:
        return _pool_backend()
    from batchrun.backends.online import OnlineBackend

    return OnlineBackend()


def _pool_backend() -> Backend:
    """Several endpoints, sent from this process."""
    from batchrun.backends.pool import PoolBackend

    return PoolBackend()


def _ray_backend() -> Backend:
    """The Ray engine, or exit 2 with how to install it (Ray is an optional extra). Only whether
    Ray is there is asked here: importing Ray and Ray Data (~1.5 s) overlaps the run's start."""
    from batchrun.ray.install import require_ray

    require_ray()
    from batchrun.ray.backend import RayBackend

    return RayBackend()
