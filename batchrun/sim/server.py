"""The aiohttp server: chat completions per its SimConfig, script and rules, plus models and stats.

Order of decisions for one POST: body size (413), key (401), JSON and parameters (400), model (404),
context length (400), the key's credits (402), then a scripted step (rule, else FIFO script). Fault
steps answer at once and bypass the limits; answering steps (ok, delay, finish) and unscripted
requests then meet the limits, the simulator's and then the key's (sim/accounts.py): RPM (every
arrival counts, even rejected ones), concurrency, TPM (prompt + max_tokens charged at arrival, not
refunded; a request refused with a 429 is not charged to TPM). Random faults apply only
to unscripted requests that passed the limits. A stray 429 (`stray_429_rate`) comes before the
limits, to unscripted requests only, and is charged to no window, like a busy provider's.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import deque
from dataclasses import asdict, fields
from typing import Any

import orjson
from aiohttp import web

from batchrun.sim.accounts import Accounts, AccountState
from batchrun.sim.batch_api import add_batch_api
from batchrun.sim.batches import BatchStore
from batchrun.sim.billing import Billing
from batchrun.sim.config import ANSWERING, Script, SimConfig, Step
from batchrun.sim.faults import HTML_ERROR, OVERLOADED, draw_fault, error_body, step_error, trickle
from batchrun.sim.files import FileStore
from batchrun.sim.stats import SimStats
from batchrun.sim.validate import ChatRequest, Invalid, parse
from batchrun.sim.windows import Limits, retry_headers

DEFAULT_MODELS = ("sim-1", "sim-large")
_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions", "/api/v1/chat/completions")
_MODEL_PATHS = ("/v1/models", "/models", "/api/v1/models")


class _Dropped(web.Response):
    """What a dropped connection "answers": never sent, so no status is counted for it."""


class Simulator:
    """An aiohttp server answering chat completions per its SimConfig, script and rules."""

    def __init__(self, config: SimConfig | None = None) -> None:
        config = config or SimConfig()
        self.config = config
        self.stats = SimStats()
        self.last_bodies: deque[dict[str, Any]] = deque(maxlen=256)  # the latest valid request bodies, parsed
        self.base_url = ""
        self._script = Script()
        self._rng = random.Random(config.seed)
        # Its own dice, so adding stray 429s does not move the other faults of a seeded run.
        self._stray_rng = random.Random(f"stray-429-{config.seed}")
        self._accounts = Accounts(config)
        self._billing = Billing(config, self.stats)
        self._limits = Limits(config)
        self._fault_rates = tuple(itertools.accumulate(config.fault_rates))  # cumulative
        self._garbage = itertools.cycle((True, False))
        self._files = FileStore(self.stats)
        self._batches = BatchStore(config, self._files, self.stats, self._billing.batch_line)
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = any free port); returns the base URL ending in /v1."""
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=self.config.max_body_bytes)
        for path in _CHAT_PATHS:
            app.router.add_post(path, self._chat)
        for path in _MODEL_PATHS:
            app.router.add_get(path, self._models)
        add_batch_api(app, self.config, self._files, self._batches, self._unauthorized)
        app.router.add_get("/_stats", self._get_stats)
        app.router.add_post("/_reset", self._reset)
        # handler_cancellation: a hang or trickle ends as soon as its client disconnects.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/v1"
        return self.base_url

    async def stop(self) -> None:
        """End hangs and trickles, close connections and stop listening."""
        if self._runner is None:
            return
        await self._batches.stop()
        self._closing.set()
        await self._runner.cleanup()
        self._runner = None

    def script(self, *steps: Step) -> None:
        """Queue steps for the next valid chat requests, in arrival order."""
        self._script.add(*steps)

    def rule(self, contains: str, *steps: Step, times: int | None = None) -> None:
        """Steps for requests whose last user text contains `contains` (last step repeats)."""
        self._script.rule(contains, *steps, times=times)

    def balance(self, key: str = "") -> float | None:
        """USD left on `key`'s credits (None: unlimited); "" is the keyless account."""
        return self._accounts.get(key).balance

    def reset_stats(self) -> None:
        """Zero the counters in place (requests still in flight stay counted)."""
        fresh, in_flight = SimStats(), self.stats.in_flight
        for f in fields(SimStats):
            setattr(self.stats, f.name, getattr(fresh, f.name))
        self.stats.in_flight = self.stats.max_in_flight = in_flight

    def _send(
        self,
        status: int,
        body: bytes,
        extra: dict[str, str] | None = None,
        limit_headers: bool = True,
        account: AccountState | None = None,
    ) -> web.Response:
        """A JSON response, counted, with rate-limit headers as of now (after any latency): the
        simulator's, and where the key has limits of its own, the key's."""
        self.stats.count(status)
        if status == 429:
            self.stats.rate_limited += 1
        headers = {"Content-Type": "application/json"}
        if limit_headers:
            now = asyncio.get_running_loop().time()
            headers.update(self._limits.headers(now))
            if account is not None and account.limits is not None:
                headers.update(account.limits.headers(now))
        if extra:
            headers.update(extra)
        return web.Response(status=status, body=body, headers=headers)

    def _error(
        self,
        status: int,
        message: str,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, str] | None = None,
        account: AccountState | None = None,
    ) -> web.Response:
        body = error_body(self.config.error_style, status, message, type_, param, code)
        return self._send(status, body, extra, account=account)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        too_large = (request.content_length or 0) > self.config.max_body_bytes
        raw = b""
        if not too_large:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                too_large = True
        now = asyncio.get_running_loop().time()
        stats = self.stats
        stats.requests += 1
        stats.arrivals.append(now)
        rpm_wait = self._limits.arrive(now)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        account: AccountState | None = None
        try:
            if too_large:
                return self._error(
                    413,
                    f"Request body exceeds {self.config.max_body_bytes} bytes.",
                    "invalid_request_error",
                    None,
                    "request_too_large",
                )
            refusal = self._unauthorized(request)
            if refusal is not None:
                return self._send(401, refusal)
            account = self._accounts.find(request.headers.get("Authorization"))
            assert account is not None  # authorized
            account.in_flight += 1
            return await self._served(request, raw, now, rpm_wait, account)
        finally:
            stats.in_flight -= 1
            if account is not None:
                account.in_flight -= 1

    async def _served(
        self, request: web.Request, raw: bytes, now: float, rpm_wait: float, account: AccountState
    ) -> web.StreamResponse:
        """An authorized request, counted for its key: validated, its credits checked, answered."""
        mine = self.stats.key(account.key)
        mine.requests += 1
        mine.max_in_flight = max(mine.max_in_flight, account.in_flight)
        key_wait = account.limits.arrive(now) if account.limits is not None else 0.0
        response = await self._validated(request, raw, now, (rpm_wait, key_wait), account)
        if not isinstance(response, _Dropped):
            mine.count(response.status)
        return response

    async def _validated(
        self,
        request: web.Request,
        raw: bytes,
        now: float,
        waits: tuple[float, float],
        account: AccountState,
    ) -> web.StreamResponse:
        """Validate the body, check the key's credits, then answer (`_respond`)."""
        stats, cfg = self.stats, self.config
        try:
            req, data_urls, urls = parse(
                orjson.loads(raw), cfg.models, cfg.tokenizer_ratio, cfg.context_lengths
            )
        except orjson.JSONDecodeError:
            message = "We could not parse the JSON body of your request."
            return self._error(400, message, "invalid_request_error", None, "invalid_json")
        except Invalid as exc:
            return self._error(exc.status, exc.message, exc.type_, exc.param, exc.code)
        self.last_bodies.append(req.body)
        stats.images_data_url += data_urls
        stats.images_url += urls
        if account.out_of_credits():
            return self._send(402, self._accounts.no_credits(), account=account)
        return await self._respond(request, req, now, waits, account)

    async def _respond(
        self,
        request: web.Request,
        req: ChatRequest,
        now: float,
        waits: tuple[float, float],
        account: AccountState,
    ) -> web.StreamResponse:
        """Answer a valid request: its scripted step, else the limits, random faults and an answer."""
        step = self._script.pick(req.user_text) if self._script else None
        if step is not None and step.kind not in ANSWERING:
            return await self._fault(step, request, req, account)
        if step is None and self._stray():
            return self._stray_429(account)
        refused = self._refused(req, now, waits, account)
        if refused is not None:
            return refused
        if step is None and self._fault_rates[-1] > 0:
            fault = draw_fault(self._rng, self._fault_rates)
            if fault is not None:
                return await self._fault(fault, request, req, account)
        pause = step.seconds if step is not None and step.kind == "delay" else self._latency()
        if pause:
            await asyncio.sleep(pause)
        reason = step.reason if step is not None else None
        if self.stats.first_answer_at is None:
            self.stats.first_answer_at = asyncio.get_running_loop().time()
        return self._send(200, self._billing.answer(req, account, reason), account=account)

    def _refused(
        self, req: ChatRequest, now: float, waits: tuple[float, float], account: AccountState
    ) -> web.Response | None:
        """The 429 when the simulator's limits or the key's refuse `req`; else charge both."""
        checks = [(self._limits, waits[0], self.stats.in_flight)]
        if account.limits is not None:
            checks.append((account.limits, waits[1], account.in_flight))
        for limits, wait, in_flight in checks:
            refused = limits.check(req.model, req.prompt_tokens, req.max_tokens, now, wait, in_flight)
            if refused is not None:
                self.stats.refused_arrivals.append(now)
                extra = retry_headers(refused.wait) if refused.wait is not None else None
                return self._error(429, refused.message, refused.type_, None, "rate_limit_exceeded",
                                   extra, account)
        for limits, _, _ in checks:
            limits.admit(req.prompt_tokens, req.max_tokens, now)
        return None

    def _stray(self) -> bool:
        rate = self.config.stray_429_rate
        return rate > 0 and self._stray_rng.random() < rate

    def _stray_429(self, account: AccountState) -> web.Response:
        """A busy provider's 429: retry in a second, no x-ratelimit-* headers, charged to no window."""
        # No await since this request's arrival was charged to RPM, so that charge is still the latest.
        self._limits.refund_arrival()
        if account.limits is not None:
            account.limits.refund_arrival()
        self.stats.stray_429s += 1
        body = error_body(self.config.error_style, 429, OVERLOADED, "requests", None, "rate_limit_exceeded")
        return self._send(429, body, {"retry-after": "1"}, limit_headers=False)

    def _unauthorized(self, request: web.Request) -> bytes | None:
        """The 401 body when the request lacks an accepted key, else None."""
        seen = request.headers.get("Authorization")
        self.stats.authorizations[seen or ""] = self.stats.authorizations.get(seen or "", 0) + 1
        if self._accounts.find(seen) is not None:
            return None
        return self._accounts.refusal(seen)

    def _latency(self) -> float:
        cfg = self.config
        if not cfg.latency_jitter:
            return cfg.latency
        return max(0.0, cfg.latency + self._rng.uniform(-cfg.latency_jitter, cfg.latency_jitter))

    async def _idle(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when the simulator is stopping."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _fault(
        self, step: Step, request: web.Request, req: ChatRequest, account: AccountState
    ) -> web.StreamResponse:
        """Carry out a fault step: anything but a plain answer."""
        kind = step.kind
        if kind == "status":
            message, type_, code, extra = step_error(step)
            return self._error(step.http_status, message, type_, None, code, extra, account)
        if kind == "body":
            headers = {"Content-Type": "application/json", **dict(step.headers)}
            self.stats.count(step.http_status)
            return web.Response(status=step.http_status, body=step.payload, headers=headers)
        if kind == "garbage":  # alternately a cut-off answer and an HTML error page
            body = orjson.dumps(self._billing.draft(req, account)[0])
            body = body[: len(body) // 2] if next(self._garbage) else HTML_ERROR
            return self._send(200, body)
        if kind == "huge":
            doc, billed = self._billing.draft(req, account)
            message = doc["choices"][0]["message"]
            if message["content"] is not None:  # trailing spaces change no word, so no usage
                pad = step.size - len(orjson.dumps(doc))
                message["content"] += " " * max(0, pad)
            self._billing.bill(req, billed, account)  # a real provider bills what it sent, readable or not
            return self._send(200, orjson.dumps(doc))
        if kind == "hang":
            await self._idle(step.seconds if step.seconds is not None else self.config.hang_s)
        if kind == "trickle":
            self.stats.count(200)
            body = orjson.dumps(self._billing.draft(req, account)[0])  # never completes: not billed
            return await trickle(request, body, step.seconds or 0.5, self._idle)
        # drop, or a hang that outlived its bound: close without a response. aiohttp then fails
        # to write the Response we return, and ignores that as a client disconnect.
        self.stats.dropped += 1
        if request.transport is not None:
            request.transport.close()
        return _Dropped()

    async def _models(self, request: web.Request) -> web.Response:
        refusal = self._unauthorized(request)
        if refusal is not None:
            return web.Response(status=401, body=refusal, content_type="application/json")
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "batchrun-simulator"}
            for m in self.config.models or DEFAULT_MODELS
        ]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(asdict(self.stats), option=orjson.OPT_NON_STR_KEYS, default=list),
            content_type="application/json",
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.Response(body=b"{}", content_type="application/json")
