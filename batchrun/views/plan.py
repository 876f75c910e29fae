"""The dry run (`batchrun plan`): what a run would send now, its tokens, cost and time; sends nothing.

`make_plan` reads the input and, if there is one, the journal (read-only), through the same
selection loop as a run (`running.rows.select`), so it counts exactly the requests a run would send.
A run with several endpoints gets their part from `views.plan_pool`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import orjson

from batchrun.data.openai_api import CHAT_PATH, MAX_BATCH_MB
from batchrun.journal.cache import Cache
from batchrun.journal.database import Journal, journal_path
from batchrun.protocol.render import (
    Request,
    completion_reserve,
)
from batchrun.protocol.tokens import CALIBRATION_META, Calibration
from batchrun.running.rows import open_job, select
from batchrun.running.summary import count, duration
from batchrun.sending.http import request_headers
from batchrun.settings.config import RunConfig
from batchrun.settings.keys import Secret
from batchrun.settings.prices import Price, batch_price, price_for
from batchrun.views.plan_pool import (
    EndpointPlan,
    Pace,
    endpoints_json,
    per_minute,
    plan_endpoints,
    pool_cost,
    pool_pace,
    render_endpoints,
)


@dataclass(frozen=True)
class Sample:
    """One fully rendered request, as it would go on the wire (key hidden)."""

    row: int
    url: str
    headers: dict[str, str]
    body: Any
    already_answered: bool


@dataclass(frozen=True)
class Plan:
    """What a run would do now, estimated without sending anything."""

    total_rows: int
    to_send: int
    reused: int
    copies: int
    invalid: int
    first_invalid: tuple[int, str] | None
    prompt_tokens: int  # estimated (calibrated when a ratio is known), over the requests to send
    completion_tokens: int  # at most: the reserve of every request to send
    reserve: int
    price: Price | None
    journal: str
    sample: Sample | None
    token_ratio: float = 1.0  # the provider's prompt tokens per token of our estimate
    ratio_answers: int = 0  # earlier answers on this output the ratio was learned from (0: none)
    held: int = 0  # requests waiting in live Batch API batches
    request_bytes: int = 0  # request bodies to send, summed (Batch API files are split by size)
    batch_price: Price | None = None  # set for --backend batch
    key_from: str | None = None  # where the key comes from (a variable's name), never the key
    key_needed: str | None = None  # no key found: what a run will need (plan goes on without)
    cached: int = 0  # requests the shared cache (--cache) answers: not sent, not paid
    endpoints: tuple[EndpointPlan, ...] = ()  # a run with several: each one's part

    @property
    def cost_usd(self) -> float | None:
        """Worst-case cost of the requests to send (every answer as long as allowed); with
        endpoints, each pool endpoint's share at its model's price."""
        if self.endpoints:
            return pool_cost(self.endpoints)
        if self.price is None:
            return None
        return self.price.cost(self.prompt_tokens, self.completion_tokens)

    @property
    def batch_cost_usd(self) -> float | None:
        """The same worst case at the Batch API price (None: not a batch run, or no price)."""
        if self.batch_price is None:
            return None
        return self.batch_price.cost(self.prompt_tokens, self.completion_tokens)

    @property
    def run_cost_usd(self) -> float | None:
        """The worst case at the price this run pays: what --max-cost is checked against."""
        return self.batch_cost_usd if self.batch_price is not None else self.cost_usd


def make_plan(config: RunConfig, key: Secret | None, key_needed: str | None = None) -> Plan:
    """Read the input and the journal (read-only) and work out what a run would send now."""
    table, renderer = open_job(config)
    reserve = completion_reserve(config)
    journal, journal_note, learned = _journal_reader(config)
    # The shared cache, if there is one yet: a plan creates nothing.
    cache = (Cache(config.cache, create=False)
             if config.cache is not None and config.cache.exists() else None)
    total = to_send = reused = copies = invalid = prompt_tokens = held = request_bytes = 0
    cached = 0
    first_invalid: tuple[int, str] | None = None
    sample: Sample | None = None
    fallback: tuple[int, Request] | None = None
    try:
        for chosen in select(table, renderer, config, journal, answered=cache):
            total += len(chosen.rendered)
            cached += len(chosen.cached)
            copies += chosen.copies
            reused += chosen.reused
            held += chosen.held
            invalid += len(chosen.invalid)
            to_send += len(chosen.send)
            request_bytes += sum(len(req.body) for _, _, req in chosen.send)
            prompt_tokens += sum(req.tokens - reserve for _, _, req in chosen.send)
            if first_invalid is None and chosen.invalid:
                idx, _, bad = chosen.invalid[0]
                first_invalid = (idx, bad.message)
            if sample is None and chosen.send:
                idx, _, req = chosen.send[0]
                sample = _sample(config, key, idx, req, already_answered=False)
            if fallback is None:
                fallback = next(((i, r) for i, r in enumerate(chosen.rendered, chosen.start)
                                 if isinstance(r, Request)), None)
    finally:
        if journal is not None:
            journal.close()
        if cache is not None:
            cache.close()
    if sample is None and fallback is not None:
        sample = _sample(config, key, fallback[0], fallback[1], already_answered=True)
    # How the provider counted the prompts of earlier runs on this output, against our estimate.
    calibration = Calibration(learned)
    ratio = calibration.ratio(config.model or "")
    prompt_tokens = math.ceil(prompt_tokens * ratio)
    endpoints = plan_endpoints(config, to_send, prompt_tokens, to_send * reserve)
    if endpoints and sample is not None:  # sent as the first pool endpoint would: its key hidden
        first = next(p for p in endpoints if not p.endpoint.fallback)
        sample = replace(sample, headers=request_headers(first.key, hidden=True))
    return Plan(
        total_rows=total, to_send=to_send, reused=reused, copies=copies, invalid=invalid,
        first_invalid=first_invalid, prompt_tokens=prompt_tokens,
        completion_tokens=to_send * reserve, reserve=reserve,
        # With endpoints each has its own price (in `endpoints`), and the run's is theirs summed.
        price=None if endpoints else price_for(config.model, config.price),
        journal=journal_note, sample=sample,
        token_ratio=ratio, ratio_answers=calibration.answers(config.model or "")[0],
        held=held, request_bytes=request_bytes,
        batch_price=(batch_price(price_for(config.model, config.price), config.batch_price)
                     if config.backend == "batch" else None),
        key_from=key.source if key is not None else None,
        key_needed=key_needed,
        cached=cached, endpoints=endpoints,
    )


def _journal_reader(config: RunConfig) -> tuple[Journal | None, str, Any]:
    """The earlier runs' journal, opened read-only (no lock, no writes; None: nothing earlier to
    ask), a line about it, and the token ratio learned (or None)."""
    path = journal_path(config.output)
    if not path.exists():
        return None, f"none yet ({path.name} will be created by the run)", None
    if config.fresh:
        return None, f"{path.name} exists, ignored: --fresh starts over", None
    journal = Journal(path, readonly=True)
    counts = journal.counts()
    return journal, (
        f"{path.name}: {counts['ok']:,} rows answered, {counts['error']:,} failed in earlier runs"
    ), journal.meta().get(CALIBRATION_META)


def _sample(config: RunConfig, key: Secret | None, row: int, request: Request,
            already_answered: bool) -> Sample:
    if config.base_url:
        url = config.base_url + CHAT_PATH
    else:  # the simulator preset starts its own server on a free port when the run begins
        url = f"http://127.0.0.1:<free port>/v1{CHAT_PATH}"
    headers = request_headers(key, hidden=True)
    return Sample(row, url, headers, orjson.loads(request.body), already_answered)


# --- the report ----------------------------------------------------------------------------


def render_plan(plan: Plan, config: RunConfig) -> str:
    """The plan as a few lines a person reads before paying for a run."""
    lines = [f"batchrun plan: {config.job_file or 'flags only'} (nothing is sent)"]
    add = lines.append
    add(f"  input     {config.input}: {count(plan.total_rows, 'row')}")
    add(f"  output    {config.output_name}")
    add(f"  journal   {plan.journal}")
    add(f"  to send   {count(plan.to_send, 'request')} now")
    skipped = []
    if plan.reused:
        skipped.append(f"{plan.reused:,} settled by earlier runs")
    if plan.cached:
        skipped.append(f"{plan.cached:,} answered by the shared cache, at no cost")
    if plan.copies:
        skipped.append(f"{plan.copies:,} identical rows share one request (dedup)")
    if plan.invalid:
        skipped.append(f"{plan.invalid:,} rows cannot be sent and will be row errors")
    if plan.held:
        skipped.append(f"{plan.held:,} wait in live Batch API batches (collected by the next run)")
    if skipped:
        add(f"  skipped   {'; '.join(skipped)}")
    if plan.first_invalid:
        add(f"  invalid   first at row {plan.first_invalid[0]}: {plan.first_invalid[1]}")
    if plan.endpoints:  # each endpoint's line names its model and where its key comes from
        lines.extend(render_endpoints(plan.endpoints))
    else:
        model = config.model or "(the account's default model)"
        add(f"  model     {model}" + (f" via {config.provider}" if config.provider else ""))
        if plan.key_needed:
            add(f"  key       none found; before a run, "
                f"{plan.key_needed.removeprefix('no API key: ')}")
        else:
            add(f"  key       {plan.key_from or 'none (a local server needs none)'}")
    reserve_note = "" if config.max_tokens else "; no --max-tokens, so the server default is assumed"
    add(f"  tokens    ~{plan.prompt_tokens:,} prompt ({_ratio_note(plan)}) + at most "
        f"{plan.completion_tokens:,} completion ({plan.reserve:,} per request){reserve_note}")
    add("  cost      " + _cost_line(plan, config))
    if config.backend == "batch":
        add("  batch     " + _batch_line(plan, config))
    add("  time      " + _time_line(plan, config))
    budget = _budget_line(plan, config)
    if budget:
        add("  budget    " + budget)
    if plan.sample is not None:
        add("")
        s = plan.sample
        note = " (already answered; shown as an example)" if s.already_answered else ""
        add(f"sample request (row {s.row}){note}:")
        add(f"  POST {s.url}")
        if "Authorization" not in s.headers:
            add("  (no Authorization header: " + ("no key found yet; a run sends one)"
                                                    if _key_needed(plan) else
                                                    "no key set, none needed for a local server)"))
        for name, value in s.headers.items():
            add(f"  {name}: {value}")
        body = orjson.dumps(_abbreviate(s.body), option=orjson.OPT_INDENT_2).decode()
        lines.extend("  " + line for line in body.splitlines())
    return "\n".join(lines)


def _key_needed(plan: Plan) -> bool:
    """No key found for the sample's endpoint (the run's, or the first of the pool)."""
    if plan.endpoints:
        return next(p for p in plan.endpoints if not p.endpoint.fallback).key_needed is not None
    return plan.key_needed is not None


def plan_json(plan: Plan, config: RunConfig) -> dict[str, Any]:
    """The plan as one JSON object for scripts (`batchrun plan --format json`); `endpoints` is
    empty for a run with one endpoint."""
    pace = _pace(config)
    minutes, binding = _binding(plan, pace)
    price = None
    if plan.price is not None:
        price = {"input_per_million": plan.price.input_per_million,
                 "output_per_million": plan.price.output_per_million,
                 "source": "pricing" if config.price is not None else "built-in"}
    sample = None
    if plan.sample is not None:
        s = plan.sample
        shown = _abbreviate(s.body)
        sample = {"row": s.row, "url": s.url, "headers": s.headers, "body": shown,
                  "cut": shown != s.body, "already_answered": s.already_answered}
    return {
        "job_file": str(config.job_file) if config.job_file else None,
        "input": str(config.input), "output": config.output_name, "journal": plan.journal,
        "rows": plan.total_rows, "to_send": plan.to_send, "reused": plan.reused,
        "cached": plan.cached,
        "copies": plan.copies, "invalid": plan.invalid,
        "first_invalid": ({"row": plan.first_invalid[0], "message": plan.first_invalid[1]}
                          if plan.first_invalid else None),
        "model": config.model, "provider": config.provider, "key_from": plan.key_from,
        "key_needed": plan.key_needed,
        "tokens": {"prompt_estimate": plan.prompt_tokens, "completion_max": plan.completion_tokens,
                   "reserve_per_request": plan.reserve, "prompt_ratio": plan.token_ratio,
                   "prompt_ratio_source": ("journal" if plan.ratio_answers else "estimate"),
                   "prompt_ratio_answers": plan.ratio_answers},
        "cost_usd_max": plan.cost_usd, "price": price,
        "time": {"min_seconds": minutes * 60 if minutes is not None else None, "binds": binding,
                 "rpm": pace.rpm, "tpm": pace.tpm, "concurrency": pace.concurrency},
        "budget": {"max_cost": config.max_cost, "max_total_tokens": config.max_total_tokens,
                   "note": _budget_line(plan, config)},
        "backend": config.backend, "held": plan.held, "batch": _batch_json(plan, config),
        "sample": sample, "endpoints": endpoints_json(plan.endpoints),
    }


def _ratio_note(plan: Plan) -> str:
    """Where the prompt estimate comes from: our count, or scaled as the provider counted."""
    if not plan.ratio_answers:
        return "estimated"
    return (f"estimated x{plan.token_ratio:.2f}, as the provider counted {plan.ratio_answers:,} "
            "earlier answers on this output")


def _pace(config: RunConfig) -> Pace:
    """The run's limits, or with endpoints the pool's: the sums of its endpoints' limits."""
    if config.endpoints:
        return pool_pace(config)
    return Pace(config.rpm, config.tpm, config.concurrency)


