"""HTTP/1.1 for the hot path: keep-alive connections to one origin, POSTs of ready bodies.

    async with Connections(base_url + CHAT_PATH, limit=64) as connections:
        status, headers, body = await connections.post(request, timeout=600.0)

`request` is the whole request, head and body, as bytes (`http.Sender` builds its head once).

A run sends one kind of request, a JSON POST to one URL, tens of thousands of times. aiohttp's
client does for each what a general client must (a request object, header merging, cookies,
proxies, tracing, a task to write the body, a stream to read it): about 60 us of CPU a request on
this machine, more than half of a run's CPU. This does only what that POST needs, on the event
loop's own transports (uvloop's, TLS by the `ssl` module) with llhttp, Node's HTTP parser
(httptools): a third of that, syscalls included (docs/benchmarks.md).

What it keeps of a real client:
- keep-alive connections, the most recently used first, none idle longer than KEEP_IDLE (servers
  close idle ones after 5 s and more; one closed meanwhile is dropped when its close is read);
- at most `limit` connections at once; the rest wait for one;
- Content-Length and chunked bodies, answers read until the connection closes, 1xx skipped,
  gzip and deflate decoded (as asked: `Accept-Encoding: gzip, deflate`);
- a body larger than MAX_BODY_BYTES (after decoding) is refused as it arrives, the connection
  dropped: memory stays bounded by the connections whatever a server sends;
- one deadline per request, connecting included.

What `post` raises; `http.Sender` names each as a person reads it:

    Closed(responded)     the server closed the connection before the answer was whole
    Deadline(responded)   no whole answer by the deadline (waiting and connecting included)
    Malformed             not HTTP/1.1, or a body in an encoding not asked for or cut short
    TooLarge              a body past MAX_BODY_BYTES
    OSError               connecting failed: refused, DNS, unreachable
      ssl.SSLError        the TLS handshake failed (SSLCertVerificationError: the certificate)
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from typing import NamedTuple, cast

import httptools
from yarl import URL

# An answer larger than this is refused, not buffered. The longest real answers (128k completion
# tokens, ~4 bytes each, JSON-escaped) stay under ~3 MiB; 8 MiB leaves room and bounds memory to
# concurrency x 8 MiB even when a server or a gzip bomb sends without end.
MAX_BODY_BYTES = 8 * 1024 * 1024
KEEP_IDLE = 4.0  # seconds a connection may sit idle and still be used (servers often allow 5)
ACCEPT_ENCODING = "gzip, deflate"
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
             "deflate": 32 + zlib.MAX_WBITS}  # deflate: zlib-wrapped (or gzip), as sent in practice


class Response(NamedTuple):
    """One whole answer."""

    status: int
    headers: dict[str, str]  # names in lower case; a repeated header's values joined by ", "
    body: bytes


class Closed(Exception):
    """The server closed the connection before the answer was whole. `responded`: the status
    line had come."""

    def __init__(self, responded: bool) -> None:
        super().__init__("answer cut off" if responded else "server closed the connection")
        self.responded = responded


class Malformed(Exception):
    """What the server sent is not HTTP/1.1 (or a body it says is compressed is not)."""


class TooLarge(Exception):
    """The answer grew past MAX_BODY_BYTES."""


class Deadline(Exception):
    """No whole answer within the request's timeout. `responded`: the status line had come."""

    def __init__(self, responded: bool) -> None:
        super().__init__("timeout")
        self.responded = responded


