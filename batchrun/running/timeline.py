"""Timeline: a once-a-second sample of a run's counters and pace, kept in its journal for the report.

The engine only counts (plain integer additions it does anyway for the progress display); a task
of its own reads the counters once a second and appends what changed to the journal's `timeline`
table in a tiny transaction of its own. Nothing is added to the path of a request. A run with
several endpoints also keeps one sample per endpoint per interval (`Sample.endpoint`), from each
endpoint's own counters (`Stats.endpoints`): its pace, 429s and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any

from batchrun.errors import BatchrunError
from batchrun.journal.database import Sample
from batchrun.running.stats import Counts

if TYPE_CHECKING:
    from batchrun.journal.database import Journal
    from batchrun.running.stats import Stats

log = logging.getLogger("batchrun")

SAMPLE_EVERY = 1.0  # seconds between samples
# The counters whose change over an interval is a sample's figure: those of `Counts` the
# timeline table has a column for (its columns predate `finished` and `cost_usd`).
SAMPLED = tuple(name for name in Sample._fields if name in {f.name for f in fields(Counts)})
_SAMPLED_AT = {name: Sample._fields.index(name) for name in SAMPLED}  # their places in a Sample


class Sampler:
    """Turns a run's cumulative counters into per-interval samples."""

    def __init__(self, stats: Stats, rpm_limit: float | None, tpm_limit: float | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.stats = stats
        self.limits = (rpm_limit, tpm_limit)
        self._clock = clock
        self._last = Counts()
        self._pauses = 0
        self._at = stats.started
        self._endpoints: dict[str, Sampler] = {}  # one per endpoint of a pool, by name

    def sample(self) -> Sample | None:
        """The interval since the last sample; None when it is empty (no time, nothing done)."""
        now, stats = self._clock(), self.stats
        counts = stats.counts()
        rpm, tpm, pauses = stats.pace()
        span = now - self._at
        if span <= 0:
            return None
        sample = Sample(t=now, span=span, run=stats.started, in_flight=stats.in_flight,
                        pauses=pauses - self._pauses, rpm=rpm, tpm=tpm, rpm_limit=self.limits[0],
                        tpm_limit=self.limits[1], **_sampled(counts.minus(self._last)))
        self._last, self._pauses, self._at = counts, pauses, now
        return sample

    async def keep(self, journal: Journal, every: float = SAMPLE_EVERY) -> None:
        """Append a sample to the journal every `every` s until cancelled, then a last one."""
        try:
            while True:
                await asyncio.sleep(every)
                self._append(journal)
        finally:
            self._append(journal)

    def samples(self) -> list[Sample]:
        """The run's sample of the interval, then each endpoint's (none when it is empty)."""
        sample = self.sample()
        if sample is None:
            return []
        samples = [sample]
        for name, stats in self.stats.endpoints.items():
            sampler = self._endpoints.get(name)
            if sampler is None:
                sampler = self._endpoints[name] = Sampler(stats, *stats.limits, clock=self._clock)
            part = sampler.sample()
            if part is not None:
                samples.append(part._replace(run=sample.run, endpoint=name))
        return samples

    def _append(self, journal: Journal) -> None:
        samples = self.samples()
        if not samples:
            return
        with contextlib.suppress(BatchrunError):  # a full disk stops the run through its commits
            journal.append_timeline(samples)


def coarsen(samples: Sequence[Sample], most: int) -> list[Sample]:
    """At most `most` samples: neighbours merged (counts summed, pace and in-flight as at the end)."""
    if len(samples) <= most:
        return list(samples)
    size = -(-len(samples) // most)  # ceil: every bucket but the last holds `size` samples
    merged = []
    for start in range(0, len(samples), size):
        group = samples[start:start + size]
        columns = list(zip(*group, strict=True))
        sums = {name: sum(columns[at]) for name, at in _SAMPLED_AT.items()}
        merged.append(group[-1]._replace(span=sum(s.span for s in group),
                                         pauses=sum(s.pauses for s in group), **sums))
    return merged


def _sampled(counts: Counts) -> dict[str, Any]:
    """The counters a sample has a column for, by name."""
    return {name: value for name, value in asdict(counts).items() if name in SAMPLED}