def _binding(plan: Plan, pace: Pace) -> tuple[float | None, str | None]:
    """Minutes the configured limits imply at least, and which limit binds (None: no limit)."""
    bounds: list[tuple[float, str]] = []
    if plan.to_send and pace.rpm:
        bounds.append((plan.to_send / pace.rpm, "rpm"))
    if plan.to_send and pace.tpm:
        bounds.append(((plan.prompt_tokens + plan.completion_tokens) / pace.tpm, "tpm"))
    if not bounds:
        return (0.0 if not plan.to_send else None), None
    return max(bounds)


def _cost_line(plan: Plan, config: RunConfig) -> str:
    batch = plan.batch_price
    if batch is not None and plan.batch_cost_usd is not None:
        source = "[pricing] batch_*" if config.batch_price is not None else "half the online price"
        online = f"${plan.cost_usd:,.4f}" if plan.cost_usd is not None else "unknown"
        return (f"at most ${plan.batch_cost_usd:,.4f} at the batch price ({source}: "
                f"${batch.input_per_million:g} in, ${batch.output_per_million:g} out per 1M "
                f"tokens); online it would be at most {online}")
    if plan.endpoints:
        if plan.cost_usd is None:
            unpriced = ", ".join(f"{p.endpoint.name} ({p.endpoint.model})" for p in plan.endpoints
                                 if p.price is None and not p.endpoint.fallback)
            return (f"unknown: no price for the model of {unpriced}; set [pricing] "
                    "input_per_million and output_per_million in the job file")
        return (f"at most ${plan.cost_usd:,.4f} across the pool, each endpoint's share of the "
                "pace at its model's price (above); fallback endpoints add what they answer")
    if plan.price is None:
        return ("unknown: no price for this model; set [pricing] input_per_million and "
                "output_per_million in the job file")
    source = "[pricing]" if config.price is not None else "built-in price"
    return (f"at most ${plan.cost_usd:,.4f} ({source}: ${plan.price.input_per_million:g} in, "
            f"${plan.price.output_per_million:g} out per 1M tokens)")


