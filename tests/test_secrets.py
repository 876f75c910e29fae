"""The API key: where it comes from, where it may go (one header, over TLS or loopback), nowhere else."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchrun.errors import UsageError
from batchrun.settings.config import RunConfig, is_loopback
from batchrun.settings.keys import Secret, check_transport
from batchrun.sim import Step

from .helpers import TEST_KEY, clean_env, prompts_csv, read_output, run_cli, run_job, start_cli

# Parts of the key that must not show up either (a cut-off key is still a leak).
KEY_PARTS = (TEST_KEY, TEST_KEY[:12], TEST_KEY[-12:])


def _assert_clean(*texts: str | bytes, where: str = "") -> None:
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        for part in KEY_PARTS:
            assert part.encode() not in data, f"key part {part[:4]}... leaked {where}"


def _files_clean(folder: Path) -> list[Path]:
    """Every file under `folder` (output, sidecar, journal, -wal, -shm, lock) holds no key part."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        _assert_clean(path.read_bytes(), where=f"in {path.name}")
    return files


def _echo_steps() -> dict[str, Step]:
    """Error bodies that echo the Authorization header back, in every shape a server might."""
    bearer = f"Bearer {TEST_KEY}"
    # Placed so that a slice of the body (200 bytes) or of the message (500 characters) taken
    # before scrubbing would cut the key in two and keep its first dozen characters.
    padded = " " * 179 + bearer
    return {
        "echoJson400": Step.body(orjson.dumps(
            {"error": {"message": f"bad header Authorization: {bearer}", "type": "x"}}), 400),
        "echoText500": Step.body(f"upstream said: {bearer} is weird".encode(), 500,
                                 {"Content-Type": "text/plain"}),
        "echoPadded500": Step.body(padded.encode(), 503, {"Content-Type": "text/plain"}),
        "echoLong400": Step.body(orjson.dumps({"error": {"message": "x" * 468 + bearer}}), 400),
        "echoIn200": Step.body(orjson.dumps({"error": {"message": f"echo {bearer}"}})),
    }


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_key_never_leaves_the_authorization_header(tmp_path: Path, sim, log_format: str) -> None:
    server = sim(api_key=TEST_KEY)  # the simulator answers 401 unless the header carries the key
    for word, step in _echo_steps().items():
        server.rule(word, step)
    src = tmp_path / "in.csv"
    words = [*_echo_steps(), "plainOne", "plainTwo"]
    src.write_text("prompt\n" + "".join(f"say {w}\n" for w in words), encoding="utf-8")
    out = tmp_path / "run" / "out.parquet"
    env = clean_env(BATCHRUN_API_KEY=TEST_KEY)
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--log-level", "debug", "--log-format", log_format,
                     "--max-attempts", "2", env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    _assert_clean(result.stdout, result.stderr, where="in stdout/stderr")
    rows = {r["prompt"].split()[-1]: r for r in read_output(out)}
    assert rows["plainOne"]["status"] == "ok" and rows["plainTwo"]["status"] == "ok"
    for word in _echo_steps():
        assert rows[word]["status"] == "error", word
        assert "***" in rows[word]["error"], (word, rows[word]["error"])
    assert "retrying" in result.stderr  # debug lines were written, and were clean
    files = _files_clean(out.parent)
    assert {p.name for p in files} >= {"out.parquet", "out.usage.parquet",
                                       "out.journal.sqlite"}
    status = run_cli("status", out, env=env)
    _assert_clean(status.stdout, status.stderr, where="in status")


def test_journal_and_wal_of_a_killed_run_hold_no_key(tmp_path: Path, sim) -> None:
    server = sim(api_key=TEST_KEY, latency=0.05)
    server.rule("echo", Step.body(orjson.dumps({"error": {"message": f"Bearer {TEST_KEY}"}}), 400))
    src = tmp_path / "in.csv"
    src.write_text("prompt\n" + "".join(f"echo {i}\nplain {i}\n" for i in range(200)),
                   encoding="utf-8")
    out = tmp_path / "run" / "out.parquet"
    proc = start_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--model", "sim-1", "--concurrency", "4", "--no-progress",
                     env=clean_env(BATCHRUN_API_KEY=TEST_KEY))
    wal = out.with_name("out.journal.sqlite-wal")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.stats.requests < 40:
        time.sleep(0.05)
    assert server.stats.requests >= 40
    time.sleep(0.3)  # a few group commits land in the WAL
    proc.send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=30)
    assert wal.exists() and wal.stat().st_size > 0
    _assert_clean(stdout, stderr, where="in output of the killed run")
    _files_clean(out.parent)


