"""`batchrun cancel OUTPUT`: cancel the output's live batches, keep what they answered.

It takes the output's lock (a run waiting on the batches must be stopped first), asks the provider
to cancel each live batch, waits for each to end (cancelling -> cancelled), then commits the lines
it answered. The rest go back to pending without using an attempt: the next run, with either
backend, sends them. What a run needs to judge and price the lines was stored in the journal when
it submitted them, so no job file is needed here.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from batchrun.backends.batch import (
    CLOCK_SLACK,
    META_OUTPUT,
    META_SUB,
    SETTINGS_META,
    gather,
    output_name,
    poll_delays,
    settle,
)
from batchrun.backends.batch_api import BatchApi, BatchInfo, new_session
from batchrun.backends.batch_collect import Rules
from batchrun.errors import UsageError
from batchrun.journal.batches import BatchBook, Submission
from batchrun.journal.database import Journal, OutputLock, journal_path
from batchrun.settings.config import RunConfig
from batchrun.settings.keys import resolve_key
from batchrun.settings.prices import Price

CANCEL_WAIT = 300.0  # seconds to wait for batches to end cancelling before leaving it to a run


def cancel_batches(output: Path, api_key_env: str | None, api_key_file: Path | None) -> str:
    """Cancel OUTPUT's live batches; lines saying what became of each."""
    path = journal_path(output)
    if not path.exists():
        raise UsageError(f"no run found for {output} (no journal at {path})")
    lock = OutputLock(output)
    lock.acquire()
    try:
        journal = Journal(journal_path(output))  # taking the lock may have moved it (former)
        try:
            book = BatchBook(journal)
            live = book.live()
            if not live:
                return f"{output}: no live Batch API batches; nothing to cancel"
            settings: dict[str, Any] = journal.meta().get(SETTINGS_META) or {}
            config = RunConfig(input=Path(), output=output, base_url=settings["base_url"],
                               provider=settings.get("provider"),
                               api_key_env=api_key_env or settings.get("api_key_env"),
                               api_key_file=api_key_file)
            key = resolve_key(config)
            lines = asyncio.run(_cancel(journal, book, live, config, key, settings))
            journal.set_meta(state="stopped", stop_reason="batches cancelled (batchrun cancel)",
                             finished_at=time.time())
        finally:
            journal.close()
    finally:
        lock.release()
    return "\n".join([f"{output}:", *lines, "run the job again (either backend) to send the "
                      "rows back in pending"])


async def _cancel(journal: Journal, book: BatchBook, live: list[Submission], config: RunConfig,
                  key: Any, settings: dict[str, Any]) -> list[str]:
    price = settings.get("price")
    rules = Rules(settings.get("response_format", "text"), settings.get("schema"),
                  settings.get("model"), Price(*price) if price else None,
                  int(settings.get("max_attempts", 6)))
    timeout = float(settings.get("timeout", 120.0))
    async with new_session(4, tls=config.base_url.startswith("https:")) as session:
        api = BatchApi(session, config.base_url, key, timeout, asyncio.sleep)
        await api.check()
        batches = await _ask(api, book, live, config.output)
        lines = []
        first, longest = poll_delays()
        delay, waited = first, 0.0
        while batches:
            for sub, info in list(batches.items()):
                if info.ended:
                    got = await gather(api, book, sub, info, rules)
                    settle(journal, book, sub, info.status, got,
                           "cancelled by batchrun cancel" if info.status == "cancelled" else None)
                    lines.append(f"  {info.id}  {info.status}: {len(got.outcomes):,} answers "
                                 f"kept, {len(got.returned):,} rows back to pending")
                    del batches[sub]
            if not batches or waited >= CANCEL_WAIT:
                break
            await asyncio.sleep(delay)
            waited += delay
            delay = min(longest, delay * 1.5)
            for sub in batches:
                batches[sub] = await api.retrieve(batches[sub].id)
        for info in batches.values():
            lines.append(f"  {info.id}  still {info.status}: run `batchrun cancel "
                         f"{config.output}` again later to collect it")
    return lines


async def _ask(api: BatchApi, book: BatchBook, live: list[Submission],
               output: Path) -> dict[Submission, BatchInfo]:
    """Ask the provider to cancel every live batch not yet ended (found by metadata if the run
    that created it died before the journal heard its id)."""
    orphans = {s.sub: s.created_at for s in live if s.batch_id is None}
    found: dict[str, BatchInfo] = {}
    if orphans:
        name = output_name(output)
        for info in await api.find(lambda b: b.metadata.get(META_OUTPUT) == name
                                   and b.metadata.get(META_SUB) in orphans,
                                   min(orphans.values()) - CLOCK_SLACK):
            found[info.metadata[META_SUB]] = info
    batches: dict[Submission, BatchInfo] = {}
    for sub in live:
        batch_id = sub.batch_id or (found[sub.sub].id if sub.sub in found else None)
        if batch_id is None:  # never created: its rows simply go back to pending
            book.close(sub.sub, "cancelled", [])
            continue
        book.cancelled_by_us(sub.sub)
        info = await api.retrieve(batch_id)
        if not info.ended:
            info = await api.cancel(batch_id)
        book.attach(sub.sub, info)
        batches[sub._replace(batch_id=batch_id, cancelled_by_us=1)] = info
    return batches
