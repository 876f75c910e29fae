"""The in-process harness: the simulator for an `async with` block, on its own thread, or until a signal."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from batchrun.sim.config import SimConfig, Step
from batchrun.sim.server import Simulator
from batchrun.sim.stats import SimStats


@asynccontextmanager
async def running(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Simulator]:
    """A started Simulator for the length of the block."""
    simulator = Simulator(config or SimConfig())
    await simulator.start(host, port)
    try:
        yield simulator
    finally:
        await simulator.stop()


class SimulatorHandle:
    """A thread-safe view of a Simulator running on another thread's event loop."""

    def __init__(self, simulator: Simulator, loop: asyncio.AbstractEventLoop) -> None:
        self.simulator = simulator
        self.base_url = simulator.base_url
        self._loop = loop

    @property
    def stats(self) -> SimStats:
        """The live counters (read-only from this thread)."""
        return self.simulator.stats

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        async def call() -> None:
            fn(*args, **kwargs)

        # Wait for it, so a request sent right after script() already sees the script.
        asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def script(self, *steps: Step) -> None:
        """Queue steps for the next valid chat requests, in arrival order."""
        self._call(self.simulator.script, *steps)

    def rule(self, contains: str, *steps: Step, times: int | None = None) -> None:
        """Steps for requests whose last user text contains `contains` (last step repeats)."""
        self._call(self.simulator.rule, contains, *steps, times=times)

    def balance(self, key: str = "") -> float | None:
        """USD left on `key`'s credits (None: unlimited)."""
        result: list[float | None] = []
        self._call(lambda: result.append(self.simulator.balance(key)))
        return result[0]

    def reset_stats(self) -> None:
        """Zero the counters (a key's credits stay spent)."""
        self._call(self.simulator.reset_stats)


class SimulatorThread:
    """Runs a Simulator on its own event loop in a daemon thread, as a context manager."""

    def __init__(self, config: SimConfig | None = None, port: int = 0) -> None:
        self._config, self._port = config or SimConfig(), port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._simulator: Simulator | None = None

    def __enter__(self) -> SimulatorHandle:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="batchrun-simulator", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        self._simulator = Simulator(self._config)
        try:
            asyncio.run_coroutine_threadsafe(self._simulator.start(port=self._port), loop).result(timeout=10)
        except BaseException:
            self._shutdown()
            raise
        return SimulatorHandle(self._simulator, loop)

    def __exit__(self, *exc_info: object) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        loop, thread, simulator = self._loop, self._thread, self._simulator
        if loop is None or thread is None:
            return
        self._loop = self._thread = self._simulator = None

        async def stop() -> None:
            if simulator is not None:
                await simulator.stop()
            # aiohttp may leave connection tasks winding down; finish them before the loop closes.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run a simulator until SIGINT or SIGTERM, announcing its URL on stdout."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with running(config, host, port) as simulator:
            # One flushed line, so a parent process can learn a port chosen by the OS.
            print(f"batchrun simulator listening on {simulator.base_url}", flush=True)
            await stop.wait()

    asyncio.run(main())
