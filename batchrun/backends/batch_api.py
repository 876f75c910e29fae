"""The provider's Batch API over HTTP (`/files`, `/batches`): the batch backend's only wire.

Every failure is mapped here, at this one boundary, to plain data or to batchrun's errors:

    transient (connection, timeout, 408/409/429/5xx)  retried with backoff, then JobStopped (3)
    404 on the collection endpoints                    NoBatchApi (exit 2): nothing was sent
    404 on one batch or file                           BatchGone: the caller decides
    401/402/quota                                      JobStopped (3), as online
    any other refusal (400, 403, 413)                  JobStopped (3) naming the provider's reason
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from batchrun.data.openai_api import BATCH_URL
from batchrun.errors import JobStopped, UsageError
from batchrun.protocol.retry import Failure, Kind, RetryPolicy, classify_http, parse_retry_after
from batchrun.sending.http import key_hint, request_headers
from batchrun.settings.keys import Secret

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
ATTEMPTS = 6  # tries of one Batch API call before the run stops (it resumes where it was)
LIST_PAGE = 100  # batches per page of GET /batches (OpenAI's most)


class NoBatchApi(UsageError):
    """The provider has no Batch API (404 on /files or /batches)."""


class BatchGone(Exception):
    """The provider does not know this batch or file (any more)."""


@dataclass(frozen=True)
class BatchInfo:
    """What the provider says about one batch."""

    id: str
    status: str
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    metadata: Mapping[str, str]
    errors: tuple[str, ...]  # why validation failed, one line each
    created_at: float = 0.0  # Unix seconds

    @property
    def ended(self) -> bool:
        """No more lines will be answered: completed, failed, expired or cancelled."""
        return self.status in TERMINAL


def batch_info(data: Any) -> BatchInfo:
    """Read a batch object defensively (a missing count is 0, a missing file None)."""
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise JobStopped("stopped: the Batch API answered with something that is not a batch "
                         "object; check --base-url")
    counts: dict[str, Any] = _table(data.get("request_counts"))
    errors: dict[str, Any] = _table(data.get("errors"))
    lines = []
    for item in errors.get("data") or []:
        if isinstance(item, dict):
            where = f" (line {item['line']})" if item.get("line") is not None else ""
            code = f"{item['code']}: " if item.get("code") else ""
            lines.append(f"{code}{item.get('message') or 'no reason given'}{where}")
    metadata: dict[str, Any] = _table(data.get("metadata"))

    def text(name: str) -> str | None:
        value = data.get(name)
        return value if isinstance(value, str) and value else None

    def count(name: str) -> int:
        value = counts.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return BatchInfo(
        id=data["id"], status=str(data.get("status") or "unknown"),
        input_file_id=text("input_file_id"), output_file_id=text("output_file_id"),
        error_file_id=text("error_file_id"), total=count("total"),
        completed=count("completed"), failed=count("failed"),
        metadata={str(k): str(v) for k, v in metadata.items()}, errors=tuple(lines),
        created_at=float(data["created_at"]) if isinstance(data.get("created_at"), int) else 0.0,
    )


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class BatchApi:
    """Calls of the Batch API on the run's session; transient failures are retried here."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, key: Secret | None,
                 timeout: float, sleep: Callable[[float], Awaitable[None]]) -> None:
        self._session = session
        self._base = base_url
        self._headers = request_headers(key)
        self._key_hint = key_hint(key)
        self._headers.pop("Content-Type")  # JSON or multipart: aiohttp sets it per call
        self._scrub = (key.reveal(),) if key else ()
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self._sleep = sleep
        self._policy = RetryPolicy(max_attempts=ATTEMPTS)
        self._rng = random.Random()

    async def check(self) -> None:
        """Is there a Batch API? (NoBatchApi, exit 2, before anything is uploaded.)"""
        await self._call("GET", "/batches", "list batches", params={"limit": "1"}, collection=True)

    async def upload(self, name: str, content: bytes) -> str:
        """Upload a batch input file (`purpose=batch`); its file id."""

        def form() -> aiohttp.FormData:  # a FormData is spent once sent: one per attempt
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field("file", content, filename=name, content_type="application/jsonl")
            return data

        answer = await self._call("POST", "/files", f"upload {name}", form=form, collection=True)
        file_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(file_id, str):
            raise JobStopped("stopped: uploading a batch file gave no file id; check --base-url")
        return file_id

    async def create(self, file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        """Create a batch of chat completions over an uploaded file, within 24 h."""
        body = {"input_file_id": file_id, "endpoint": BATCH_URL,
                "completion_window": "24h", "metadata": dict(metadata)}
        return batch_info(await self._call("POST", "/batches", "create a batch", json=body,
                                           collection=True))

    async def retrieve(self, batch_id: str) -> BatchInfo:
        """The batch's status and counts (BatchGone: unknown to the provider)."""
        return batch_info(await self._call("GET", f"/batches/{batch_id}", f"read {batch_id}"))

    async def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the provider to cancel a batch; it goes through `cancelling` to `cancelled`."""
        return batch_info(await self._call("POST", f"/batches/{batch_id}/cancel",
                                           f"cancel {batch_id}"))

    async def find(self, wanted: Callable[[BatchInfo], bool],
                   since: float = 0.0) -> list[BatchInfo]:
        """The account's batches that `wanted` picks, newest first, paging back to `since`
        (Unix seconds: the list is newest first, so older pages cannot hold what is sought)."""
        found: list[BatchInfo] = []
        after: str | None = None
        while True:
            params = {"limit": str(LIST_PAGE)} | ({"after": after} if after else {})
            page = await self._call("GET", "/batches", "list batches", params=params,
                                    collection=True)
            items = page.get("data") if isinstance(page, dict) else None
            if not isinstance(items, list) or not items:
                return found
            infos = [batch_info(item) for item in items]
            found.extend(info for info in infos if wanted(info))
            if not page.get("has_more") or infos[-1].created_at < since:
                return found
            after = infos[-1].id

    async def content(self, file_id: str) -> bytes:
        """The whole content of a file (an output or error file: one JSON line per request)."""
        raw = await self._call("GET", f"/files/{file_id}/content", f"download {file_id}",
                               raw=True)
        assert isinstance(raw, bytes)
        return raw

    async def _call(self, method: str, path: str, what: str, *, params: Mapping[str, str]
                    | None = None, json: Any = None, form: Callable[[], aiohttp.FormData]
                    | None = None, collection: bool = False, raw: bool = False) -> Any:
        """One call, retried while it fails transiently; the answer's JSON (or bytes)."""
        failed = 0
        while True:
            status, body, headers = await self._send(method, path, params, json, form)
            if status == 200:
                if raw:
                    return body
                try:
                    return orjson.loads(body)
                except orjson.JSONDecodeError:
                    failure = Failure(Kind.RETRY, f"{what}: the answer is not JSON", 200)
            elif status == 0:
                failure = Failure(Kind.RETRY, f"{what}: {body.decode()}")
            else:
                failure = self._refused(status, body, headers, path, what, collection)
            failed += 1
            if failure.kind is not Kind.RETRY or failed >= ATTEMPTS:
                raise JobStopped(f"stopped: Batch API: {failure.message}" + (
                    "; run the same command again later: submitted batches are kept"
                    if failure.kind is Kind.RETRY else ""))
            await self._sleep(self._policy.delay(failed, failure.retry_after, self._rng))

    def _refused(self, status: int, body: bytes, headers: Mapping[str, str], path: str,
                 what: str, collection: bool) -> Failure:
        try:
            data: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = {"error": {"message": body.decode("utf-8", "replace").strip()[:300]}}
        failure = classify_http(status, data, parse_retry_after(headers), self._key_hint)
        message = f"{what}: {failure.message}"
        for secret in self._scrub:
            message = message.replace(secret, "***")
        message = " ".join(message.split())[:500]
        if status == 404 and collection:
            raise NoBatchApi(
                f"the provider at {self._base} has no Batch API (HTTP 404 on {path}); "
                "use --backend online (nothing was sent)")
        if status == 404:
            raise BatchGone(message)
        return Failure(failure.kind, message, status, failure.retry_after)

    async def _send(self, method: str, path: str, params: Mapping[str, str] | None, json: Any,
                    form: Callable[[], aiohttp.FormData] | None
                    ) -> tuple[int, bytes, Mapping[str, str]]:
        """(status, body, headers); status 0 with the reason when no answer came."""
        data: Any = form() if form is not None else None
        if json is not None:
            data = orjson.dumps(json)
        headers = dict(self._headers)
        if json is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method, self._base + path, params=params, data=data, headers=headers,
                timeout=self._timeout, allow_redirects=False,
            ) as resp:
                return resp.status, await resp.read(), resp.headers
        except TimeoutError:
            return 0, b"timeout", {}
        except aiohttp.ClientConnectorError as exc:
            return 0, f"connection error: cannot connect to {exc.host}:{exc.port}".encode(), {}
        except (aiohttp.ClientError, OSError) as exc:
            return 0, f"connection error: {type(exc).__name__}".encode(), {}


def new_session(concurrency: int, tls: bool = True) -> aiohttp.ClientSession:
    """The Batch API's session: files and batches over aiohttp (the chat requests of an online
    run go over `sending.connections`), a small pool, TLS verified."""
    connector = aiohttp.TCPConnector(
        limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=300,
        ssl=ssl.create_default_context() if tls else False,  # loading the CAs takes 10 ms
    )
    # An API client has no use for cookies: none are kept, none are sent.
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
