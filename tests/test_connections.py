"""The hot path's HTTP/1.1 client (`sending/connections.py`) against real servers on 127.0.0.1.

aiohttp.web servers prove what a well-formed server sends: keep-alive reuse, the most recently used
connection first, at most `limit` connections, chunked and gzip/deflate bodies, error statuses with
their headers, the size limit, deadlines before and after the headers, TLS (verified against a CA
made for the run, and refused without it). Raw asyncio servers send the exact bytes aiohttp will
not: a body ended by the close, 1xx before the answer, garbage, closes and resets at every point,
`Connection: close`, an idle connection closed or grown too old, a refusal, a cancelled post. A few
tests go through `http.Sender` to prove how each failure reads to a person. Production runs on
uvloop, so that is the default loop; the asyncio loop is checked too where transports differ.
Nothing inside the package is mocked; KEEP_IDLE, a module constant, is lowered once.
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import socket
import ssl
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import uvloop
from aiohttp import web
from multidict import CIMultiDict

from batchrun.protocol.retry import Kind
from batchrun.sending import connections as connections_module
from batchrun.sending.connections import (
    MAX_BODY_BYTES,
    Closed,
    Connections,
    Deadline,
    Malformed,
    Response,
    TooLarge,
)
from batchrun.sending.http import Reply, Sender, connections
from batchrun.settings.keys import Secret

T = TypeVar("T")
PATH = "/v1/chat/completions"
LOOPS = ["asyncio", "uvloop"]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"


def _run(main: Coroutine[Any, Any, T], loop: str = "uvloop") -> T:
    """Production runs on uvloop (batchrun/api.py); the asyncio loop is checked where it differs."""
    return uvloop.run(main) if loop == "uvloop" else asyncio.run(main)


def _request(port: int, body: bytes = b"{}") -> bytes:
    """A whole request as `Connections.post` takes it: head and body."""
    return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Accept-Encoding: gzip, deflate\r\nContent-Length: %d\r\n\r\n%s"
            % (PATH.encode(), port, len(body), body))


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}{PATH}"


# --- aiohttp.web servers --------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def _app(handler: Handler) -> AsyncIterator[int]:
    """An aiohttp.web server answering POST PATH with `handler`; yields its port."""
    app = web.Application()
    app.router.add_post(PATH, handler)
    # A handler still sleeping when the client hangs up is cancelled, so cleanup does not wait.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def _peer_port(request: web.Request) -> int:
    assert request.transport is not None
    port: int = request.transport.get_extra_info("peername")[1]
    return port


def _post_to(handler: Handler, timeout: float = 5.0) -> Response:
    """One post to an aiohttp.web server answering with `handler`: its answer, or what it raised."""
    async def main() -> Response:
        async with _app(handler) as port, Connections(_url(port), 1) as pool:
            return await pool.post(_request(port), timeout)

    return _run(main())


# --- raw servers ----------------------------------------------------------------------------------

@dataclass
class Served:
    """What a raw server saw: its port, each connection's client port and when each one ended."""

    port: int = 0
    peers: list[int] = field(default_factory=list)
    ended: list[asyncio.Event] = field(default_factory=list)  # set when a connection's handler ends


