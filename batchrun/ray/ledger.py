"""The journal of a Ray run: one actor on the driver's node owns it; workers group-commit to it.

    ledger = Ledger(path)                        # inside the ledger actor
    commits = RemoteCommit(actor, stats)         # inside each sender actor
    await commits.commit(outcome)                # returns once the answer is durable

Why an actor and not the workers themselves: SQLite wants one writer, and the journal belongs
beside the output on the driver's disk, where `batchrun status`, a resume and the local engine
find it. Why not the driver: a `batchrun.ray.process` dataset runs lazily, when its user
consumes it, with no driver loop of ours. So the actor is the one writer for the whole cluster,
pinned to the driver's node; it writes the same journal as the local engine (`journal.Journal`
with its `GroupCommit`), so a run started on Ray can be finished by the local engine and back.

Exactly once: a worker's answer is in a committed transaction before the worker counts it or
sends that coroutine's next request. Each worker sends one commit call at a time, carrying every
answer that came in meanwhile, and the actor commits answers of all workers that arrive together
in one transaction. A worker that dies loses only what was in flight; its block is redone by Ray
Data, and `lookup` hands the restarted worker every answer already committed, so those are not
sent again.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from batchrun.errors import BatchrunError
from batchrun.journal.cache import Cache
from batchrun.journal.database import RESULT_COLUMNS, GroupCommit, Journal
from batchrun.journal.readback import UsageRow
from batchrun.protocol.outcome import Outcome
from batchrun.running.rows import from_cache
from batchrun.running.stats import Counts, Stats

log = logging.getLogger("batchrun")

FLUSH_EVERY = 0.1  # seconds: the longest a buffered answer waits for its commit
_SELECT = ", ".join(RESULT_COLUMNS)


class Ledger:
    """The ledger actor: the run's journal, its group commit, and the counters of every worker."""

    def __init__(self, path: str | None, track: bool = False, cache: str | None = None,
                 pooled: bool = False) -> None:
        """`pooled`: a run with several endpoints, whose workers keep each answer in the cache
        under the key of the endpoint that gave it (`keep_in_cache`), not the journal's."""
        self._seen: set[bytes] | None = set() if track else None  # keys of a dataset output
        self._tmp: str | None = None
        if path is None:  # a dataset without a journal of its own: one for the actor's life
            self._tmp = tempfile.mkdtemp(prefix="batchrun-ray-")
            atexit.register(shutil.rmtree, self._tmp, True)  # Ray ends an unused actor's process
            path = str(Path(self._tmp) / "dataset.journal.sqlite")
        self.path = Path(path)
        self._journal = Journal(self.path)
        # The shared cache (--cache): what the workers send is copied into it as it is committed
        # here, and a request it holds is an answer the workers need not send.
        self._cache = Cache(Path(cache)) if cache is not None else None
        if self._cache is not None and not pooled:
            self._journal.attach_cache(self._cache)
        # Lookups by key while the run goes: `log` indexed by key (a fold drops the index again),
        # read through a connection of their own.
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._reader.execute("PRAGMA busy_timeout=5000")
        self._reader.execute("CREATE INDEX IF NOT EXISTS log_key ON log (key)")
        self._commits = GroupCommit(self._journal, FLUSH_EVERY, self._committed)
        self._flusher: asyncio.Task[None] | None = None
        self._totals = Counts()  # what every worker's sending did, and the answers committed
        self._parts: dict[str, Counts] = {}  # several endpoints: what each one's sending did
        self._closed = False
        self._pooled = pooled

    async def lookup(self, keys: Sequence[bytes]) -> dict[bytes, tuple[Any, ...]]:
        """The committed results of `keys` (an earlier run's, or this run's), as Outcome tuples."""
        found: dict[bytes, tuple[Any, ...]] = {}
        unique = list(dict.fromkeys(keys))
        if self._seen is not None:
            self._seen.update(unique)
        for start in range(0, len(unique), 900):
            chunk = unique[start:start + 900]
            marks = ",".join("?" * len(chunk))
            for table, order in (("results", ""), ("log", " ORDER BY seq")):  # log: the newest
                for row in self._reader.execute(
                    f"SELECT {_SELECT} FROM {table} WHERE key IN ({marks}){order}", chunk
                ):
                    found[row[0]] = tuple(row)
        missing = [key for key in unique if key not in found]
        if self._cache is not None and missing:
            now = time.time()
            for key, hit in self._cache.lookup(missing).items():
                found[key] = tuple(from_cache(key, hit, 0.0, now))
        return found

    async def commit(self, outcomes: Sequence[tuple[Any, ...]], counted: Counts,
                     parts: Mapping[str, Counts] | None = None) -> None:
        """Make `outcomes` durable (one transaction with whatever else arrived); add the counters
        (`parts`: each endpoint's, with several)."""
        self._totals = self._totals.plus(counted)
        for name, grown in (parts or {}).items():
            self._parts[name] = self._parts.get(name, Counts()).plus(grown)
        if not outcomes:
            return
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._commits.run())
        for outcome in outcomes[:-1]:
            self._journal.record(Outcome(*outcome))
        await self._commits.commit(Outcome(*outcomes[-1]))

    def keep_in_cache(self, answers: Sequence[tuple[Any, ...]]) -> None:
        """Keep answers in the shared cache, each under the key given (several endpoints: the
        key of the endpoint that gave it); a cache that cannot be written costs them only."""
        if self._cache is None or self._closed:
            return
        try:
            self._cache.store(Outcome(*answer) for answer in answers)
        except BatchrunError as exc:
            log.warning("answers not kept in the cache: %s", exc.message)

    def _committed(self, n: int) -> None:
        self._totals.finished += n

    async def usage(self) -> list[UsageRow]:
        """Per-model usage of every request the workers looked up (a dataset output's sidecar;
        per endpoint and model with several): each result once, a request sent twice (by two
        blocks at once) twice, as it was billed."""
        self._commits.flush()
        db = self._reader
        db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (key BLOB PRIMARY KEY) WITHOUT ROWID")
        db.execute("DELETE FROM temp.seen")
        db.executemany("INSERT OR IGNORE INTO temp.seen VALUES (?)",
                       ((key,) for key in self._seen or ()))
        by = "endpoint" if self._pooled else "NULL"  # several endpoints: per endpoint and model
        return [UsageRow(endpoint, model, ok or 0, err or 0, attempts or 0, pt or 0, ct or 0,
                         tt or 0, *details)
                for endpoint, model, ok, err, attempts, pt, ct, tt, *details in db.execute(
                    f"""SELECT {by}, COALESCE(model, ''), SUM(status = 'ok'),
                         SUM(status = 'error'), SUM(attempts), SUM(prompt_tokens),
                         SUM(completion_tokens), SUM(total_tokens), SUM(cost_usd),
                         SUM(cached_tokens), SUM(reasoning_tokens), SUM(provider_cost)
                       FROM all_results JOIN temp.seen USING (key)
                       GROUP BY 1, 2 ORDER BY 1, 2""")]

    async def totals(self) -> Counts:
        """The counters of every worker so far, and the answers committed."""
        return self._totals.counts()

    async def parts(self) -> dict[str, Counts]:
        """Each endpoint's counters so far, summed over the workers (several endpoints)."""
        return dict(self._parts)

    async def close(self) -> Counts:
        """Commit what is buffered and close the journal; returns the final counters."""
        if not self._closed:
            self._closed = True
            if self._flusher is not None:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._flusher
            self._commits.flush()
            self._reader.close()
            self._journal.close()
            if self._cache is not None:
                self._cache.close()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
        return self._totals.counts()