def _batch_files(plan: Plan, config: RunConfig) -> int:
    from batchrun.backends.batch_files import count_files  # backends import the plan: import it here

    return count_files(plan.to_send, plan.request_bytes, config.batch_size)


def _batch_line(plan: Plan, config: RunConfig) -> str:
    files = _batch_files(plan, config)
    how = "--no-wait: submit, then exit 75 until collected" if config.no_wait else (
        "waits for the answers, within 24 h")
    return (f"{files:,} input file{'s' if files != 1 else ''} of at most "
            f"{config.batch_size:,} requests (and {MAX_BATCH_MB} MB) each; {how}")


def _batch_json(plan: Plan, config: RunConfig) -> dict[str, Any] | None:
    if config.backend != "batch":
        return None
    price = plan.batch_price
    return {
        "files": _batch_files(plan, config), "batch_size": config.batch_size,
        "no_wait": config.no_wait, "fallback": config.batch_fallback,
        "cost_usd_max": plan.batch_cost_usd, "online_cost_usd_max": plan.cost_usd,
        "price": None if price is None else {
            "input_per_million": price.input_per_million,
            "output_per_million": price.output_per_million,
            "source": "pricing" if config.batch_price is not None else "half of online"},
    }


def _time_line(plan: Plan, config: RunConfig) -> str:
    if plan.to_send == 0:
        return "nothing to send"
    if config.backend == "batch":
        return "up to 24 h: the Batch API's completion window (often much sooner)"
    pace = _pace(config)
    minutes, binding = _binding(plan, pace)
    pool = "the pool's " if config.endpoints else ""
    if minutes is None:
        unset = ("an endpoint has no rpm or tpm" if config.endpoints else "no --rpm/--tpm set")
        return (f"{unset}: bounded by the provider and {pace.concurrency} "
                "requests in flight")
    parts = []
    if pace.rpm:
        parts.append(f"{duration(plan.to_send / pace.rpm * 60)} at {pool}{per_minute(pace.rpm)} "
                     "rpm")
    if pace.tpm:
        tokens = plan.prompt_tokens + plan.completion_tokens
        parts.append(f"{duration(tokens / pace.tpm * 60)} at {pool}{per_minute(pace.tpm)} tpm")
    return f"at least {duration(minutes * 60)} ({binding} binds; " + ", ".join(parts) + ")"


