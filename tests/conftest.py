"""Shared fixtures: a clean environment and scripted simulators on loopback (the tests' library of
helpers is `tests/helpers.py`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from batchrun.sim import SimConfig, SimulatorHandle, SimulatorThread

from .helpers import KEY_VARS


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real key from the developer's shell reaches a test."""
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sim() -> Iterator[Callable[..., SimulatorHandle]]:
    """Start simulators (``sim(rpm=600, latency=0.01)``); all are stopped after the test."""
    threads: list[SimulatorThread] = []

    def start(**config: Any) -> SimulatorHandle:
        thread = SimulatorThread(SimConfig(**config))
        handle = thread.__enter__()
        threads.append(thread)
        return handle

    yield start
    for thread in threads:
        thread.__exit__(None, None, None)


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One local Ray for the whole test session (its start takes seconds); CLI runs join it.

    Two CPUs, as on this machine: the sender actors ask for a quarter of one each.
    """
    ray = pytest.importorskip("ray", reason="the Ray engine's tests need pip install '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
