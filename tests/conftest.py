"""Shared fixtures: a clean environment and scripted simulators on loopback (the tests' library of
helpers is `tests/helpers.py`)."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrun.sim import SimConfig, SimulatorHandle, SimulatorThread

from .helpers import BUCKET, KEY_VARS, S3


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """The `ray` tests share the session's one Ray (`ray_address`): under xdist (`--dist
    loadgroup`) they all go to one worker, which starts it once.

    xdist's own hook, run inside this one, marks a grouped test's id with "@ray"; a pytest whose
    ids it cannot mark (9.2, pytest-xdist#1386) would start a Ray on every worker, so that fails.
    """
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))
    yield
    if getattr(config.option, "loadgroup", False):  # set on the workers of --dist loadgroup
        lost = [item.nodeid for item in items
                if item.get_closest_marker("ray") and not item.nodeid.endswith("@ray")]
        if lost:
            reason = (f"xdist did not group the Ray tests (pytest-xdist#1386 with this pytest?): "
                      f"{lost[0]} ...")
            # A worker's collection error reaches the terminal as xdist's bare INTERNALERROR:
            # the reason goes to the terminal's stderr first (pytest captures sys.stderr).
            print(reason, file=sys.__stderr__)
            raise pytest.UsageError(reason)


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


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """moto's S3 server on 127.0.0.1 (a free port), a bucket, and AWS variables pointing at it."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups for credentials
        "BATCHRUN_STATE_DIR": str(tmp_path / "state"),
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Servers in one process share moto's state: start each test from an empty store.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"),
                           timeout=10).close()
    fs = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    try:
        yield S3(fs, env, tmp_path / "state")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One two-node Ray cluster for the whole test session (`tests/ray_cluster.py`: its start
    takes seconds); CLI runs join it with --ray-address, and this process joins it as a driver."""
    pytest.importorskip("ray", reason="the Ray engine's tests need pip install '.[ray]'")
    from .ray_cluster import joined_cluster

    with joined_cluster() as address:
        yield address
