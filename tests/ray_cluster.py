"""A two-node Ray cluster on this machine, started the way a cluster's users start one.

    ray start --head --num-cpus=1 --block ...             # the head: Ray's GCS, a raylet, a CPU
    ray start --address=HEAD --num-cpus=1 --block ...     # a second node, with a CPU of its own

Runs join it with `--ray-address` as they would join any cluster. Each `ray start --block` stays
in the foreground and stops its own node's processes when it is terminated, so the cluster is
taken down by signalling the two processes started here: `ray stop` would stop every Ray on the
machine, other people's too. The cluster keeps its files in a temporary folder of its own, where
`ray start` also leaves its address, so a `ray.init()` elsewhere on the machine never joins it.

Used by the tests' session fixture (`ray_address` in conftest: `joined_cluster`, below) and by
`benchmarks/ray.py --cluster`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

STARTED = "Ray runtime started"  # what `ray start` prints once its node is up
START_TIMEOUT = 120.0  # seconds for one node to start on a busy shared machine
STOP_TIMEOUT = 30.0  # seconds for a node to stop its processes after SIGINT
DRAIN_TIMEOUT = 45.0  # seconds after SIGTERM: a node drains for up to 30 s before it stops
AUTH_MODE = "disabled"  # a loopback test cluster; see docs/ray.md for joining one with a token
OBJECT_STORE = 256 * 1024 * 1024  # bytes per node: the tests move kilobytes, the machine is shared


@dataclass(frozen=True)
class RayCluster:
    """A running cluster: its address for `--ray-address`, and its nodes' start-up times."""

    address: str
    temp_dir: Path
    started_in: tuple[float, ...]  # seconds each `ray start` took, the head's first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_start(args: list[str], log: Path, up: Path,
               env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], float]:
    """One node: `ray start ARGS --block`; returns once `up` says it is up."""
    began = time.monotonic()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", *args, "--block"],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Ray turns token authentication on for a head when a token is in ~/.ray, which any
            # local Ray on this shared machine may have left; then a second node or a driver
            # must be told the mode (RAY_AUTH_MODE). The mode is set: `env`'s, else AUTH_MODE.
            env={"RAY_AUTH_MODE": AUTH_MODE, **env, "RAY_USAGE_STATS_ENABLED": "0"},
        )
    deadline = began + START_TIMEOUT
    while not (up.exists() and STARTED in log.read_text(errors="replace")):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"ray start {args[0]} failed:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    return proc, time.monotonic() - began


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one `ray start --block` as Ctrl-C at its terminal does: it stops its node's processes
    as it exits. (On SIGTERM a node first drains for up to 30 s, waiting for work to move away,
    which Ray Data's long-lived actors never do; that is the fallback.)"""
    for sig, wait in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGTERM, DRAIN_TIMEOUT)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _node_args(temp_dir: Path) -> list[str]:
    # Ports that default to fixed numbers would clash between the two nodes and with any other
    # Ray on the machine: each gets a free one.
    return ["--num-cpus=1", "--num-gpus=0", f"--object-store-memory={OBJECT_STORE}",
            f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", "--disable-usage-stats"]


@contextlib.contextmanager
def ray_cluster(nodes: int = 2, env: Mapping[str, str] | None = None) -> Iterator[RayCluster]:
    """A head and `nodes - 1` more nodes, one CPU each, until the block ends; then stopped.
    `env`: the nodes' environment (default this one's), which their workers inherit."""
    env = os.environ if env is None else env
    # Short: Ray's socket paths under it must stay within the 107 bytes a Unix socket allows.
    temp_dir = Path(tempfile.mkdtemp(prefix="brray-", dir="/tmp"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        # Port 0: the head's GCS port is the system's choice. A port picked here and passed on
        # could be taken meanwhile, and gRPC servers share a port (SO_REUSEPORT): the second
        # node would then reach another Ray's GCS.
        known = temp_dir / "ray_current_cluster"  # where `ray start` leaves the address
        head, head_took = _ray_start(
            ["--head", "--port=0", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
             f"--dashboard-port={_free_port()}",  # Ray runs a headless one all the same
             *_node_args(temp_dir)], temp_dir / "head.log", known, env)
        started.append(head)
        took = [head_took]
        address = known.read_text().strip()
        for _ in range(nodes - 1):
            log = temp_dir / f"node-{len(started)}.log"
            node, node_took = _ray_start(
                [f"--address={address}", "--node-ip-address=127.0.0.1", *_node_args(temp_dir)],
                log, log, env)
            started.append(node)
            took.append(node_took)
        yield RayCluster(address, temp_dir, tuple(took))
    finally:
        for proc in reversed(started):  # the other nodes first: their raylets report to the head
            _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def joined_cluster() -> Iterator[str]:
    """A two-node cluster with this process joined to it as a driver (for the tests that use
    Ray's API themselves); yields its address."""
    import ray

    with ray_cluster() as cluster:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        try:
            import ray.data

            ray.data.DataContext.get_current().enable_progress_bars = False
            yield cluster.address
        finally:
            ray.shutdown()


def alive_nodes() -> set[str]:
    """The node ids of the cluster this process is joined to, alive ones only."""
    import ray

    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def run_workers(driver: int) -> dict[str, tuple[int, str]]:
    """The sender actors of the run driven by process `driver` that have leased starts, as its
    limiter actor knows them: actor id -> (process id, node id); empty before the run's start."""
    import ray

    from batchrun.ray.backend import NAMESPACE

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == NAMESPACE and a["name"].startswith(f"batchrun-limiter-{driver}-")]
    if not names:
        return {}
    try:
        workers: dict[str, tuple[int, str]] = ray.get(
            ray.get_actor(names[0], namespace=NAMESPACE).workers.remote())
    except (ValueError, ray.exceptions.RayActorError):  # the run ended meanwhile
        return {}
    return workers