class Origin(NamedTuple):
    """Where the requests go, and what their head names."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    target: str  # the request target: path and query
    host_header: str


def origin_of(url: str) -> Origin:
    """The origin and request target of an http(s) URL (TLS verified with the system's CAs)."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ValueError(f"not an http(s) URL: {url}")
    tls = ssl.create_default_context() if parsed.scheme == "https" else None
    port = parsed.port or (443 if tls else 80)
    host = parsed.raw_host
    netloc = f"[{host}]" if ":" in host else host
    host_header = netloc if parsed.is_default_port() else f"{netloc}:{port}"
    return Origin(host, port, tls, parsed.raw_path_qs or "/", host_header)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    def __init__(self, pool: Connections) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.closed = False
        self._waiter: asyncio.Future[Response] | None = None
        self._refusal: Exception | None = None  # why a callback stopped the parser
        self._reset()

    def _reset(self) -> None:
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._decoder: zlib._Decompress | None = None
        self._responded = False  # the status line of the awaited answer came
        self._informational = False

    # --- the request --------------------------------------------------------------------------

    def send(self, data: bytes, waiter: asyncio.Future[Response]) -> None:
        self._reset()
        self._waiter = waiter
        assert self.transport is not None
        self.transport.write(data)

    def expire(self) -> None:
        """The request's deadline passed: fail it and drop the connection."""
        self._fail(Deadline(self._responded))

    def abandon(self) -> None:
        """The request failed or its caller went away: the connection's state is unknown."""
        self._waiter = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing was asked: a server talking out of turn
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A callback's own refusal (TooLarge, Malformed) stops the parser with its error.
            refusal, self._refusal = self._refusal, None
            self._fail(refusal or Malformed(f"malformed HTTP answer ({exc})"))

    def eof_received(self) -> bool:
        return False  # close the transport: a half-closed connection is of no use

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.discard(self)
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        decoder = self._decoder
        if (exc is None and self._responded and self._until_close()
                and (decoder is None or decoder.eof)):
            # Neither Content-Length nor chunked: the body is what came before a clean close
            # (not a reset; and a compressed one only if its stream ended).
            waiter.set_result(self._response())
        elif isinstance(exc, ssl.SSLError) and not self._responded:
            waiter.set_exception(exc)  # the handshake or the channel failed before any answer
        else:
            waiter.set_exception(Closed(self._responded))

    # --- httptools' callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second answer to one request
            raise self._refuse(Malformed("an answer nothing asked for"))
        self._reset()

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        known = self._headers.get(key)
        self._headers[key] = text if known is None else f"{known}, {text}"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._informational = 100 <= status < 200
        self._responded = not self._informational
        encoding = self._headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", ""):
            wbits = _DECODERS.get(encoding)
            if wbits is None:
                raise self._refuse(Malformed(f"answer in an encoding that was not asked for "
                                             f"({encoding})"))
            self._decoder = zlib.decompressobj(wbits)

    def on_body(self, chunk: bytes) -> None:
        decoder = self._decoder
        if decoder is not None:
            try:
                chunk = decoder.decompress(chunk, MAX_BODY_BYTES + 1 - self._size)
            except zlib.error as exc:
                raise self._refuse(Malformed(f"answer could not be decompressed ({exc})")) from None
            if decoder.unconsumed_tail:
                raise self._refuse(TooLarge())
        self._size += len(chunk)
        if self._size > MAX_BODY_BYTES:
            raise self._refuse(TooLarge())
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        if self._informational:  # 100 Continue and the like: the answer is still to come
            self._reset()
            return
        try:
            response = self._response()
        except Malformed as exc:
            raise self._refuse(exc) from None
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            self.close()
            return
        waiter.set_result(response)
        if self._parser.should_keep_alive() and not self.closed:
            self._pool.release(self)
        else:
            self.close()

    # --- helpers ------------------------------------------------------------------------------

    def _refuse(self, error: Exception) -> Exception:
        """Keep why a callback stops the parser: httptools raises its own error instead."""
        self._refusal = error
        return error

    def _until_close(self) -> bool:
        headers = self._headers
        return "content-length" not in headers and "transfer-encoding" not in headers

    def _response(self) -> Response:
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        decoder = self._decoder
        if decoder is not None:
            if not decoder.eof:  # the framing ended, the compressed stream did not
                raise Malformed("compressed answer cut short")
            body += decoder.flush()
        return Response(self._parser.get_status_code(), self._headers, body)


class Connections:
    """The keep-alive connections of one run (or one endpoint) to one URL."""

    def __init__(self, url: str, limit: int) -> None:
        self.origin = origin_of(url)
        self._limit = max(1, limit)
        self._idle: list[_Connection] = []  # a stack: the most recently used on top
        self._busy: set[_Connection] = set()
        self._opening = 0
        self._queue: deque[asyncio.Future[None]] = deque()  # callers waiting for a connection
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Connections:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def post(self, data: bytes, timeout: float) -> Response:
        """Send `data` (a whole request: head and body) and wait for the whole answer."""
        loop = self._loop
        if loop is None:  # once: on Python 3.11 each get_running_loop() is a getpid() call
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout
        connection = self._take(now)
        if connection is None:
            try:
                connection = await self._open(loop, deadline)
            except TimeoutError as exc:
                if exc.errno is not None:
                    raise  # the system's own connect timeout: an OSError of connecting
                raise Deadline(False) from None
        waiter: asyncio.Future[Response] = loop.create_future()
        timer = loop.call_at(deadline, connection.expire)
        try:
            connection.send(data, waiter)
            return await waiter  # the connection went back to the idle ones as it completed
        except BaseException:
            connection.abandon()  # failed, timed out or cancelled: its state is unknown
            self._busy.discard(connection)
            self._wake()
            raise
        finally:
            timer.cancel()

    def _take(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.closed or now - connection.idle_since > KEEP_IDLE:
                connection.close()
                continue
            self._busy.add(connection)
            return connection
        return None

    async def _open(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        """A new connection, once fewer than `limit` are open (or one freed meanwhile)."""
        async with asyncio.timeout_at(deadline):
            while len(self._busy) + self._opening >= self._limit:
                waiter = loop.create_future()
                self._queue.append(waiter)
                try:
                    await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled():
                        self._wake()  # woken, then cancelled or out of time: pass the turn on
                    else:
                        waiter.cancel()
                    raise
                found = self._take(loop.time())
                if found is not None:
                    return found
            origin = self.origin
            self._opening += 1
            try:
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self), origin.host, origin.port, ssl=origin.tls,
                    server_hostname=origin.host if origin.tls else None)
            finally:
                self._opening -= 1
                self._wake()
        assert isinstance(protocol, _Connection)
        if self._closed:
            protocol.close()
            raise Closed(False)
        self._busy.add(protocol)
        return protocol

    def release(self, connection: _Connection) -> None:
        """An answer came whole and the connection may carry another."""
        self._busy.discard(connection)
        if self._closed:
            connection.close()
            return
        assert self._loop is not None
        connection.idle_since = self._loop.time()
        self._idle.append(connection)
        self._wake()

    def discard(self, connection: _Connection) -> None:
        """The connection closed (the server's side, or ours)."""
        self._busy.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        self._wake()

    def _wake(self) -> None:
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every connection; a request still waiting on one fails as `Closed`."""
        self._closed = True
        for connection in (*self._idle, *self._busy):
            connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run
