"""Earlier answers under the other kind of key: a run with several endpoints after one with one
endpoint on the same output, or the other way round, takes them instead of paying twice.

A run with one endpoint names a request by its model and base URL too (`protocol.render`); a run
with several (`[[endpoints]]`, `--fallback-model`) names it by its messages and parameters alone.
Before a run sends a row, it asks the journal for the row's request under the other kind of key:

    pooled after one     each of its endpoints' own key (its model and base URL), in try order
    one after pooled     the pooled key, taken only where the endpoint that answered it had this
                         run's model and base URL (`POOL_META`: what pooled runs had)

A result found there (an answer, or an error a resume keeps) is recorded again under the row's
key, and the row is not sent.

    bridge = Bridge.of(config, journal)      # None: nothing earlier of the other kind
    found = bridge.lookup(requests)          # this run's key -> the earlier Outcome, re-keyed
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batchrun.journal.database import Journal, resend
from batchrun.protocol.outcome import Outcome
from batchrun.protocol.render import Request, alone_key, pooled_key
from batchrun.settings.config import RunConfig
from batchrun.settings.endpoints import in_try_order

POOL_META = "pool_endpoints"  # journal meta: each pooled run's endpoints, name -> [model, url]
_CHUNK = 900  # keys bound to one statement (SQLite before 3.32 allows 999)
_COLUMNS = ", ".join(Outcome._fields)


def remember_endpoints(config: RunConfig, journal: Journal) -> None:
    """A pooled run notes its endpoints' models and base URLs, for a later run with one."""
    if not config.endpoints:
        return
    known = journal.meta().get(POOL_META) or {}
    known.update({e.name: [e.model, e.base_url] for e in config.endpoints})
    journal.set_meta(**{POOL_META: known})


class Bridge:
    """Looks a run's requests up under the keys the other kind of run gave them."""

    def __init__(self, journal: Journal, retry_failed: bool,
                 names: list[tuple[str, str | None, str | None]],
                 accepted: frozenset[str] | None = None) -> None:
        self._journal = journal
        self._retry_failed = retry_failed
        # (base URL, model, the endpoint's name as the output shows it) of each endpoint
        self._names = names
        self._accepted = accepted  # one after pooled: the endpoints whose answers count

    @classmethod
    def of(cls, config: RunConfig, journal: Journal) -> Bridge | None:
        """The bridge a run needs, or None when the journal holds nothing of the other kind."""
        if config.fresh or not journal.db.execute(
                "SELECT EXISTS (SELECT 1 FROM results)").fetchone()[0]:
            return None  # nothing earlier at all
        if config.endpoints:
            return cls(journal, config.retry_failed, [(e.base_url, e.model, e.name)
                                                      for e in in_try_order(config.endpoints)])
        known: dict[str, Any] = journal.meta().get(POOL_META) or {}
        same = frozenset(name for name, (model, url) in known.items()
                         if model == config.model and url == config.base_url)
        if not same:
            return None  # no pooled run on this output sent as this run does
        return cls(journal, config.retry_failed, [], same)

    def lookup(self, requests: Sequence[tuple[int, bytes, Request]]) -> dict[bytes, Outcome]:
        """Each request's earlier result under the other kind of key (the first endpoint in try
        order that has one), re-keyed to this run's key; rows a resume would send are left out."""
        other: dict[bytes, tuple[bytes, str | None]] = {}  # other key -> (this key, endpoint)
        for _, key, request in requests:
            if key != request.key:
                continue  # an occurrence key (no dedup): each kind of run numbers its own
            if self._accepted is not None:
                other[pooled_key(request.body)] = (key, None)
                continue
            for url, model, name in reversed(self._names):  # the first in order wins
                other[alone_key(request.body, url, model)] = (key, name)
        found: dict[bytes, Outcome] = {}
        for outcome in self._results(list(other)):
            if resend(outcome.status, outcome.error_kind, self._retry_failed):
                continue
            if self._accepted is not None and outcome.endpoint not in self._accepted:
                continue
            mine, name = other[outcome.key]
            if mine not in found or self._rank(name) < self._rank(found[mine].endpoint):
                found[mine] = outcome._replace(key=mine, endpoint=name)
        return found

    def _results(self, keys: list[bytes]) -> list[Outcome]:
        db = self._journal.db
        results: list[Outcome] = []
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            results.extend(Outcome(*row) for row in db.execute(
                f"SELECT {_COLUMNS} FROM results WHERE key IN ({marks})", chunk))
        return results

    def _rank(self, name: str | None) -> int:
        return next((i for i, (_, _, n) in enumerate(self._names) if n == name), 0)