class RemoteCommit:
    """A worker's side of the group commit: one commit call in flight, answers gathered meanwhile."""

    def __init__(self, ledger: Any, stats: Stats) -> None:
        self._ledger = ledger
        self._stats = stats
        self._reported = Counts()
        # Several endpoints: each one's own counters in this worker, reported beside the whole's.
        self.parts: dict[str, Stats] = {}
        self._parts_reported: dict[str, Counts] = {}
        self._buffer: list[tuple[Any, ...]] = []
        self._next: asyncio.Future[None] | None = None  # resolved when the buffer is durable
        self._task: asyncio.Task[None] | None = None

    async def commit(self, outcome: Outcome) -> None:
        """Return once `outcome` is committed to the run's journal."""
        self._buffer.append(tuple(outcome))
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._send())
        await asyncio.shield(self._next)

    async def _send(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer, []
            done, self._next = self._next, None
            try:
                await self._ledger.commit.remote(batch, self._counted(), self._grown())
            except Exception as exc:  # the ledger is gone (the driver died): tell the waiters
                if done is not None and not done.done():
                    done.set_exception(exc)
                return
            if done is not None and not done.done():
                done.set_result(None)

    def _grown(self) -> dict[str, Counts] | None:
        """What each endpoint's counters grew by since the last commit call (None: one
        endpoint)."""
        if not self.parts:
            return None
        grown = {}
        for name, stats in self.parts.items():
            now = stats.counts()
            grown[name] = now.minus(self._parts_reported.get(name, Counts()))
            self._parts_reported[name] = now
        return grown

    def _counted(self) -> Counts:
        """What this worker's counters grew by since the last commit call."""
        now = self._stats.counts()
        delta, self._reported = now.minus(self._reported), now
        return delta
