"""The Batch API backend: pending jobs go out as JSONL files in batches at half price.

    re-attach   the journal's live batches (and, for one killed before the journal heard of its
                batch, the provider's list of batches by metadata); collect the ended ones
    submit      the plan's jobs into files of --batch-size lines (and 200 MB), each uploaded and
                made a batch, recorded in the journal before anything waits on it; --max-cost
                holds each job's worst case before it is submitted
    settle      poll with backoff; collect each ended batch (`batch_collect`); rows it did not
                answer go out again in a new batch (or online with --batch-fallback online)

With --no-wait the run submits and collects what has ended, then returns; the engine exits 75
while rows wait in live batches. The journal and the plan are shared with the online backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from batchrun.backends.batch_api import BatchApi, BatchGone, BatchInfo, new_session
from batchrun.backends.batch_collect import Collected, Rules, collect
from batchrun.backends.batch_files import FileSplitter, InputFile
from batchrun.errors import JobStopped, UsageError
from batchrun.journal.batches import BatchBook, Returned, Submission
from batchrun.journal.database import Journal
from batchrun.protocol.render import completion_reserve
from batchrun.running.context import RunContext
from batchrun.running.rows import Job, job_of, select
from batchrun.sending.budget import Budget
from batchrun.settings.config import RunConfig, request_fingerprint
from batchrun.settings.prices import price_for

log = logging.getLogger("batchrun")

POLL_ENV = "BATCHRUN_BATCH_POLL"  # seconds between polls, fixed (tests); default: backoff
POLL_FIRST, POLL_MAX, POLL_GROWTH = 5.0, 60.0, 1.5
META_OUTPUT, META_FINGERPRINT, META_SUB = "batchrun_output", "batchrun_fingerprint", "batchrun_sub"
CLOCK_SLACK = 600.0  # seconds our clock and the provider's may disagree by
SETTINGS_META = "batch_settings"  # what `batchrun cancel` needs to collect without the job file


def poll_delays(environ: Mapping[str, str] = os.environ) -> tuple[float, float]:
    """(first, longest) seconds between polls: BATCHRUN_BATCH_POLL fixes both."""
    raw = environ.get(POLL_ENV, "").strip()
    if not raw:
        return POLL_FIRST, POLL_MAX
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every > 0:
        raise UsageError(f"{POLL_ENV}={raw!r} must be a number of seconds greater than 0")
    return every, every


def output_name(output: Path) -> str:
    """The output as batch metadata names it: file name and a hash of its absolute path."""
    where = hashlib.sha256(str(output.resolve()).encode()).hexdigest()[:16]
    return f"{output.name[:400]}#{where}"


def collect_rules(config: RunConfig, price: Any) -> Rules:
    """The rules lines are judged by, from the run's config."""
    return Rules(config.response_format, config.schema, config.model, price, config.max_attempts,
                 exhaust=config.batch_fallback != "online")


async def gather(api: BatchApi, book: BatchBook, sub: Submission, info: BatchInfo,
                 rules: Rules) -> Collected:
    """Download an ended batch's output and error files and judge every line (nothing stored)."""
    keys = book.keys(sub.sub)
    files = []
    for file_id in (info.output_file_id, info.error_file_id):
        if file_id:
            try:
                files.append(await api.content(file_id))
            except BatchGone:
                log.warning("file %s of batch %s is gone; its rows go back to pending",
                            file_id, info.id)
    got = collect(files, set(keys), book.carried(keys), rules, info.status,
                  ours=bool(sub.cancelled_by_us))
    if got.unknown or got.unreadable:
        log.warning("batch %s: %d output lines name a request it did not carry and %d are "
                    "unreadable; they were ignored", info.id, got.unknown, got.unreadable)
    return got


def settle(journal: Journal, book: BatchBook, sub: Submission, status: str, got: Collected,
           note: str | None = None) -> None:
    """Commit a collected batch: its answers first, then the batch is closed in the book."""
    for outcome in got.outcomes:
        journal.record(outcome)
    journal.flush()  # durable before the batch is closed: a kill between collects it again
    book.close(sub.sub, status, got.returned, note)


class BatchBackend:
    """Jobs become lines of Batch API input files; answers come back when batches end."""

    async def deliver(self, jobs: AsyncIterator[list[Job]], run: RunContext) -> None:
        """Submit the pending jobs, then wait for and collect every batch (or not: --no-wait)."""
        async with new_session(4, tls=run.base_url.startswith("https:")) as session:
            api = BatchApi(session, run.base_url, run.key, run.config.timeout, run.stopper.sleep)
            await BatchFlow(run, api).go(jobs)


