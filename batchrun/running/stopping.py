"""Stopping a run: the first reason wins, signals ask politely and then insist, waits end early.

A job-wide failure, a budget or a signal calls `stop(error)`: nothing new starts, requests in
flight finish (within GRACE_SECONDS after a signal), and unsent rows stay pending for the next
run. A second signal, or the grace timer, cancels what is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

from batchrun.errors import BatchrunError, Interrupted

GRACE_SECONDS = 10.0  # after a signal, how long requests in flight may finish

Emit = Callable[[str, dict[str, Any]], None]


class Stopper:
    """The run's one stop switch, shared by every part that may start work."""

    def __init__(self, emit: Emit) -> None:
        self.error: BatchrunError | None = None
        self._emit = emit
        self._event = asyncio.Event()
        self._on_stop: list[Callable[[], object]] = []  # run once, at the first stop
        self._on_cancel: list[Callable[[], object]] = []  # run when waiting is over

    @property
    def stopping(self) -> bool:
        """Has a stop been asked for? Nothing new may start once it has."""
        return self._event.is_set()

    def stop(self, error: BatchrunError) -> None:
        """Stop starting work; the first reason is the one reported."""
        if self.error is None:
            self.error = error
            self._emit("stop", {"reason": error.message})
        if self._event.is_set():
            return
        self._event.set()
        for hook in self._on_stop:
            hook()

    def when_stopping(self, hook: Callable[[], object]) -> None:
        """Call `hook` at the first stop (e.g. wake workers waiting on the limiter)."""
        self._on_stop.append(hook)
        if self._event.is_set():
            hook()

    def when_cancelled(self, hook: Callable[[], object]) -> None:
        """Call `hook` when work in flight must end now (second signal, or grace over)."""
        self._on_cancel.append(hook)

    async def sleep(self, seconds: float) -> None:
        """Sleep, or less if the run stops meanwhile."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout=seconds)

    async def wait(self) -> None:
        """Return once the run is stopping."""
        await self._event.wait()

    def cancel(self) -> None:
        """End the work in flight now."""
        for hook in self._on_cancel:
            hook()

    @contextlib.contextmanager
    def signals(self, grace: float = GRACE_SECONDS) -> Iterator[None]:
        """SIGINT/SIGTERM stop the run (exit 130); a second one, or `grace` seconds, cancel."""
        loop = asyncio.get_running_loop()
        installed = []
        hits = 0

        def on_signal(signame: str) -> None:
            nonlocal hits
            hits += 1
            if hits == 1:
                self.stop(Interrupted(
                    f"interrupted by {signame}; finished rows are saved: run the same command "
                    "again to resume"
                ))
                loop.call_later(grace, self.cancel)
            else:
                self.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig.name)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (e.g. inside a notebook's loop): no handlers
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
