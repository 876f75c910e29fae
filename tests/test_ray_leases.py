"""Leased starts inside a sender actor, against the real limiter actor on the session's Ray.

A worker whose event loop was busy would start its leased requests late. Its slots are gone by
then: sent late, they would land in slots the limiter gave other workers, or together with its
next lease's. So a late start is leased again, and no second or tenth of one holds a burst.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import batchrun
from batchrun.limiter import SAFETY
from batchrun.ray.limits import LeasedLimits, LimiterCore
from batchrun.stopping import Stopper

RPM = 6000  # 100 a second: the provider refuses the 101st request of any one second


def most_in_one_second(times: list[float]) -> int:
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_a_worker_that_ran_late_does_not_burst_when_its_next_lease_comes(
        tmp_path: Path, ray_address: str) -> None:
    import ray

    config = batchrun.build_config(None, {"input": str(tmp_path / "in.csv"),
                                          "output": str(tmp_path / "out.parquet"),
                                          "model": "m", "rpm": RPM})
    actor = ray.remote(LimiterCore).options(num_cpus=0).remote(config.rpm, config.tpm)

    async def starts() -> list[float]:
        limits = LeasedLimits(actor, config, Stopper(lambda name, data: None), "worker")
        fired: list[float] = []

        async def one() -> None:
            await limits.wait_turn(10)
            fired.append(time.time())
            if len(fired) == 5:
                time.sleep(0.25)  # the worker's loop is busy: the starts due meanwhile are late

        await asyncio.gather(*(one() for _ in range(250)))
        return fired

    try:
        fired = asyncio.run(starts())
    finally:
        ray.kill(actor)
    assert len(fired) == 250
    # Paced a little under the limit, late starts and all: no second holds more than it allows.
    assert most_in_one_second(fired) <= RPM / 60
    # And the lateness costs about what it lasted (the pace alone takes 2.6 s): the slots that
    # went by meanwhile, not those of every later lease.
    assert fired[-1] - fired[0] < 249 / (RPM / 60 * SAFETY) + 0.25 + 0.5


def test_a_worker_that_ran_late_does_not_send_in_the_other_workers_slots(
        tmp_path: Path, ray_address: str) -> None:
    # Two workers, each on its own process's loop (threads here), leasing from one limiter
    # actor: their leases are runs of consecutive slots, taken in turns. One worker's loop is
    # busy for 0.25 s: the starts whose slots went by meanwhile must not go in the other's.
    import threading

    import ray

    config = batchrun.build_config(None, {"input": str(tmp_path / "in.csv"),
                                          "output": str(tmp_path / "out.parquet"),
                                          "model": "m", "rpm": RPM, "workers": 2})
    actor = ray.remote(LimiterCore).options(num_cpus=0).remote(config.rpm, config.tpm)
    fired: dict[str, list[float]] = {"busy": [], "steady": []}
    leases: dict[str, LeasedLimits] = {}

    async def starts(worker: str) -> None:
        limits = leases[worker] = LeasedLimits(actor, config, Stopper(lambda n, d: None), worker)

        async def one() -> None:
            await limits.wait_turn(10)
            fired[worker].append(time.time())
            if worker == "busy" and len(fired[worker]) in (40, 120):
                time.sleep(0.25)  # a busy loop, twice: the starts due meanwhile are late

        await asyncio.gather(*(one() for _ in range(200)))

    threads = [threading.Thread(target=asyncio.run, args=(starts(w),), daemon=True) for w in fired]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        ray.kill(actor)
    both = fired["busy"] + fired["steady"]
    assert len(both) == 400, {w: len(f) for w, f in fired.items()}
    assert most_in_one_second(both) <= RPM / 60
    # Nor bunched within the second: no tenth of a second holds much more than its tenth.
    assert most_in(both, 0.1) <= RPM / 600 + 3, most_in(both, 0.1)
    assert leases["busy"].forfeited >= 10  # the slots that went by while its loop was busy


def most_in(times: list[float], span: float) -> int:
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= span:
            first += 1
        most = max(most, last - first + 1)
    return most