class BatchFlow:
    """One run's batches: re-attach, submit, settle."""

    def __init__(self, run: RunContext, api: BatchApi) -> None:
        self.run = run
        self.config = run.config
        self.api = api
        self.book = BatchBook(run.journal)
        self.rules = collect_rules(run.config, run.price)
        self.budget = Budget(self.config.max_cost, self.config.max_total_tokens)
        self.settled: set[bytes] = set()  # keys this run committed: the plan may not know yet
        self.returned: set[bytes] = set()  # keys back from ended batches, to send again
        self.refusal: str | None = None  # the budget refused a job: submit nothing more
        self._checked = False

    async def go(self, jobs: AsyncIterator[list[Job]]) -> None:
        """Re-attach, submit, then settle (once with --no-wait)."""
        self.run.journal.set_meta(**{SETTINGS_META: self._settings()})
        if self.book.live():
            await self._reattach()
            await self._poll()
        await self._submit_plan(jobs)
        await self._settle()
        if self.refusal:  # after settling: what was submitted within the budget is collected
            self.run.stopper.stop(JobStopped(self.refusal))

    # --- re-attaching -------------------------------------------------------------------

    async def _reattach(self) -> None:
        """Submissions the journal holds without a batch id: find their batch, or create it."""
        await self._check()
        orphans = {s.sub: s for s in self.book.live() if s.batch_id is None}
        if not orphans:
            return
        output, fingerprint = output_name(self.config.output), request_fingerprint(self.config)
        since = min(s.created_at for s in orphans.values()) - CLOCK_SLACK
        found = await self.api.find(lambda b: b.metadata.get(META_OUTPUT) == output
                                    and b.metadata.get(META_FINGERPRINT) == fingerprint
                                    and b.metadata.get(META_SUB) in orphans, since)
        for info in found:
            sub = info.metadata[META_SUB]
            if orphans.pop(sub, None) is not None:
                self.book.attach(sub, info)
                self._event(info, "re-attached: created before the last run was stopped")
        for orphan in orphans.values():  # never created: create it now from the uploaded file
            assert orphan.file_id is not None
            info = await self.api.create(orphan.file_id, self._metadata(orphan.sub))
            self.book.attach(orphan.sub, info)
            self._event(info, "created for a submission the last run left unfinished")

    # --- submitting ---------------------------------------------------------------------

    async def _submit_plan(self, jobs: AsyncIterator[list[Job]]) -> None:
        """Every job of the plan into files and batches, while the budget admits them."""
        splitter = FileSplitter(self.config.batch_size)
        async for batch in jobs:
            if self.run.stopper.stopping:
                return
            fresh = [job for job in batch if job.key not in self.settled]
            self.run.stats.to_send -= len(batch) - len(fresh)  # collected before the plan got here
            for full in splitter.add(self._admit(fresh)):
                await self._submit(full)
            if self.refusal:
                break
        rest = splitter.rest()
        if rest is not None and not self.run.stopper.stopping:
            await self._submit(rest)

    def _admit(self, jobs: Sequence[Job]) -> list[Job]:
        """The jobs whose worst case the budget holds, in order; a refusal ends submitting."""
        if self.refusal:
            return []
        if not self.budget.active:
            return list(jobs)
        for i, job in enumerate(jobs):
            self.refusal = self.budget.admit(job.tokens, job.cost_estimate)
            if self.refusal:
                return list(jobs[:i])
        return list(jobs)

    async def _submit(self, file: InputFile) -> None:
        """Upload one file and make it a batch; its keys are held in the journal first."""
        await self._check()
        sub = uuid.uuid4().hex[:24]
        keys = [job.key for job in file.jobs]
        file_id = await self.api.upload(f"batchrun-{sub}.jsonl", file.content())
        self.book.open(sub, file_id, keys)
        info = await self.api.create(file_id, self._metadata(sub))
        self.book.attach(sub, info)
        self.returned.difference_update(keys)
        self.run.stats.sent += len(keys)
        self._event(info, f"submitted {len(keys):,} requests ({file.size:,} bytes)")

    async def _resubmit(self) -> None:
        """Rows back from ended batches: a new batch, or online with --batch-fallback online."""
        jobs = self._jobs_for(self.returned)
        self.returned.clear()
        if not jobs:
            return
        self.run.stats.retries += len(jobs)
        if self.config.batch_fallback == "online":
            await self._online(jobs)
            return
        splitter = FileSplitter(self.config.batch_size)
        for full in splitter.add(self._admit(jobs)):
            await self._submit(full)
        rest = splitter.rest()
        if rest is not None:
            await self._submit(rest)

    async def _online(self, jobs: list[Job]) -> None:
        """The fallback: these jobs go through the online backend, at the online price."""
        from batchrun.backends.online import OnlineBackend

        online_price = price_for(self.config.model, self.config.price)
        reserve = completion_reserve(self.config)
        priced = [job._replace(cost_estimate=online_price.cost(job.tokens - reserve, reserve)
                               if online_price else 0.0) for job in jobs]
        log.info("sending %d rows online (--batch-fallback online)", len(priced))

        async def once() -> AsyncIterator[list[Job]]:
            yield priced

        await OnlineBackend().deliver(once(), dataclasses.replace(self.run, price=online_price))
        self.book.forget([job.key for job in jobs])

    def _jobs_for(self, keys: set[bytes]) -> list[Job]:
        """Render the input again for the jobs of `keys` (their bodies are not kept meanwhile)."""
        if not keys:
            return []
        run, reserve = self.run, completion_reserve(self.config)
        return [job_of(key, request, reserve, run.price)
                for chosen in select(run.table, run.renderer, self.config)
                for _, key, request in chosen.send if key in keys]

    # --- settling -----------------------------------------------------------------------

    async def _settle(self) -> None:
        """Poll until every batch ended and nothing is left to send again (--no-wait: once)."""
        first, longest = poll_delays()
        delay = first
        while not self.run.stopper.stopping:
            if self.returned:
                await self._resubmit()
            if self.config.no_wait or not self.book.live() or self.run.stopper.stopping:
                return
            await self.run.stopper.sleep(delay)
            changed = await self._poll()
            delay = first if changed else min(longest, delay * POLL_GROWTH)

    async def _poll(self) -> bool:
        """Look at every live batch once; collect those that ended. Did any change?"""
        changed = False
        for sub in self.book.live():
            if self.run.stopper.stopping:
                break
            if sub.batch_id is None:
                continue
            try:
                info = await self.api.retrieve(sub.batch_id)
            except BatchGone as gone:
                log.warning("batch %s is unknown to the provider (%s); its rows go back to "
                            "pending", sub.batch_id, gone)
                self._close(sub, "lost", Collected(returned=[
                    Returned(k, False, 0, 0, "batch lost") for k in self.book.keys(sub.sub)]))
                changed = True
                continue
            if (info.status, info.completed, info.failed) != (sub.status, sub.completed,
                                                              sub.failed):
                self.book.attach(sub.sub, info)
                self._event(info)
                changed = True
            if info.ended:
                await self._collect(sub, info)
                changed = True
        return changed

    async def _collect(self, sub: Submission, info: BatchInfo) -> None:
        """Commit what an ended batch answered; the rest goes back to pending."""
        got = await gather(self.api, self.book, sub, info, self.rules)
        note = "; ".join(info.errors) or None
        self._close(sub, info.status, got, note)
        if info.status == "failed":
            self.run.stopper.stop(JobStopped(
                f"stopped: batch {info.id} failed validation: {note or 'no reason given'}; its "
                f"{len(got.returned):,} rows stay pending: fix them, then run the same command "
                "again"))
        elif got.stop:
            self.run.stopper.stop(JobStopped(f"stopped: batch {info.id}: {got.stop}"))

    def _close(self, sub: Submission, status: str, got: Collected, note: str | None = None
               ) -> None:
        stats = self.run.stats
        settle(self.run.journal, self.book, sub, status, got, note)
        self.settled.update(outcome.key for outcome in got.outcomes)
        self.returned.update(r.key for r in got.returned if not got.stop)
        ok = sum(outcome.status == "ok" for outcome in got.outcomes)
        stats.ok += ok
        stats.errors += len(got.outcomes) - ok
        stats.finished += len(got.outcomes)
        stats.prompt_tokens += got.prompt_tokens
        stats.completion_tokens += got.completion_tokens
        stats.cost_usd += got.cost_usd
        stats.batches.pop(sub.batch_id or sub.sub, None)
        stats.in_flight = sum(total for _, _, _, total in stats.batches.values())
        self.run.event("batch_collected", batch_id=sub.batch_id, status=status,
                       answered=len(got.outcomes), returned=len(got.returned), note=note)

    # --- helpers ------------------------------------------------------------------------

    async def _check(self) -> None:
        if not self._checked:
            await self.api.check()  # no Batch API: exit 2 before anything is uploaded
            self._checked = True

    def _metadata(self, sub: str) -> dict[str, str]:
        return {META_OUTPUT: output_name(self.config.output),
                META_FINGERPRINT: request_fingerprint(self.config), META_SUB: sub}

    def _settings(self) -> dict[str, Any]:
        price = self.run.price
        return {"response_format": self.config.response_format, "schema": self.config.schema,
                "model": self.config.model, "max_attempts": self.config.max_attempts,
                "price": [price.input_per_million, price.output_per_million] if price else None,
                "base_url": self.run.base_url, "provider": self.config.provider,
                "api_key_env": self.config.api_key_env, "timeout": self.config.timeout}

    def _event(self, info: BatchInfo, note: str | None = None) -> None:
        stats = self.run.stats
        stats.batches[info.id] = (info.status, info.completed, info.failed, info.total)
        stats.in_flight = sum(total for _, _, _, total in stats.batches.values())
        self.run.event("batch", batch_id=info.id, status=info.status, completed=info.completed,
                       failed=info.failed, total=info.total, note=note)

