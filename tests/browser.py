"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages ending in a NUL byte on file descriptors 3 and 4), so that tests can open avemo's
pages from disk, run script in them and take screenshots with no driver package and no network.

    with Browser() as b:
        b.open(page.as_uri())
        assert b.eval("document.title") == "..."
        b.screenshot(tmp_path / "page.png")

``find_chromium()`` is None where no browser can be had (tests then skip, saying so).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def find_chromium() -> str | None:
    for name in (os.environ.get("AVEMO_CHROMIUM", ""), "chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, width: int = 1200, height: int = 900, timeout: float = 30.0):
        exe = find_chromium()
        if exe is None:
            raise BrowserError("no Chromium found (apt install chromium)")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="avemo-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic", "--mute-audio",
                "--autoplay-policy=no-user-gesture-required",
                "--allow-file-access-from-files", f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank"]

        def fds() -> None:  # the child's fd 3 reads our commands, fd 4 writes its answers
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self._proc = subprocess.Popen(args, preexec_fn=fds, pass_fds=(3, 4),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        targets = self._call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self._session = self._call("Target.attachToTarget", targetId=page["targetId"],
                                   flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")

    # -- protocol -------------------------------------------------------------------------
    def _send(self, msg: dict) -> None:
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if time.time() > deadline:
                raise BrowserError("no answer from Chromium")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise BrowserError("Chromium closed its pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        msg: dict = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self._send(msg)
        deadline = time.time() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def call(self, method: str, **params) -> dict:
        return self._call(method, self._session, **params)

    # -- what tests use ------------------------------------------------------------------
    def open(self, url: str, ready: str = "document.readyState === 'complete'") -> None:
        """Navigate and wait until the expression ``ready`` is true in the page."""
        self.call("Page.navigate", url=url)
        self.wait_for(ready)

    def eval(self, expression: str, await_promise: bool = True):
        """The value of a script expression in the page (a promise is awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=await_promise)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"script failed: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> None:
        deadline = time.time() + (timeout or self.timeout)
        while time.time() < deadline:
            try:
                if self.eval(f"!!({expression})"):
                    return
            except BrowserError:
                pass
            time.sleep(0.05)
        raise BrowserError(f"timed out waiting for: {expression}")

    def click(self, x: float, y: float) -> None:
        """A real mouse click at page coordinates (CSS pixels)."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"],
                              "height": size["height"], "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", **params)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            self._call("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
