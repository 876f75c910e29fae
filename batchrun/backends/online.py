"""The online backend: every job is its own chat-completions request, under the run's limits."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..context import RunContext
from ..limiter import Limiter
from ..pending import Job
from ..pump import Pump
from ..send import Sender, new_session
from ..sender import JobSender


class OnlineBackend:
    """Workers send jobs through one limiter and one connection pool."""

    async def deliver(self, jobs: AsyncIterator[list[Job]], run: RunContext) -> None:
        """Send every job; answers are committed as they arrive."""
        config = run.config
        limiter = Limiter(config.rpm, config.tpm, config.concurrency)
        run.stopper.when_stopping(limiter.close)  # starts waiting on it go now, and see the stop
        run.stats.pace = lambda: (limiter.rpm, limiter.tpm, limiter.pauses)
        tls = run.base_url.startswith("https:")
        async with new_session(config.concurrency, tls=tls) as session:
            scrub = (run.key.reveal(),) if run.key else ()
            wire = Sender(session, run.base_url, run.key, config.timeout, scrub=scrub)
            sender = JobSender(config, wire, limiter, run.stats, run.stopper, run.price, run.emit)
            await Pump(run, sender.settle, config.concurrency).drain(jobs)