# script(connection index from 0, reader, writer): one connection's whole exchange
Script = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _raw(script: Script, sock: socket.socket | None = None) -> AsyncIterator[Served]:
    """A server writing exact bytes; every connection and task it opened is closed on the way out."""
    served = Served()
    tasks: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(served.peers)
        served.peers.append(writer.get_extra_info("peername")[1])
        ended = asyncio.Event()
        served.ended.append(ended)
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await script(index, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: what the test is about, not a server failure
        finally:
            writer.close()
            ended.set()

    if sock is None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
    else:
        server = await asyncio.start_server(handle, sock=sock)
    served.port = server.sockets[0].getsockname()[1]
    try:
        yield served
    finally:
        server.close()
        # Hung up from here, each script's read ends and it returns; a cancel is the last resort
        # (asyncio's stream callback logs a cancelled handler as an error).
        for writer in writers:
            writer.close()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """One request, head and body (by its Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def _answer_each_with(*answers: bytes) -> Script:
    """Every connection answers its requests with `answers` in turn (then waits for the hang-up)."""

    async def script(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await _read_request(reader)
            writer.write(answer)
            await writer.drain()
        await reader.read()

    return script


def _post_once(script: Script, loop: str = "uvloop") -> Response:
    """One post to a raw server running `script`: its answer, or what the post raised."""
    async def main() -> Response:
        async with _raw(script) as served, Connections(_url(served.port), 1) as pool:
            return await pool.post(_request(served.port), 5.0)

    return _run(main(), loop)


async def _ended(served: Served, index: int) -> bool:
    """Whether connection `index` ended (the client dropped it) within a second."""
    try:
        await asyncio.wait_for(served.ended[index].wait(), 1.0)
    except TimeoutError:
        return False
    return True


# --- keep-alive and the limit (aiohttp.web) -------------------------------------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_sequential_posts_reuse_one_keep_alive_connection(loop: str) -> None:
    ports: list[int] = []

    async def echo(request: web.Request) -> web.Response:
        ports.append(_peer_port(request))
        return web.Response(body=await request.read(), content_type="application/json")

    async def main() -> list[Response]:
        async with _app(echo) as port, Connections(_url(port), 4) as pool:
            return [await pool.post(_request(port, b'{"n": %d}' % n), 5.0) for n in range(5)]

    responses = _run(main(), loop)
    assert [r.status for r in responses] == [200] * 5
    assert [r.body for r in responses] == [b'{"n": %d}' % n for n in range(5)]
    assert len(ports) == 5 and len(set(ports)) == 1  # one connection carried all five


def test_the_most_recently_used_idle_connection_is_taken_first() -> None:
    # Three connections finish in the order of their delays; the last to finish is on top.
    ports: dict[bytes, int] = {}

    async def slow(request: web.Request) -> web.Response:
        body = await request.read()
        ports[body] = _peer_port(request)
        await asyncio.sleep(float(body) if body != b"next" else 0)
        return web.Response(body=body)

    async def main() -> None:
        async with _app(slow) as port, Connections(_url(port), 3) as pool:
            # Launched in an order that is neither the finishing order nor its reverse.
            await asyncio.gather(*(pool.post(_request(port, d), 5.0) for d in (b"0.05", b"0.15", b"0")))
            await pool.post(_request(port, b"next"), 5.0)

    _run(main())
    assert len({ports[b"0"], ports[b"0.05"], ports[b"0.15"]}) == 3
    assert ports[b"next"] == ports[b"0.15"]


def test_no_more_than_limit_connections_are_open_at_once_and_all_are_answered() -> None:
    state = {"now": 0, "most": 0}
    ports: set[int] = set()

    async def slow_echo(request: web.Request) -> web.Response:
        ports.add(_peer_port(request))
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        try:
            await asyncio.sleep(0.05)
            return web.Response(body=await request.read())
        finally:
            state["now"] -= 1

    async def main() -> list[Response]:
        async with _app(slow_echo) as port, Connections(_url(port), 2) as pool:
            return await asyncio.gather(*(pool.post(_request(port, b"%d" % n), 5.0) for n in range(6)))

    responses = _run(main())
    assert [r.body for r in responses] == [b"%d" % n for n in range(6)]  # each its own answer
    assert state["most"] == 2  # both seats used, never a third
    assert len(ports) == 2


# --- bodies and headers (aiohttp.web) -------------------------------------------------------------

def test_a_chunked_answer_is_joined_whole_and_its_connection_kept() -> None:
    parts = [b'{"choices": ', b'[{"message": ', b'{"content": "hi"}', b"}]", b"}"]
    ports: list[int] = []

    async def chunked(request: web.Request) -> web.StreamResponse:
        ports.append(_peer_port(request))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in parts:
            await response.write(part)
            await asyncio.sleep(0.005)  # separate chunks on the wire, not one segment
        await response.write_eof()
        return response

    async def main() -> list[Response]:
        async with _app(chunked) as port, Connections(_url(port), 1) as pool:
            return [await pool.post(_request(port), 5.0) for _ in range(2)]

    responses = _run(main())
    for response in responses:
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.body == b"".join(parts)
    assert len(set(ports)) == 1  # the chunked framing ended the answer: the connection went on


@pytest.mark.parametrize(("encoding", "compress"), [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),  # zlib-wrapped, as servers send "deflate"
])
def test_gzip_and_deflate_answers_are_decoded(encoding: str, compress: Callable[[bytes], bytes]) -> None:
    text = b'{"choices": [{"message": {"content": "' + b"la " * 5000 + b'"}}]}'
    seen: list[str] = []

    async def compressed(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding", ""))
        return web.Response(body=compress(text), headers={"Content-Type": "application/json",
                                                          "Content-Encoding": encoding})

    async def main() -> list[Response]:
        async with _app(compressed) as port, Connections(_url(port), 1) as pool:
            # Twice on one connection: the second answer gets a decoder of its own.
            return [await pool.post(_request(port), 5.0) for _ in range(2)]

    responses = _run(main())
    assert [r.body for r in responses] == [text, text]
    assert seen == ["gzip, deflate"] * 2


def test_an_answer_in_an_unasked_encoding_is_refused_as_malformed() -> None:
    async def brotli(request: web.Request) -> web.Response:
        return web.Response(body=b"\x1b\x03\x00\xf8\xa5", headers={"Content-Encoding": "br"})

    with pytest.raises(Malformed, match=r"encoding that was not asked for \(br\)"):
        _post_to(brotli)


def test_a_corrupt_gzip_body_is_malformed() -> None:
    async def corrupt(request: web.Request) -> web.Response:
        return web.Response(body=b"this is not gzip at all", headers={"Content-Encoding": "gzip"})

    with pytest.raises(Malformed, match="could not be decompressed"):
        _post_to(corrupt)


@pytest.mark.parametrize("status", [429, 500])
def test_error_statuses_come_back_with_their_headers_and_body(status: int) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "slow down"}}, status=status,
                                 headers={"Retry-After": "7", "X-RateLimit-Remaining-Requests": "0"})

    response = _post_to(refuse)
    assert response.status == status
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.body == b'{"error": {"message": "slow down"}}'


def test_header_names_are_lower_cased_and_a_repeated_header_is_joined() -> None:
    async def headers(request: web.Request) -> web.Response:
        sent = CIMultiDict([("X-Mixed-Case", "Keep-This-Case"), ("X-Thing", "a"), ("X-Thing", "b")])
        return web.Response(body=b"{}", headers=sent)

    response = _post_to(headers)
    assert response.headers["x-mixed-case"] == "Keep-This-Case"  # the name lowered, not the value
    assert response.headers["x-thing"] == "a, b"
    assert all(name == name.lower() for name in response.headers)


def test_a_body_of_exactly_the_limit_is_kept_and_one_byte_more_is_refused() -> None:
    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(await request.read()))

    async def main() -> tuple[Response, BaseException]:
        async with _app(sized) as port, Connections(_url(port), 1) as pool:
            kept = await pool.post(_request(port, b"%d" % MAX_BODY_BYTES), 5.0)
            try:
                await pool.post(_request(port, b"%d" % (MAX_BODY_BYTES + 1)), 5.0)
            except TooLarge as exc:
                return kept, exc
            raise AssertionError("a body over the limit was accepted")

    kept, refused = _run(main())
    assert len(kept.body) == MAX_BODY_BYTES
    assert isinstance(refused, TooLarge)


# --- deadlines (aiohttp.web) ----------------------------------------------------------------------

def _deadline_of(handler: Handler, timeout: float) -> tuple[Deadline, float]:
    """The Deadline a post to `handler` ends in, and how long the post took."""
    started = time.monotonic()
    with pytest.raises(Deadline) as caught:
        _post_to(handler, timeout)
    return caught.value, time.monotonic() - started


def test_a_slow_answer_hits_the_deadline_as_not_responded() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response(body=b"{}")

    deadline, took = _deadline_of(slow, 0.2)
    assert deadline.responded is False
    assert took < 1.5


def test_an_answer_stalled_after_its_headers_hits_the_deadline_as_responded() -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)  # a StreamResponse sends its headers at once
        await response.write(b'{"choices": [')
        await asyncio.sleep(10)
        return response

    deadline, took = _deadline_of(stall, 0.3)
    assert deadline.responded is True
    assert took < 1.5


# --- exact bytes (raw servers) --------------------------------------------------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_a_body_ended_by_the_close_is_returned_whole(loop: str) -> None:
    async def until_close(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"part": 1, ')
        await writer.drain()
        await asyncio.sleep(0.02)  # a second segment: the body is what came before the close
        writer.write(b'"part2": 2}')
        await writer.drain()

    async def main() -> tuple[list[Response], Served]:
        async with _raw(until_close) as served, Connections(_url(served.port), 1) as pool:
            return [await pool.post(_request(served.port), 5.0) for _ in range(2)], served

    responses, served = _run(main(), loop)
    assert [(r.status, r.body) for r in responses] == [(200, b'{"part": 1, "part2": 2}')] * 2
    assert len(served.peers) == 2  # a connection ended by its close is not reused


def test_a_gzip_body_ended_by_the_close_is_decoded() -> None:
    text = b'{"content": "' + b"ok " * 1000 + b'"}'

    async def until_close(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n" + gzip.compress(text))
        await writer.drain()

    assert _post_once(until_close).body == text


@pytest.mark.parametrize("loop", LOOPS)
def test_a_body_ended_by_a_reset_is_cut_off_not_whole(loop: str) -> None:
    async def reset(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"choices": [')
        await writer.drain()
        await asyncio.sleep(0.02)
        # SO_LINGER 0: the close is an RST, as a crashing proxy or a middlebox sends.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
        writer.transport.abort()

    with pytest.raises(Closed) as caught:
        _post_once(reset, loop)
    assert caught.value.responded is True


def test_a_gzip_body_cut_by_the_close_is_cut_off_not_whole() -> None:
    text = b'{"content": "' + b"".join(b"%d " % n for n in range(5000)) + b'"}'
    packed = gzip.compress(text, mtime=0)

    async def cut(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n" + packed[: len(packed) // 2])
        await writer.drain()

    # Half a gzip stream, then a clean close: its first half must not pass as the whole answer.
    with pytest.raises(Closed) as caught:
        _post_once(cut)
    assert caught.value.responded is True


def test_interim_1xx_answers_are_skipped() -> None:
    answer = (b"HTTP/1.1 100 Continue\r\nX-Interim: 100\r\n\r\n"
              b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
              + OK % (9, b'{"ok": 1}'))

    async def main() -> tuple[list[Response], Served]:
        async with _raw(_answer_each_with(answer, answer)) as served, \
                Connections(_url(served.port), 1) as pool:
            return [await pool.post(_request(served.port), 5.0) for _ in range(2)], served

    responses, served = _run(main())
    for response in responses:
        assert (response.status, response.body) == (200, b'{"ok": 1}')
        assert "x-interim" not in response.headers and "link" not in response.headers
    assert len(served.peers) == 1  # the real answer ended the exchange; the connection went on


def test_bytes_that_are_not_http_are_malformed() -> None:
    garbage = _answer_each_with(b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n")
    with pytest.raises(Malformed, match="malformed HTTP answer"):
        _post_once(garbage)


def test_a_second_answer_nobody_asked_for_drops_the_connection() -> None:
    # Two answers in one write: the first is the answer; the second must not be kept for the next.
    twice = OK % (7, b'"first"') + OK % (8, b'"second"')

    async def main() -> tuple[Response, Response, Served]:
        async with _raw(_answer_each_with(twice, twice)) as served, \
                Connections(_url(served.port), 1) as pool:
            first = await pool.post(_request(served.port), 5.0)
            await asyncio.sleep(0.05)
            return first, await pool.post(_request(served.port), 5.0), served

    first, second, served = _run(main())
    assert first.body == second.body == b'"first"'
    assert len(served.peers) == 2


def test_a_close_before_any_byte_is_closed_not_responded() -> None:
    async def hang_up(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)

    with pytest.raises(Closed) as caught:
        _post_once(hang_up)
    assert caught.value.responded is False
    assert str(caught.value) == "server closed the connection"


@pytest.mark.parametrize("cut", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b'{"choices": [',
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b'd\r\n{"choices": [\r\n',
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 500\r\n\r\n" + gzip.compress(b"{}")[:10],
], ids=["content-length", "chunked", "gzip"])
def test_a_close_mid_body_is_closed_as_responded(cut: bytes) -> None:
    async def cut_off(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(cut)
        await writer.drain()
        await asyncio.sleep(0.02)  # the head is read before the close: the answer had begun

    with pytest.raises(Closed) as caught:
        _post_once(cut_off)
    assert caught.value.responded is True
    assert str(caught.value) == "answer cut off"


@pytest.mark.parametrize("loop", LOOPS)
def test_an_answer_with_connection_close_is_not_reused(loop: str) -> None:
    after: list[bytes] = []

    async def closing(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        # The server keeps its side open: only the client can tell not to send here again.
        after.append(await reader.read())

    async def main() -> tuple[list[Response], Served]:
        async with _raw(closing) as served, Connections(_url(served.port), 1) as pool:
            return [await pool.post(_request(served.port), 5.0) for _ in range(2)], served

    responses, served = _run(main(), loop)
    assert [(r.status, r.body) for r in responses] == [(200, b"{}")] * 2
    assert len(served.peers) == 2
    assert after[0] == b""  # the first connection got no second request, only the hang-up


@pytest.mark.parametrize("loop", LOOPS)
def test_a_keep_alive_connection_the_server_closed_while_idle_is_not_reused(loop: str) -> None:
    async def answer_then_close(index: int, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(OK % (2, b"{}"))  # keep-alive by HTTP/1.1's default
        await writer.drain()
        await asyncio.sleep(0.01)  # closed after the answer, as an idle timeout does

    async def main() -> tuple[list[Response], Served]:
        async with _raw(answer_then_close) as served, Connections(_url(served.port), 1) as pool:
            first = await pool.post(_request(served.port), 5.0)
            await asyncio.sleep(0.1)  # the close arrives and is read while the connection is idle
            return [first, await pool.post(_request(served.port), 5.0)], served

    responses, served = _run(main(), loop)
    assert [(r.status, r.body) for r in responses] == [(200, b"{}")] * 2
    assert len(served.peers) == 2


def test_an_idle_connection_older_than_keep_idle_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections_module, "KEEP_IDLE", 0.2)

    async def main() -> tuple[list[Response], Served, bool]:
        serve = _answer_each_with(*[OK % (2, b"{}")] * 3)
        async with _raw(serve) as served, Connections(_url(served.port), 1) as pool:
            first = await pool.post(_request(served.port), 5.0)
            second = await pool.post(_request(served.port), 5.0)  # at once: still fresh, reused
            await asyncio.sleep(0.3)
            third = await pool.post(_request(served.port), 5.0)
            return [first, second, third], served, await _ended(served, 0)

    responses, served, first_ended = _run(main())
    assert [r.status for r in responses] == [200] * 3
    assert len(served.peers) == 2
    assert first_ended  # the stale connection was closed, not left open


@pytest.mark.parametrize("loop", LOOPS)
def test_a_refused_connection_raises_its_os_error_and_frees_its_seat(loop: str) -> None:
    async def main() -> tuple[OSError, Response]:
        # Bound but not listening: refused. Listening later, on the same port: answered.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        async with Connections(_url(port), 1) as pool:
            try:
                await pool.post(_request(port), 5.0)
            except OSError as exc:
                refused = exc
            else:
                sock.close()
                raise AssertionError("a port nobody listens on answered")
            async with _raw(_answer_each_with(OK % (2, b"{}")), sock=sock):
                return refused, await pool.post(_request(port), 5.0)  # limit 1: the seat is free

    refused, later = _run(main(), loop)
    assert refused.errno == errno.ECONNREFUSED
    assert later.status == 200


@pytest.mark.parametrize("loop", LOOPS)
def test_a_cancelled_post_drops_its_connection_and_the_next_post_opens_another(loop: str) -> None:
    async def first_hangs(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        if index == 0:
            await reader.read()  # no answer; ends when the client hangs up
            return
        writer.write(OK % (2, b"{}"))
        await writer.drain()
        await reader.read()

    async def main() -> tuple[bool, Response, Served]:
        async with _raw(first_hangs) as served, Connections(_url(served.port), 1) as pool:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pool.post(_request(served.port), 5.0), 0.1)
            dropped = await _ended(served, 0)
            return dropped, await pool.post(_request(served.port), 5.0), served

    dropped, later, served = _run(main(), loop)
    assert dropped  # the server saw the cancelled post's connection close
    assert later.status == 200
    assert len(served.peers) == 2


def test_a_post_waiting_for_a_seat_gives_up_at_its_deadline() -> None:
    async def hang(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def main() -> float:
        async with _raw(hang) as served, Connections(_url(served.port), 1) as pool:
            holder = asyncio.create_task(pool.post(_request(served.port), 5.0))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            try:
                # The one seat is taken: the deadline counts the wait for it, too.
                with pytest.raises(Deadline) as waited:
                    await pool.post(_request(served.port), 0.2)
                assert not waited.value.responded
                return time.monotonic() - started
            finally:
                holder.cancel()
                await asyncio.gather(holder, return_exceptions=True)

    assert 0.15 < _run(main()) < 1.0


def test_a_queued_post_cancelled_as_it_is_woken_passes_the_seat_on() -> None:
    async def answer_later(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(OK % (2, b"{}"))
            await writer.drain()

    async def main() -> Response:
        async with _raw(answer_later) as served, Connections(_url(served.port), 1) as pool:
            queued: list[asyncio.Task[Response]] = []

            async def holder() -> None:
                await pool.post(_request(served.port), 5.0)
                # Runs before the task _wake() just chose (its wake-up was scheduled after ours):
                # that task leaves the queue cancelled, as a deadline firing at this moment would.
                queued[0].cancel()

            hold = asyncio.create_task(holder())
            await asyncio.sleep(0.01)  # the holder has the one seat
            queued.append(asyncio.create_task(pool.post(_request(served.port), 5.0)))
            queued.append(asyncio.create_task(pool.post(_request(served.port), 0.6)))
            await hold
            await asyncio.gather(queued[0], return_exceptions=True)
            return await queued[1]  # the seat is free: answered in ~0.05 s, not a timeout

    assert _run(main()).status == 200


# --- TLS (the event loop's transports with the ssl module) ----------------------------------------

@dataclass(frozen=True)
class Certs:
    ca: str  # the CA's certificate (PEM), what a client trusts
    chain: str  # the server's certificate (PEM), for 127.0.0.1
    key: str  # the server's key (PEM)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA and a server certificate for 127.0.0.1, made for this run."""
    pytest.importorskip("cryptography")  # a test tool here (moto's), not a batchrun dependency
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batchrun test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("certs")
    paths = Certs(str(folder / "ca.pem"), str(folder / "server.pem"), str(folder / "server.key"))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


@asynccontextmanager
async def _tls_app(handler: Handler, certs: Certs) -> AsyncIterator[int]:
    """An aiohttp.web server over TLS with the test certificate; yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.chain, certs.key)
    app = web.Application()
    app.router.add_post(PATH, handler)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_connections_are_verified_and_kept_alive(loop: str, certs: Certs,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The client's default context trusts what SSL_CERT_FILE names (OpenSSL's default paths).
    monkeypatch.setenv("SSL_CERT_FILE", certs.ca)
    ports: list[int] = []

    async def echo(request: web.Request) -> web.Response:
        ports.append(_peer_port(request))
        return web.Response(body=await request.read())

    async def main() -> list[Response]:
        async with _tls_app(echo, certs) as port, \
                Connections(f"https://127.0.0.1:{port}{PATH}", 2) as pool:
            return [await pool.post(_request(port, b"%d" % n), 5.0) for n in range(3)]

    responses = _run(main(), loop)
    assert [(r.status, r.body) for r in responses] == [(200, b"0"), (200, b"1"), (200, b"2")]
    assert len(ports) == 3 and len(set(ports)) == 1


def test_sender_stops_the_job_on_a_certificate_it_cannot_verify(certs: Certs) -> None:
    # No SSL_CERT_FILE: the system's roots do not know the test CA.
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=b"{}")

    async def main() -> Reply:
        async with _tls_app(echo, certs) as port, \
                connections(f"https://127.0.0.1:{port}/v1", 1) as pool:
            return await Sender(pool, Secret("k"), 5.0).send(b"{}")

    reply = _run(main())
    assert reply.failure is not None
    assert reply.failure.kind is Kind.JOB
    assert reply.failure.message == "TLS certificate of 127.0.0.1 could not be verified"


# --- what Sender makes of each failure ------------------------------------------------------------

async def _send_raw(script: Script, timeout: float = 5.0) -> tuple[Reply, int]:
    async with _raw(script) as served, connections(f"http://127.0.0.1:{served.port}/v1", 1) as pool:
        return await Sender(pool, Secret("k"), timeout).send(b"{}"), served.port


def test_sender_names_a_closed_connection_a_retry() -> None:
    async def hang_up(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)

    reply, _ = _run(_send_raw(hang_up))
    assert reply.answer is None and reply.failure is not None
    assert reply.failure.kind is Kind.RETRY
    assert reply.failure.message == "connection error: server closed the connection"


def test_sender_refuses_a_body_over_the_limit_for_the_row() -> None:
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)

    async def too_large(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(huge)
        chunk = b" " * (1 << 20)
        for _ in range(MAX_BODY_BYTES // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        writer.write(b" ")  # one byte over
        await reader.read()

    reply, _ = _run(_send_raw(too_large))
    assert reply.failure is not None
    assert reply.failure.kind is Kind.ROW and "larger than 8 MiB" in reply.failure.message


def test_sender_names_a_deadline_a_timeout_to_retry() -> None:
    async def hang(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    reply, _ = _run(_send_raw(hang, timeout=0.2))
    assert reply.failure is not None
    assert reply.failure.kind is Kind.RETRY
    assert reply.failure.message.startswith("timeout: no complete answer within 0.2 s")
    assert reply.failure.unreachable  # nothing answered at all


def test_sender_names_bytes_that_are_not_http_a_retry() -> None:
    reply, _ = _run(_send_raw(_answer_each_with(b"SSH-2.0-OpenSSH_9.6\r\n")))
    assert reply.failure is not None and reply.failure.kind is Kind.RETRY
    assert reply.failure.message.startswith("connection error: malformed HTTP answer")


def test_a_compressed_body_whose_framing_ends_before_its_stream_is_malformed() -> None:
    # Content-Length says the body is whole; the gzip stream inside it is not.
    packed = gzip.compress(b'{"choices": []}' * 50)[:40]
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (
        len(packed), packed)
    reply, _ = _run(_send_raw(_answer_each_with(answer)))
    assert reply.failure is not None and reply.failure.kind is Kind.RETRY
    assert reply.failure.message == "connection error: compressed answer cut short"


def test_sender_names_a_tls_handshake_with_a_plain_server_a_tls_failure() -> None:
    # An https:// URL whose server speaks plain HTTP: the handshake reads no TLS record.
    async def plain(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async def main() -> Reply:
        async with _raw(plain) as served, \
                connections(f"https://127.0.0.1:{served.port}/v1", 1) as pool:
            return await Sender(pool, Secret("k"), 5.0).send(b"{}")

    reply = _run(main())
    assert reply.failure is not None and reply.failure.kind is Kind.RETRY
    assert reply.failure.message.startswith("connection error: TLS failed (SSL")
    assert reply.failure.unreachable


def test_sender_names_a_refused_connection_unreachable() -> None:
    async def main() -> tuple[Reply, int]:
        with socket.socket() as sock:  # bound, never listening: refused
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            async with connections(f"http://127.0.0.1:{port}/v1", 1) as pool:
                return await Sender(pool, Secret("k"), 5.0).send(b"{}"), port

    for loop in LOOPS:
        reply, port = _run(main(), loop)
        assert reply.failure is not None, loop
        assert reply.failure.kind is Kind.RETRY and reply.failure.unreachable, loop
        assert reply.failure.message == (
            f"connection error: cannot connect to 127.0.0.1:{port} (Connection refused)"), loop


def test_sender_stops_the_job_on_a_redirect_and_names_where_it_points() -> None:
    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "https://elsewhere.example/v1/chat"})

    async def main() -> Reply:
        async with _app(moved) as port, connections(f"http://127.0.0.1:{port}/v1", 1) as pool:
            return await Sender(pool, Secret("k"), 5.0).send(b"{}")

    reply = _run(main())
    assert reply.failure is not None
    assert reply.failure.kind is Kind.JOB and reply.failure.status == 302
    assert "https://elsewhere.example/v1/chat" in reply.failure.message
    assert reply.headers["location"] == "https://elsewhere.example/v1/chat"


def test_sender_sends_the_head_it_built_and_reads_the_answer() -> None:
    seen: list[bytes] = []
    answer = (b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, '
              b'"finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, '
              b'"total_tokens": 2}}')

    async def record(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(OK % (len(answer), answer))
        await writer.drain()
        await reader.read()

    reply, port = _run(_send_raw(record))
    assert reply.failure is None and reply.answer is not None
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert b"Host: 127.0.0.1:%d" % port in lines
    assert b"Authorization: Bearer k" in lines and b"Content-Length: 2" in lines
    assert b"Accept-Encoding: gzip, deflate" in lines
    assert body == b"{}"
