"""Open a page in headless Chromium over the DevTools protocol: console errors, a probe, a screenshot.

The system's `chromium` (Debian's package; `make test` installs it when it is missing) is started
with a fresh profile and no network services; aiohttp's websocket client speaks the protocol.

    python -m tests.chromium PAGE.html SHOT.png      # a full-page screenshot (docs/report.png)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-port=0")
WIDTH = 1200

# What the report's test checks, measured by the browser on the rendered page.
PROBE = """(() => {
  const all = s => Array.from(document.querySelectorAll(s));
  const charts = {};
  for (const svg of all('svg[id^="chart-"]')) {
    const box = svg.getBoundingClientRect();
    const groups = {};
    for (const g of svg.querySelectorAll('g[id]')) {
      const d = Array.from(g.querySelectorAll(':scope > path')).map(p => p.getAttribute('d') || '');
      const points = d.reduce((n, s) => n + (s.match(/[ML]/g) || []).length, 0);
      const uses = g.querySelectorAll('use').length;
      let height = 0;
      try { height = g.getBBox().height; } catch (e) { height = 0; }
      groups[g.id.slice(svg.id.length - 5)] = {points, uses, height};
    }
    charts[svg.id] = {width: box.width, height: box.height, groups};
  }
  const header = Object.fromEntries(all('#header .card').map(
    c => [c.dataset.field, c.querySelector('.v').textContent]));
  const errors = Object.fromEntries(all('#error-classes tr[data-class]').map(
    r => [r.dataset.class, Array.from(r.cells).map(c => c.innerText)]));
  return {
    title: document.title, charts, header, errors,
    samples: all('#sample-rows tr[data-status]').map(r => r.dataset.status),
    scripts: all('script').length,
    fetched: performance.getEntriesByType('resource').map(e => e.name),
    height: document.documentElement.scrollHeight,
    text: document.body.innerText,
  };
})()"""


@dataclass
class PageCheck:
    """What the browser saw: console errors and the probe's findings."""

    console_errors: list[str] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes | None = None


def find_chromium() -> str:
    """The Chromium binary, or fail with how to install it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no chromium on PATH: apt-get install -y chromium (make test does it)")


def check_page(page: Path, screenshot: bool = False, timeout: float = 60.0) -> PageCheck:
    """Load `page` in a fresh headless Chromium and report what it saw."""
    return asyncio.run(asyncio.wait_for(_check(page.resolve(), screenshot), timeout))


async def _check(page: Path, screenshot: bool) -> PageCheck:
    # Chromium's helper processes (zygote, crash handler) may still write to the profile for a
    # moment after the browser exits: the whole process group is ended, and what they leave
    # behind in the temporary profile does not fail the test.
    with tempfile.TemporaryDirectory(prefix="batchrun-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [find_chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = await _port(Path(profile) / "DevToolsActivePort", proc)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as reply:
                    targets = await reply.json()
                url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                async with http.ws_connect(url, max_msg_size=0) as ws:
                    return await _Session(ws).inspect(page, screenshot)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


async def _port(path: Path, proc: subprocess.Popen[bytes]) -> int:
    """Chromium writes the port it chose to its profile once it listens."""
    for _ in range(600):
        if path.exists():
            first = path.read_text().split("\n", 1)[0].strip()
            if first.isdigit():
                return int(first)
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode} before listening")
        await asyncio.sleep(0.05)
    raise RuntimeError("chromium did not open its DevTools port within 30 s")


class _Session:
    """One page's protocol session: commands by id, events collected as they come."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.events.append(message)

    async def until(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(await self.ws.receive_json())

    async def inspect(self, page: Path, screenshot: bool) -> PageCheck:
        for domain in ("Page", "Runtime", "Log"):
            await self.call(f"{domain}.enable")
        await self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=900,
                        deviceScaleFactor=1, mobile=False)
        await self.call("Page.navigate", url=page.as_uri())
        await self.until("Page.loadEventFired")
        result = await self.call("Runtime.evaluate", expression=PROBE, returnByValue=True)
        check = PageCheck(probe=result["result"]["value"])
        if screenshot:
            height = int(check.probe["height"])
            await self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height,
                            deviceScaleFactor=1, mobile=False)
            shot = await self.call("Page.captureScreenshot", format="png")
            check.screenshot = base64.b64decode(shot["data"])
        check.console_errors = _errors(self.events)
        return check


def _errors(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and refused loads, as one line each."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(" ".join(str(a.get("value", a.get("description", "")))
                                  for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            found.append(str(params.get("exceptionDetails", {}).get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            found.append(str(params["entry"].get("text")))
    return found


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    seen = check_page(source, screenshot=True)
    if seen.console_errors:
        sys.exit(f"console errors: {seen.console_errors}")
    assert seen.screenshot is not None
    target.write_bytes(seen.screenshot)
    print(f"{target}: {len(seen.screenshot):,} bytes")
