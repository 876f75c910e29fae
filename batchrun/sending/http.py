"""Send: one chat-completions request over the run's connections, mapped to an Answer or a
classified Failure.

This is the only module that knows the connections' exceptions (`connections`); everything it
returns is plain data.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, NamedTuple

import orjson

from batchrun.data.openai_api import CHAT_PATH
from batchrun.protocol.answers import Answer, parse_answer
from batchrun.protocol.retry import Failure, Kind, classify_http, parse_retry_after
from batchrun.sending.connections import (
    ACCEPT_ENCODING,
    MAX_BODY_BYTES,
    Closed,
    Connections,
    Deadline,
    Malformed,
    TooLarge,
)
from batchrun.settings.keys import Secret

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
    """Posts request bodies to the chat-completions URL over the run's connections."""

    def __init__(self, connections: Connections, key: Secret | None, timeout: float,
                 scrub: tuple[str, ...] = ()) -> None:
        self._connections = connections
        origin = connections.origin
        lines = [f"POST {origin.target} HTTP/1.1", f"Host: {origin.host_header}",
                 *(f"{name}: {value}" for name, value in request_headers(key).items()),
                 "Accept: */*", f"Accept-Encoding: {ACCEPT_ENCODING}", "Content-Length: "]
        self._head = "\r\n".join(lines).encode("latin-1")  # built once, not per request
        self._key_hint = key_hint(key)
        self._host = origin.host
        self._where = f"{origin.host}:{origin.port}"
        self._timeout = timeout
        # Servers sometimes echo request headers in error bodies; these strings are cut out.
        self._scrub = tuple(s for s in scrub if s)

    async def send(self, body: bytes) -> Reply:
        """One attempt; never raises for anything the network or the server does."""
        try:
            # Redirects are not followed: they would carry the prompts (and, on the same origin,
            # the key) to an address the user never named.
            status, headers, raw = await self._connections.post(
                b"%s%d\r\n\r\n%s" % (self._head, len(body), body), self._timeout)
        except Deadline as exc:
            return _fail(Kind.RETRY, f"timeout: no complete answer within {self._timeout:g} s",
                         unreachable=not exc.responded)
        except TooLarge:
            # Not retried: a provider bills an answer it sent, and would likely send it again.
            return _fail(Kind.ROW, f"answer larger than {MAX_BODY_BYTES // 2**20} MiB refused; "
                         "lower --max-tokens if the answers are really this long")
        except (Closed, Malformed) as exc:
            return _fail(Kind.RETRY, f"connection error: {exc}")
        except ssl.SSLCertVerificationError:
            return _fail(Kind.JOB, f"TLS certificate of {self._host} could not be verified")
        except ssl.SSLError as exc:
            return _fail(Kind.RETRY, f"connection error: TLS failed ({type(exc).__name__})",
                         unreachable=True)
        except OSError as exc:  # refused, DNS, unreachable: the connection never opened
            return _fail(Kind.RETRY, f"connection error: cannot connect to {self._where} "
                         f"({_cause(exc)})", unreachable=True)
        if status == 200:
            answer, failure = parse_answer(raw)
            return Reply(answer, self._scrubbed(failure) if failure else None, headers)
        if 300 <= status < 400:
            where = headers.get("location", "(no Location)")
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


def connections(base_url: str, concurrency: int) -> Connections:
    """The keep-alive connections of a run (or an endpoint) to its chat-completions URL."""
    return Connections(base_url + CHAT_PATH, concurrency)
