"""Load a page in headless Chromium and report what a person would see go wrong.

Chromium is driven through the DevTools protocol over a pipe
(``--remote-debugging-pipe``: commands on file descriptor 3, replies and events
on 4, each message a JSON text ending in a NUL byte), so no port is opened and
no websocket library is needed.  :func:`check_page` loads a file, waits for
the load event, collects console messages, uncaught exceptions and log
entries of level error (failed resource loads land there), asks the page for
the state of every ``<img>``, and writes a full-page PNG screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PageCheck", "check_page", "chromium_path"]

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
          "--mute-audio", "--remote-debugging-pipe")

_IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({
    alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})))"""


def chromium_path() -> str | None:
    """The Chromium executable (Debian's ``chromium``), or None."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageCheck:
    """What loading a page showed.

    Attributes
    ----------
    images : list of dict
        ``alt``, ``complete``, ``width``, ``height`` (natural size) of every ``<img>``.
    errors : list of str
        Console errors, uncaught exceptions and error log entries.
    screenshot : pathlib.Path
        The full-page PNG.
    title : str
        ``document.title``.
    """

    images: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    title: str = ""

    @property
    def broken_images(self) -> list[dict]:
        """Images that did not load (incomplete or zero natural width)."""
        return [i for i in self.images if not i["complete"] or i["width"] <= 0]


class _Pipe:
    """DevTools protocol over Chromium's debugging pipe (flattened sessions)."""

    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int, deadline: float):
        self.proc, self.write_fd, self.read_fd, self.deadline = proc, write_fd, read_fd, deadline
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self) -> dict:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe (exit {self.proc.poll()})")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self.write_fd, data):]
        while True:
            reply = self._read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method and event.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            event = self._read_message()
            if event.get("method") == method and event.get("sessionId") == session:
                return event
            self.events.append(event)


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                              for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append("exception: " + str(details.get("exception", {}).get("description")
                                           or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
    return out


def check_page(page: Path, screenshot: Path, *, width: int = 1280, timeout: float = 60.0,
               max_height: int = 16000) -> PageCheck:
    """Load ``page`` in headless Chromium; collect errors and image states; screenshot it.

    Parameters
    ----------
    page : pathlib.Path
        HTML file to open (as a ``file://`` URL).
    screenshot : pathlib.Path
        Where to write the full-page PNG.
    width : int
        Viewport width, CSS pixels.
    timeout : float
        Seconds for the whole check.
    max_height : int
        Screenshot height cap, pixels.
    """
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("chromium is not installed (Debian package 'chromium')")
    deadline = time.monotonic() + timeout
    profile = tempfile.mkdtemp(prefix="drp-chromium-")
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    # The protocol expects its pipe on fds 3 (commands in) and 4 (replies out): bash moves
    # our pipe ends there and execs Chromium (no preexec_fn, which is unsafe with threads;
    # not dash, whose redirections take single-digit fds only).
    r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w))
    os.close(to_chrome_r)  # the copies are >= 10: the shell's 3 and 4 cannot clobber them
    os.close(from_chrome_w)
    proc = subprocess.Popen(
        [shutil.which("bash") or "/bin/bash", "-c", f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-',
         exe, *_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900",
         "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        pass_fds=(r, w), close_fds=True)
    os.close(r)
    os.close(w)
    pipe = _Pipe(proc, to_chrome_w, from_chrome_r, deadline)
    result = PageCheck()
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        pipe.events.clear()  # anything from about:blank is not the page's
        pipe.send("Page.navigate", {"url": Path(page).absolute().as_uri()}, session=session)
        pipe.wait_event("Page.loadEventFired", session)
        value = pipe.send("Runtime.evaluate", {"expression": _IMAGES_JS, "returnByValue": True},
                          session=session)["result"]["value"]
        result.images = json.loads(value)
        result.title = pipe.send("Runtime.evaluate", {"expression": "document.title",
                                                      "returnByValue": True},
                                 session=session)["result"]["value"]
        metrics = pipe.send("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        height = int(min(max(size["height"], 1), max_height))
        shot = pipe.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
            session=session)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        result.screenshot = screenshot
        # Let late console messages (after load) arrive before reading the events.
        pipe.send("Runtime.evaluate", {"expression": "1"}, session=session)
        result.errors = _errors([e for e in pipe.events if e.get("sessionId") == session])
        try:
            pipe.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return result
