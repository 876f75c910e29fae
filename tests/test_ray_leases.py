"""Leased starts inside a sender actor, against the real limiter actor on the session's Ray.

A worker whose event loop was busy starts its leased requests late; it moves its later starts
with them. Its next lease is booked from now, so without care its new starts would go together
with the moved ones: a burst a provider's sliding window counts as too many.
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
    # And the lateness costs about what it lasted (the pace alone takes 2.6 s), not the slots
    # of every later lease (asked for on the moved schedule, they made it 4 s).
    assert fired[-1] - fired[0] < 249 / (RPM / 60 * SAFETY) + 0.25 + 0.5
