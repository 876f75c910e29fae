"""The run's counters: `Counts` names them once; its copies, sums and differences cover each one."""

from __future__ import annotations

from dataclasses import astuple, fields

from batchrun.running.stats import Counts, Stats


def _numbered(start: int) -> dict[str, int]:
    return {f.name: start + i for i, f in enumerate(fields(Counts))}


def test_every_counter_is_read_added_and_set_by_its_own_name() -> None:
    stats = Stats(total_rows=5, to_send=4, in_flight=2, **_numbered(10))
    counts = stats.counts()
    assert type(counts) is Counts and counts == Counts(**_numbered(10))
    assert counts.plus(Counts(**_numbered(100))) == Counts(
        **{name: a + b for (name, a), b in zip(_numbered(10).items(), _numbered(100).values(),
                                               strict=True)})
    assert Counts(**_numbered(100)).minus(stats) == Counts(*[90] * len(fields(Counts)))
    stats.set_counts(Counts(**_numbered(1)))
    assert astuple(stats.counts()) == tuple(_numbered(1).values())
    assert (stats.total_rows, stats.to_send, stats.in_flight) == (5, 4, 2)  # not counters


def test_cost_stays_a_float_and_counts_stay_integers() -> None:
    total = Counts(sent=2, cost_usd=0.25).plus(Counts(sent=1, cost_usd=0.5))
    assert (total.sent, total.cost_usd) == (3, 0.75)
    assert isinstance(total.sent, int) and isinstance(total.cost_usd, float)