def _key_file(tmp_path: Path, content: str, mode: int) -> Path:
    path = tmp_path / "key.txt"
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


def test_key_file_is_used_and_checked(tmp_path: Path, sim) -> None:
    server = sim(api_key=TEST_KEY)
    src = prompts_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "out.parquet"
    args = ("run", "--input", src, "--output", out, "--base-url", server.base_url,
            "--model", "sim-1", "--no-progress")

    def refused(key_path: Path, needle: str) -> None:
        result = run_cli(*args, "--api-key-file", key_path)
        assert result.returncode == 2, result.stderr
        assert needle in result.stderr and str(key_path) in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        _assert_clean(result.stdout, result.stderr)

    refused(_key_file(tmp_path, TEST_KEY + "\n", 0o644), "chmod 600")
    refused(_key_file(tmp_path, TEST_KEY, 0o640), "other users")
    refused(tmp_path / "absent.txt", "does not exist")
    refused(_key_file(tmp_path, "  \n", 0o600), "empty")
    refused(_key_file(tmp_path, f"{TEST_KEY}\nsecond line\n", 0o600), "line breaks")
    assert server.stats.requests == 0
    key = _key_file(tmp_path, TEST_KEY + "\n", 0o600)
    # The file wins over a wrong key in the environment.
    result = run_cli(*args, "--api-key-file", key, env=clean_env(BATCHRUN_API_KEY="sk-wrong"))
    assert result.returncode == 0, result.stderr
    assert server.stats.ok == 3 and server.stats.status_counts.get(401, 0) == 0


def test_key_with_inner_whitespace_in_the_environment_is_refused_without_echo(
    tmp_path: Path, sim
) -> None:
    server = sim()
    src = prompts_csv(tmp_path / "in.csv", 1)
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet", "--base-url",
                     server.base_url, "--model", "sim-1",
                     env=clean_env(BATCHRUN_API_KEY=f"{TEST_KEY}\r\nX-Evil: 1"))
    assert result.returncode == 2 and "BATCHRUN_API_KEY" in result.stderr, result.stderr
    _assert_clean(result.stdout, result.stderr)
    assert server.stats.requests == 0


def test_help_never_shows_the_key(tmp_path: Path) -> None:
    env = clean_env(BATCHRUN_API_KEY=TEST_KEY, OPENAI_API_KEY=TEST_KEY)
    for args in (("--help",), ("run", "--help"), ("status", "--help"), ("simulate", "--help")):
        result = run_cli(*args, env=env)
        assert result.returncode == 0 and "Usage" in result.stdout
        _assert_clean(result.stdout, result.stderr, where=f"in {args} help")


def test_missing_key_for_a_remote_provider_exits_2_naming_the_variable(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 2)
    cases = [
        (("--provider", "openai", "--model", "gpt-4o-mini"), "OPENAI_API_KEY"),
        (("--provider", "megallm", "--model", "gpt-4o-mini"), "MEGALLM_API_KEY"),
        (("--base-url", "https://api.example.invalid/v1", "--model", "m",
          "--api-key-env", "MY_TEAM_KEY"), "MY_TEAM_KEY"),
    ]
    for extra, variable in cases:
        result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet", *extra,
                         "--timeout", "1", "--max-attempts", "1", env=clean_env())
        assert result.returncode == 2, (extra, result.stderr)
        assert "no API key" in result.stderr and variable in result.stderr, result.stderr
        assert not (tmp_path / "out.journal.sqlite").exists()  # refused before the run began


def test_plain_http_to_a_remote_host_is_refused_before_any_connection(tmp_path: Path) -> None:
    src = prompts_csv(tmp_path / "in.csv", 2)
    env = clean_env(BATCHRUN_API_KEY=TEST_KEY)
    # `127.evil.invalid` is a name, not a loopback address: it must not pass as local.
    for url in ("http://example.invalid/v1", "http://127.evil.invalid/v1"):
        started = time.monotonic()
        result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet",
                         "--base-url", url, "--model", "m", "--timeout", "30", env=env)
        assert result.returncode == 2, (url, result.stderr)
        assert "plain http" in result.stderr and "--allow-insecure-http" in result.stderr
        assert "connection" not in result.stderr
        assert not (tmp_path / "out.journal.sqlite").exists()
        assert time.monotonic() - started < 25  # refused at once, not after a connect timeout
        _assert_clean(result.stdout, result.stderr)


