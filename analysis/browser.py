"""Open an HTML file in headless Chromium and report what a person would see: images that loaded,
section headings, console errors, and optionally a full-page screenshot.

Speaks the Chrome DevTools Protocol over --remote-debugging-pipe (JSON messages ending in NUL on file
descriptors 3 and 4 of the browser), so it needs no Python package and no network port, only Debian's
`chromium`. Used by the report's browser test and by hand:

    python -m analysis.browser results/quick/report/report.html --screenshot /tmp/report.png
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import tempfile
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Evaluated in the page after its load event: every <img>, every <h2>, the page height.
PROBE = """JSON.stringify({
  title: document.title,
  headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent.trim()),
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,
                                                   naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight})),
  height: document.documentElement.scrollHeight
})"""


def find_chromium() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    """A minimal CDP client: send commands, collect every event until the awaited response or event."""

    def __init__(self, to_browser: int, from_browser: int, deadline: float):
        self.w, self.r, self.deadline = to_browser, from_browser, deadline
        self.buf, self.next_id, self.events = b"", 0, []

    def _read_message(self) -> dict:
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("headless Chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise ConnectionError("headless Chromium closed the DevTools pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for i, event in enumerate(self.events):
            if event["method"] == method:
                return self.events.pop(i)
        while True:
            reply = self._read_message()
            if reply.get("method") == method:
                return reply
            if "method" in reply:
                self.events.append(reply)


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") == "error":
            out.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif e["method"] == "Runtime.exceptionThrown":
            out.append("exception: " + p["exceptionDetails"].get("text", ""))
        elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(f"log: {p['entry'].get('text', '')} {p['entry'].get('url', '')}".strip())
    return out


def _high_fd(fd: int) -> int:
    # Copies above 9 so the dup2 onto 3 and 4 in the child cannot clobber one another.
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)


def inspect_page(html_path, screenshot=None, width: int = 1280, timeout: float = 60.0,
                 browser: str | None = None) -> dict:
    """Load the file in headless Chromium; return {title, headings, images, height, errors}.

    With `screenshot`, also write a full-page PNG there (height capped at 16,000 px, Chromium's limit).
    """
    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(BROWSERS)}); apt-get install chromium")
    url = Path(html_path).resolve().as_uri()
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    child_in, child_out = _high_fd(to_r), _high_fd(from_w)
    with tempfile.TemporaryDirectory() as profile:
        argv = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
                f"--window-size={width},900", "--remote-debugging-pipe", "about:blank"]
        actions = [(os.POSIX_SPAWN_DUP2, child_in, 3), (os.POSIX_SPAWN_DUP2, child_out, 4),
                   (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]
        pid = os.posix_spawn(browser, argv, os.environ, file_actions=actions)
        for fd in (to_r, from_w, child_in, child_out):
            os.close(fd)
        cdp = _Pipe(to_w, from_r, time.monotonic() + timeout)
        try:
            target = next(t for t in cdp.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
            session = cdp.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                cdp.send(f"{domain}.enable", session=session)
            cdp.send("Page.navigate", {"url": url}, session=session)
            cdp.wait_for("Page.loadEventFired")
            probe = cdp.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
            result = json.loads(probe["result"]["value"])
            if screenshot is not None:
                height = min(int(result["height"]), 16000)
                shot = cdp.send("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}, session=session)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            result["errors"] = _errors(cdp.events)
            cdp.send("Browser.close")
        finally:
            os.close(to_w)
            os.close(from_r)
            _reap(pid)
    return result


def _reap(pid: int, grace: float = 5.0) -> None:
    """Wait for the browser to exit (Browser.close, or EOF on its pipe); kill it after `grace` seconds."""
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Open an HTML file in headless Chromium and check it.")
    parser.add_argument("html")
    parser.add_argument("--screenshot", help="write a full-page PNG here")
    args = parser.parse_args()
    res = inspect_page(args.html, args.screenshot)
    broken = [i["alt"] for i in res["images"] if not i["naturalWidth"]]
    print(f"{res['title']}: {len(res['images'])} images ({len(broken)} broken {broken}), "
          f"{len(res['headings'])} sections, {len(res['errors'])} console errors")
    for line in res["headings"] + res["errors"]:
        print("  " + line)
