"""Send: one request over the run's aiohttp session, mapped to an Answer or a classified Failure.

This is the only module that knows aiohttp's exceptions; everything it returns is plain data.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, NamedTuple

import aiohttp
import orjson
from multidict import CIMultiDict
from yarl import URL

from batchrun.data.openai_api import CHAT_PATH
from batchrun.protocol.answers import Answer, parse_answer
from batchrun.protocol.retry import Failure, Kind, classify_http, parse_retry_after
from batchrun.settings.keys import Secret

# An answer larger than this is refused, not buffered. The longest real answers (128k completion
# tokens, ~4 bytes each, JSON-escaped) stay under ~3 MiB; 8 MiB leaves room and bounds memory to
# concurrency x 8 MiB even when a server or a gzip bomb sends without end.
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_RETRY_AFTER = 300.0  # seconds; a longer retry-after (a daily quota, a hostile header) stops
USER_AGENT = "batchrun/0.1"


class Reply(NamedTuple):
    """What one attempt produced: an Answer or a Failure, plus the headers for the limiter."""

    answer: Answer | None
    failure: Failure | None
    headers: Mapping[str, str]


NO_HEADERS: Mapping[str, str] = {}


def request_headers(key: Secret | None, *, hidden: bool = False) -> dict[str, str]:
    """The headers every request carries; `hidden` shows the key as *** (plan's sample)."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if key is not None:
        headers["Authorization"] = "Bearer " + ("***" if hidden else key.reveal())
    return headers


def key_hint(key: Secret | None) -> str:
    """What to check when the server refuses the key: where it came from (never the key)."""
    if key is None:
        return "no API key was sent: set one (batchrun plan names the variable)"
    return f"check the API key (it came from {key.source})"


class Sender:
    """Posts request bodies to the chat-completions URL with the run's one session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, key: Secret | None,
                 timeout: float, scrub: tuple[str, ...] = ()) -> None:
        self._session = session
        self._url = URL(base_url + CHAT_PATH)  # parsed once, not per request
        self._headers = CIMultiDict(request_headers(key))  # aiohttp would convert a dict per request
        self._key_hint = key_hint(key)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_s = timeout
        # Servers sometimes echo request headers in error bodies; these strings are cut out.
        self._scrub = tuple(s for s in scrub if s)

    async def send(self, body: bytes) -> Reply:
        """One attempt; never raises for anything the network or the server does."""
        responded = False  # the status line came: the server is there, however it went on
        try:
            # Redirects are not followed: they would carry the prompts (and, on the same origin,
            # the key) to an address the user never named.
            async with self._session.post(
                self._url, data=body, headers=self._headers, timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                responded = True
                raw = await _read_limited(resp)
                headers = resp.headers
                status = resp.status
        except TimeoutError:
            return _fail(Kind.RETRY, f"timeout: no complete answer within {self._timeout_s:g} s",
                         unreachable=not responded)
        except _TooLarge:
            # Not retried: a provider bills an answer it sent, and would likely send it again.
            return _fail(Kind.ROW, f"answer larger than {MAX_BODY_BYTES // 2**20} MiB refused; "
                         "lower --max-tokens if the answers are really this long")
        except aiohttp.ClientConnectorCertificateError as exc:
            return _fail(Kind.JOB, f"TLS certificate of {exc.host} could not be verified")
        except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS handshake, unreachable
            return _fail(Kind.RETRY, f"connection error: cannot connect to {exc.host}:{exc.port} "
                         f"({_cause(exc.os_error)})", unreachable=True)
        except aiohttp.ServerDisconnectedError:
            return _fail(Kind.RETRY, "connection error: server closed the connection")
        except aiohttp.ClientPayloadError:
            return _fail(Kind.RETRY, "connection error: answer cut off")
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            return _fail(Kind.RETRY, f"connection error: TLS failed ({type(exc).__name__})",
                         unreachable=not responded)
        except (aiohttp.ClientError, OSError) as exc:
            return _fail(Kind.RETRY, f"connection error: {type(exc).__name__}")
        if status == 200:
            answer, failure = parse_answer(raw)
            return Reply(answer, self._scrubbed(failure) if failure else None, headers)
        if 300 <= status < 400:
            where = headers.get("Location", "(no Location)")
            return Reply(None, self._scrubbed(Failure(
                Kind.JOB, f"HTTP {status} redirect to {where}: batchrun does not follow "
                "redirects; set --base-url to the final address", status)), headers)
        try:
            data: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # Whole, not a slice: a cut could split an echoed key and leave a prefix unscrubbed.
            data = {"error": {"message": raw.decode("utf-8", "replace").strip()}}
        failure = _patience(classify_http(status, data, parse_retry_after(headers),
                                          self._key_hint))
        return Reply(None, self._scrubbed(failure), headers)

    def _scrubbed(self, failure: Failure) -> Failure:
        """One line of at most 500 characters, with every secret cut out before it is cut short."""
        message = failure.message
        for secret in self._scrub:
            message = message.replace(secret, "***")
        message = " ".join(message.split())[:500]
        return failure if message == failure.message else replace(failure, message=message)


class _TooLarge(Exception):
    pass


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    """The body, counted as it is decompressed: Content-Length may be absent or compressed."""
    length = resp.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise _TooLarge
    if length is not None and "Content-Encoding" not in resp.headers:
        return await resp.read()  # the parser stops at Content-Length: nothing more can come
    chunks, size = [], 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _patience(failure: Failure) -> Failure:
    """A server asking to wait longer than MAX_RETRY_AFTER stops the job instead of freezing it."""
    wait = failure.retry_after
    if failure.kind is not Kind.RETRY or wait is None or wait <= MAX_RETRY_AFTER:
        return failure
    return Failure(Kind.JOB, f"{failure.message}; the server asks to wait {wait:,.0f} s "
                   "(retry-after): run the same command again later to resume", failure.status)


def _cause(error: OSError) -> str:
    """Why a connection failed, as a person reads it: "Connection refused", "Name or service not
    known" (asyncio's own text for a refusal only repeats the address)."""
    if isinstance(error.errno, int) and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or type(error).__name__


def _fail(kind: Kind, message: str, *, unreachable: bool = False) -> Reply:
    return Reply(None, Failure(kind, message, unreachable=unreachable), NO_HEADERS)


def new_session(concurrency: int, tls: bool = True) -> aiohttp.ClientSession:
    """The run's one session: a connection pool sized to the workers, TLS verified."""
    connector = aiohttp.TCPConnector(
        limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=300,
        ssl=ssl.create_default_context() if tls else False,  # loading the CAs takes 10 ms
    )
    # An API client has no use for cookies: none are kept, none are sent.
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