def test_transport_check_in_process() -> None:
    def config(url: str, allow: bool = False) -> RunConfig:
        return RunConfig(input=Path("in.csv"), output=Path("o.parquet"), base_url=url,
                         allow_insecure_http=allow)

    key = Secret(TEST_KEY)
    for url in ("http://127.0.0.1:9/v1", "http://localhost/v1", "http://[::1]:8/v1",
                "https://api.example.com/v1"):
        check_transport(config(url), key)
    check_transport(config("http://example.com/v1", allow=True), key)
    check_transport(config("http://example.com/v1"), None)  # no key, nothing to protect
    for url in ("http://example.com/v1", "http://127.example.com/v1", "http://10.0.0.1/v1",
                "http://localhost.example.com/v1"):
        with pytest.raises(UsageError, match="--allow-insecure-http"):
            check_transport(config(url), key)
    assert is_loopback("http://[::ffff:127.0.0.1]:80/v1") and not is_loopback("http://[::2]/")
    assert TEST_KEY not in repr(key) and TEST_KEY not in str(key)


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class _TlsServer:
    """An HTTPS chat endpoint on 127.0.0.1 with a self-signed certificate; counts requests."""

    def __init__(self, cert: Path, key: Path) -> None:
        import ssl

        self.requests = 0
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> _TlsServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        async def chat(request: web.Request) -> web.Response:
            self.requests += 1
            return web.json_response({"choices": [{"message": {"content": "hi"}}]})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()


@pytest.fixture
def tls_server(self_signed: tuple[Path, Path]) -> Iterator[Any]:
    with _TlsServer(*self_signed) as server:
        yield server


def test_self_signed_certificate_is_refused_and_nothing_is_sent(
    tmp_path: Path, tls_server: Any
) -> None:
    src = prompts_csv(tmp_path / "in.csv", 3)
    out = tmp_path / "out.parquet"
    result = run_cli("run", "--input", src, "--output", out, "--base-url",
                     f"https://127.0.0.1:{tls_server.port}/v1", "--model", "m",
                     "--no-progress", "--timeout", "5", "--max-attempts", "2",
                     env=clean_env(BATCHRUN_API_KEY=TEST_KEY))
    assert result.returncode == 3, result.stderr
    assert "certificate" in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.stderr
    assert tls_server.requests == 0
    _assert_clean(result.stdout, result.stderr)
    # The same server, trusted explicitly through SSL_CERT_FILE, is then used normally: the
    # refusal above was about the certificate, not the connection.
    trusted = clean_env(BATCHRUN_API_KEY=TEST_KEY, SSL_CERT_FILE=str(tmp_path / "cert.pem"))
    result = run_cli("run", "--input", src, "--output", out, "--base-url",
                     f"https://127.0.0.1:{tls_server.port}/v1", "--model", "m",
                     "--no-progress", "--timeout", "5", env=trusted)
    assert result.returncode == 0, result.stderr
    assert tls_server.requests == 3
    assert os.path.exists(out)


def test_redirects_are_not_followed(tmp_path: Path, sim) -> None:
    elsewhere = sim()
    server = sim(api_key=TEST_KEY)
    target = elsewhere.base_url + "/chat/completions"
    server.rule("go", Step.body(b"", 307, {"Location": target}))
    src = tmp_path / "in.csv"
    src.write_text("prompt\nplease go\n", encoding="utf-8")
    result = run_cli("run", "--input", src, "--output", tmp_path / "out.parquet", "--base-url",
                     server.base_url, "--model", "sim-1", "--no-progress",
                     env=clean_env(BATCHRUN_API_KEY=TEST_KEY), timeout=60)
    assert result.returncode == 3, result.stderr
    assert "redirect" in result.stderr and "--base-url" in result.stderr
    assert elsewhere.stats.requests == 0
    _assert_clean(result.stdout, result.stderr)


def test_a_refused_key_names_where_it_came_from_never_a_flag_that_was_not_used(
        tmp_path: Path, sim) -> None:
    server = sim(api_key="the-right-key")
    src = prompts_csv(tmp_path / "in.csv", 3)
    key_file = tmp_path / "key.txt"
    key_file.write_text(TEST_KEY)
    key_file.chmod(0o600)
    by_file = run_job(src, tmp_path / "a.parquet", server.base_url, "--api-key-file", key_file)
    assert by_file.returncode == 3
    assert by_file.stderr.rstrip().endswith(
        f"; check the API key (it came from --api-key-file {key_file})")
    by_env = run_job(src, tmp_path / "b.parquet", server.base_url,
                     env=clean_env(BATCHRUN_API_KEY=TEST_KEY))
    assert by_env.stderr.rstrip().endswith("; check the API key (it came from BATCHRUN_API_KEY)")
    assert "--api-key-env" not in by_file.stderr + by_env.stderr
    assert TEST_KEY not in by_file.stdout + by_file.stderr + by_env.stdout + by_env.stderr
