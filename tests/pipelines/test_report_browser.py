"""The report renders in a real browser (headless Chromium over the DevTools protocol): no console errors or
exceptions, a sample's captions in every language, its OCR boxes drawn where the record says, reject
thumbnails, and a full-page screenshot saved under the test's tmp dir.

`make test` installs Debian's chromium when it runs as root (CI); elsewhere this test skips with the reason."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from polycap.pipelines.report import write_report
from tests.pipelines.test_report import KO, VI, make_run

CHROMIUM = os.environ.get("POLYCAP_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-allow-origins=*", "--window-size=1280,900"]

# Runs in the page: what the test asserts on, with the rendered geometry of the first OCR box.
PROBE = """(() => {
  const s = document.querySelector('article.sample');
  const img = s.querySelector('img'), box = s.querySelector('polygon.ocr-box');
  const ir = img.getBoundingClientRect(), br = box.getBoundingClientRect();
  return {
    key: s.dataset.key,
    captions: Object.fromEntries([...s.querySelectorAll('.caption')].map(c => [c.dataset.lang,
                                                                               c.querySelector('p').textContent])),
    boxes: s.querySelectorAll('polygon.ocr-box').length,
    imgLoaded: img.complete && img.naturalWidth > 0,
    box: [(br.left - ir.left) / ir.width, (br.top - ir.top) / ir.height,
          (br.right - ir.left) / ir.width, (br.bottom - ir.top) / ir.height],
    samples: document.querySelectorAll('article.sample').length,
    charts: document.querySelectorAll('figure.chart svg').length,
    rejects: document.querySelectorAll('.reject').length,
    rejectThumbs: [...document.querySelectorAll('.reject img')].filter(i => i.naturalWidth > 0).length,
  };
})()"""


@pytest.fixture(scope="module")
def chromium() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"{CHROMIUM} not found: `make test` installs it when run as root (apt-get install -y chromium); "
                    "or install Debian's chromium package yourself, or set $POLYCAP_CHROMIUM")
    return CHROMIUM


def _devtools_port(profile: Path, proc: subprocess.Popen, timeout_s: float = 30) -> int:
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_file.exists() and (text := port_file.read_text().split()):
            return int(text[0])
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


async def _inspect(port: int, url: str, screenshot: Path) -> tuple[dict, list[str]]:
    """Open `url` in the browser's page target; returns (PROBE result, console errors and exceptions)."""
    import aiohttp

    errors: list[str] = []
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
            target = next(t for t in await r.json() if t["type"] == "page")
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 1_000_000))

            async def call(method: str, **params) -> dict:
                mid = next(ids)
                await ws.send_json({"id": mid, "method": method, "params": params})
                while True:
                    msg = json.loads((await ws.receive(timeout=60)).data)
                    if msg.get("id") == mid:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return msg.get("result", {})
                    _event(msg)

            def _event(msg: dict) -> None:
                method, p = msg.get("method"), msg.get("params", {})
                if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                    errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
                elif method == "Runtime.exceptionThrown":
                    errors.append("exception: " + json.dumps(p["exceptionDetails"])[:500])
                elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                    errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")

            for domain in ("Page", "Runtime", "Log"):
                await call(f"{domain}.enable")
            await call("Page.navigate", url=url)
            while True:      # wait for the load event, collecting console output on the way
                msg = json.loads((await ws.receive(timeout=60)).data)
                if msg.get("method") == "Page.loadEventFired":
                    break
                _event(msg)
            probe = await call("Runtime.evaluate", expression=PROBE, returnByValue=True)
            if "exceptionDetails" in probe:
                raise RuntimeError(f"probe failed: {probe['exceptionDetails']}")
            shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            await call("Runtime.evaluate", expression="1")     # flush late console events
    return probe["result"]["value"], errors


def test_report_renders_in_chromium(chromium, tmp_path):
    run = make_run(tmp_path)
    html = Path(write_report(str(run), str(tmp_path / "report.html")))
    profile = tmp_path / "profile"
    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _devtools_port(profile, proc)
        probe, errors = asyncio.run(_inspect(port, html.as_uri(), tmp_path / "report.png"))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
    assert errors == []
    assert probe["captions"]["ko"] == KO and probe["captions"]["vi"] == VI and probe["captions"]["en"].startswith("A ")
    assert probe["imgLoaded"] and probe["boxes"] == 1 and probe["samples"] == 10 and probe["charts"] >= 6
    # the record's box (100, 250)-(900, 500) on the 0..1000 grid, drawn over the thumbnail (stroke ~1 px)
    for got, want in zip(probe["box"], (0.1, 0.25, 0.9, 0.5)):
        assert got == pytest.approx(want, abs=0.02), probe["box"]
    assert probe["rejects"] == 3 and probe["rejectThumbs"] == 1
    shot = tmp_path / "report.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