def _budget_line(plan: Plan, config: RunConfig) -> str | None:
    notes = []
    cost = plan.run_cost_usd
    if config.max_cost is not None and cost is not None:
        fits = cost <= config.max_cost
        per_request = cost / plan.to_send if plan.to_send else 0.0
        notes.append(
            f"--max-cost {config.max_cost:g} USD: "
            + ("the worst case fits" if fits else
               f"may stop after about {_fitting(config.max_cost, per_request):,} requests "
               "(worst case); run again to continue")
        )
    if config.max_total_tokens is not None:
        total = plan.prompt_tokens + plan.completion_tokens
        per_request = total / plan.to_send if plan.to_send else 0.0
        notes.append(
            f"--max-total-tokens {config.max_total_tokens:,}: "
            + ("the worst case fits" if total <= config.max_total_tokens else
               f"may stop after about {_fitting(config.max_total_tokens, per_request):,} "
               "requests (worst case); run again to continue")
        )
    return "; ".join(notes) or None


def _fitting(budget: float, per_request: float) -> int:
    return math.floor(budget / per_request) if per_request > 0 else 0


SAMPLE_TEXT = 2_000  # characters of one text of the sample request shown; longer ones are cut


def _abbreviate(value: Any) -> Any:
    """Shorten inline base64 images and long texts so the sample stays readable (a 30 MiB cell
    would print 31 MB); each cut is marked with the length the run sends whole."""
    if isinstance(value, str) and value.startswith("data:") and len(value) > 120:
        head = value[: value.find(",") + 1] if "," in value else value[:40]
        return f"{head}...({len(value):,} characters)"
    if isinstance(value, str) and len(value) > SAMPLE_TEXT:
        return f"{value[:SAMPLE_TEXT]}...[cut: {len(value):,} characters in all]"
    if isinstance(value, list):
        return [_abbreviate(v) for v in value]
    if isinstance(value, dict):
        return {k: _abbreviate(v) for k, v in value.items()}
    return value
