"""The run's time series: per-interval deltas of its counters, kept in the journal, merged for charts."""

from __future__ import annotations

from pathlib import Path

import pytest

import batchrun
from batchrun.journal.database import Journal, Sample, journal_path
from batchrun.running.stats import Stats
from batchrun.running.timeline import Sampler, coarsen
from batchrun.sim import Step
from batchrun.views.progress import Reporter

from .helpers import prompts_csv


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_sample_holds_what_changed_since_the_last_one() -> None:
    stats = Stats(started=1000.0)
    stats.pace = lambda: (600.0, 50_000.0, 2)
    clock = _Clock(1001.0)
    sampler = Sampler(stats, rpm_limit=900.0, tpm_limit=None, clock=clock)
    stats.sent, stats.ok, stats.rate_limited, stats.prompt_tokens, stats.in_flight = 12, 9, 2, 300, 3
    first = sampler.sample()
    assert first is not None
    assert (first.t, first.span, first.run) == (1001.0, 1.0, 1000.0)
    assert (first.sent, first.ok, first.rate_limited, first.prompt_tokens) == (12, 9, 2, 300)
    assert (first.in_flight, first.pauses, first.rpm, first.tpm) == (3, 2, 600.0, 50_000.0)
    assert (first.rpm_limit, first.tpm_limit) == (900.0, None)

    clock.now = 1002.5
    stats.sent, stats.ok, stats.errors, stats.transient, stats.retries = 20, 15, 1, 4, 5
    second = sampler.sample()
    assert second is not None
    assert (second.span, second.sent, second.ok, second.errors) == (1.5, 8, 6, 1)
    assert (second.transient, second.retries, second.rate_limited, second.pauses) == (4, 5, 0, 0)
    assert sampler.sample() is None  # no time has passed: nothing to add


def test_coarsen_sums_counts_and_keeps_the_last_pace() -> None:
    samples = [Sample(t=float(i + 1), span=1.0, run=0.0, sent=i, ok=1, errors=0, retries=0,
                      rate_limited=i % 2, transient=0, prompt_tokens=10, completion_tokens=5,
                      in_flight=i, pauses=1 if i == 4 else 0, rpm=float(100 + i), tpm=None,
                      rpm_limit=120.0, tpm_limit=None) for i in range(10)]
    assert coarsen(samples, 10) == samples
    merged = coarsen(samples, 4)  # buckets of 3: 3 + 3 + 3 + 1
    assert [m.span for m in merged] == [3.0, 3.0, 3.0, 1.0]
    assert [m.sent for m in merged] == [0 + 1 + 2, 3 + 4 + 5, 6 + 7 + 8, 9]
    assert [m.t for m in merged] == [3.0, 6.0, 9.0, 10.0]
    assert [m.rpm for m in merged] == [102.0, 105.0, 108.0, 109.0]
    assert sum(m.pauses for m in merged) == 1 and sum(m.ok for m in merged) == 10
    assert sum(m.rate_limited for m in merged) == sum(s.rate_limited for s in samples)


def test_the_journal_keeps_samples_until_fresh(tmp_path: Path) -> None:
    path = tmp_path / "out.journal.sqlite"
    sample = Sample(1.0, 1.0, 0.5, 3, 2, 1, 0, 0, 0, 10, 4, 1, 0, 60.0, None, 60.0, None)
    journal = Journal(path)
    journal.append_timeline([sample, sample._replace(t=2.0)])
    journal.close()
    reader = Journal(path, readonly=True)
    assert reader.timeline() == [sample, sample._replace(t=2.0)]
    reader.close()
    journal = Journal(path, fresh=True)
    journal.discard_all()
    assert journal.timeline() == []
    journal.close()


@pytest.mark.slow
def test_a_runs_timeline_adds_up_to_its_totals(tmp_path: Path, sim) -> None:
    server = sim(latency=0.005)
    server.rule("number 3.", Step.status(429, "Rate limit reached", retry_after_ms=10), Step.ok())
    server.rule("number 4.", Step.status(502), Step.ok())
    src = prompts_csv(tmp_path / "in.csv", 120)
    out = tmp_path / "out.parquet"
    config = batchrun.build_config(None, {"input": str(src), "output": str(out), "rpm": 3000,
                                          "base_url": server.base_url, "model": "sim-1"})
    summary = batchrun.run(config, reporter=Reporter("off"))
    journal = Journal(journal_path(out), readonly=True)
    samples = journal.timeline()
    journal.close()
    assert len(samples) >= 2  # 120 rows at 50/s: more than two seconds
    assert sum(s.sent for s in samples) == summary.requests_sent == 122
    assert sum(s.ok for s in samples) == summary.rows_ok == 120
    assert sum(s.retries for s in samples) == summary.retries == 2
    assert sum(s.rate_limited for s in samples) == 1 and sum(s.transient for s in samples) == 1
    assert sum(s.prompt_tokens for s in samples) == summary.prompt_tokens
    assert sum(s.completion_tokens for s in samples) == summary.completion_tokens
    assert {s.rpm_limit for s in samples} == {3000.0}
    assert all(s.rpm is not None and s.rpm <= 3000.0 for s in samples)
    assert abs(sum(s.span for s in samples) - summary.seconds) < 0.5
