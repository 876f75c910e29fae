"""Earlier answers of a run with one endpoint, taken by a rerun with several (`[[endpoints]]`,
`--fallback-model`) on the same output, so that adding endpoints never pays twice.

A run with one endpoint names a request by its model and base URL too (`protocol.render`); a run
with several names it by its messages and parameters alone. Before a pooled run sends a row, it
asks the journal for the row's request as each of its endpoints would have named it alone; a
result found there (an answer, or an error a resume keeps) is recorded again under the row's
pooled key, with the endpoint it came from, and the row is not sent.

    bridge = Bridge.of(config, journal)      # None: a run with one endpoint, or nothing earlier
    found = bridge.lookup(requests)          # pooled key -> the earlier Outcome, re-keyed
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import orjson

from batchrun.journal.database import Journal, resend
from batchrun.protocol.outcome import Outcome
from batchrun.protocol.render import Request
from batchrun.settings.config import RunConfig

_CHUNK = 900  # keys bound to one statement (SQLite before 3.32 allows 999)
_COLUMNS = ", ".join(Outcome._fields)


class Bridge:
    """Looks a pooled run's requests up under the keys one endpoint alone gave them."""

    def __init__(self, config: RunConfig, journal: Journal) -> None:
        self._journal = journal
        self._retry_failed = config.retry_failed
        # (salt, model, name) of each endpoint, in the order a row tries them.
        pool = [e for e in config.endpoints if not e.fallback]
        self._endpoints = [(e.base_url.encode() + b"\n", e.model, e.name)
                           for e in (*pool, *(e for e in config.endpoints if e.fallback))]

    @classmethod
    def of(cls, config: RunConfig, journal: Journal) -> Bridge | None:
        """A bridge for a run with endpoints whose journal holds earlier results, else None."""
        if not config.endpoints or config.fresh:
            return None
        if not journal.db.execute("SELECT EXISTS (SELECT 1 FROM results)").fetchone()[0]:
            return None  # nothing earlier (a first run, or one whose results are all pooled)
        return cls(config, journal)

    def lookup(self, requests: Sequence[tuple[int, bytes, Request]]) -> dict[bytes, Outcome]:
        """Each request's earlier result under one endpoint's key (the first endpoint in try
        order that has one), re-keyed to the pooled key; rows a resume would send are left out."""
        alone: dict[bytes, tuple[bytes, str]] = {}  # one endpoint's key -> (pooled key, name)
        for _, key, request in requests:
            if key != request.key:
                continue  # an occurrence key (no dedup): a run alone numbered it its own way
            body = orjson.loads(request.body)
            for salt, model, name in reversed(self._endpoints):  # the first in order wins
                body["model"] = model
                raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
                alone[hashlib.blake2b(salt + raw, digest_size=16).digest()] = (key, name)
        found: dict[bytes, Outcome] = {}
        keys = list(alone)
        db = self._journal.db
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            for row in db.execute(f"SELECT {_COLUMNS} FROM results WHERE key IN ({marks})",
                                  chunk):
                outcome = Outcome(*row)
                if resend(outcome.status, outcome.error_kind, self._retry_failed):
                    continue
                pooled, name = alone[outcome.key]
                if pooled not in found or self._rank(name) < self._rank(found[pooled].endpoint):
                    found[pooled] = outcome._replace(key=pooled, endpoint=name)
        return found

    def _rank(self, name: str | None) -> int:
        return next(i for i, (_, _, n) in enumerate(self._endpoints) if n == name)
