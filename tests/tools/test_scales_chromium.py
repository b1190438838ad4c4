"""The HTML scales dashboard in real headless Chromium (Debian's package), driven over the
DevTools protocol: it renders without script errors, its plots hold drawn pixels, and moving
the step slider or unticking layers changes what it shows."""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lit_unitscale.callbacks import ScaleMonitor
from lit_unitscale.tools import scales
from tests.callbacks.conftest import make_trainer
from tests.callbacks.tiny import tiny_loader, tiny_task

from .scales_records import LAYERS, TENSORS, write_run

WINDOW = "1420,2600"
COLOURS = {  # bar colours of the dashboard's histograms, as RGB
    "act": (0x1F, 0x77, 0xB4),
    "weight": (0x17, 0xBE, 0xCF),
    "act_grad": (0xFF, 0x7F, 0x0E),
    "weight_grad": (0xD6, 0x27, 0x28),
    "update": (0x2C, 0xA0, 0x2C),
}
BACKGROUND = {(255, 255, 255), (0xEE, 0xEE, 0xEE), (0xE6, 0xDC, 0xF5)}  # page and range bands
CANVASES = (
    "JSON.stringify([...document.querySelectorAll('canvas')]"
    ".map((c) => ({id: c.id, cls: c.className, ...c.dataset})))"
)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium binary, installed with apt-get where it is missing and the tests run as root;
    skips only where it cannot be installed."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("headless Chromium is missing and cannot be installed (needs root + apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"could not install chromium: {proc.stderr.strip()[-300:]}")
    return shutil.which("chromium") or pytest.skip("apt-get installed no chromium binary")


class Browser:
    """Headless Chromium spoken to over ``--remote-debugging-pipe`` (file descriptors 3 and 4,
    messages ended by NUL), so no port and no websocket library are needed."""

    def __init__(self, binary: str):
        to_child, from_parent = os.pipe()
        from_child, to_parent = os.pipe()

        def wire() -> None:
            # Copy above 10 first: either end may itself be 3 or 4.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, to_parent)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={WINDOW}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_child)
        os.close(to_parent)
        self.out, self.inp = from_parent, from_child
        self.buffer, self.last_id, self.events = b"", 0, []

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            chunk = os.read(self.inp, 1 << 16)
            assert chunk, "chromium closed the DevTools pipe"
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Call ``method``; events that arrive meanwhile are kept in :attr:`events`."""
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self.last_id:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]
            self.events.append(reply)

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session)
        self.send("Page.navigate", session, url=url)
        page = Page(self, session)
        deadline = time.monotonic() + 60
        while page.eval("document.body && document.body.dataset.rendered") != "ok":
            assert not page.errors(), page.errors()
            assert time.monotonic() < deadline, "the dashboard did not finish rendering"
            time.sleep(0.05)
        return page

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        os.close(self.out)
        os.close(self.inp)


class Page:
    """One tab of :class:`Browser`."""

    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def eval(self, expression: str) -> Any:
        result = self.browser.send(
            "Runtime.evaluate", self.session, expression=expression, returnByValue=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def canvases(self) -> list[dict[str, str]]:
        return json.loads(self.eval(CANVASES))

    def screenshot(self):
        from PIL import Image

        data = self.browser.send("Page.captureScreenshot", self.session, format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def errors(self) -> list[dict[str, Any]]:
        """Uncaught exceptions, console messages and browser log entries of this tab (the page
        itself logs nothing, so any is a failure)."""
        kinds = ("Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded")
        return [
            e
            for e in self.browser.events
            if e.get("sessionId") == self.session and e.get("method") in kinds
        ]


@pytest.fixture(scope="module")
def browser(chromium) -> Iterator[Browser]:
    b = Browser(chromium)
    yield b
    b.close()


def _crop(image, canvas: dict[str, str]):
    x, y, w, h = (int(v) for v in canvas["box"].split(","))
    assert x + w <= image.width and y + h <= image.height, "plot outside the screenshot"
    return image.crop((x, y, x + w, y + h))


def _pixels(image, canvas: dict[str, str], colour: tuple[int, int, int] | None = None) -> int:
    """Pixels of ``colour`` (default: any not background) inside ``canvas``'s box."""
    crop = _crop(image, canvas).getdata()
    if colour is not None:
        return sum(1 for p in crop if p == colour)
    return sum(1 for p in crop if p not in BACKGROUND)


def _centre(image, canvas: dict[str, str], colour: tuple[int, int, int]) -> float:
    """Mean x (pixels from the canvas' left edge) of the ``colour`` pixels in ``canvas``."""
    crop = _crop(image, canvas)
    xs = [i % crop.width for i, p in enumerate(crop.getdata()) if p == colour]
    return sum(xs) / len(xs)


def _by_kind(canvases: list[dict[str, str]]) -> tuple[dict, list, dict]:
    hists = {(c["layer"], c["tensor"]): c for c in canvases if c["cls"] == "hist"}
    curves = [c for c in canvases if c["cls"] == "curve"]
    (profile,) = [c for c in canvases if c["id"] == "profile"]
    return hists, curves, profile


def test_slider_and_layer_filter_redraw_histograms_and_curves(browser, tmp_path):
    run = write_run(tmp_path, [0, 10, 20, 30])
    assert scales.main([str(run)]) == 0
    page = browser.open((run / "scales.html").as_uri())
    assert page.eval("document.body.dataset.step") == "30"
    image = page.screenshot()
    hists, curves, profile = _by_kind(page.canvases())
    assert hists.keys() == {(layer, tensor) for layer in LAYERS for tensor in TENSORS}
    for (_, tensor), c in hists.items():
        # A Gaussian of 4,096 elements spans some ten powers of two; each bar is >= 10 px high.
        assert int(c["bars"]) >= 8, c
        assert _pixels(image, c, COLOURS[tensor]) > 150, c
    assert len(curves) == len(TENSORS)
    for c in curves:
        assert int(c["points"]) == 4 * len(LAYERS)
        assert _pixels(image, c) > 1000, c  # five coloured 2-px lines across the plot
    assert profile["rows"] == str(len(LAYERS) * len(TENSORS))
    assert _pixels(image, profile) > 2000
    assert "<td>head</td><td>act_grad</td>" in page.eval(
        "document.getElementById('values').innerHTML"
    )

    # Slide to the first step: head's gradient RMS is 2^24 larger there (it falls 0.8 powers
    # of two per step), so its bars move right by ~24 of the axis' ~60 powers of two.
    page.eval("const s = document.getElementById('step'); s.value = '0';"
              "s.dispatchEvent(new Event('input'))")  # fmt: skip
    assert page.eval("document.body.dataset.step") == "0"
    assert page.eval("location.hash").startswith("#step=0&")
    image0 = page.screenshot()
    hists0, _, _ = _by_kind(page.canvases())
    key, colour = ("head", "act_grad"), COLOURS["act_grad"]
    width = int(hists[key]["box"].split(",")[2])
    assert _centre(image0, hists0[key], colour) - _centre(image, hists[key], colour) > 0.25 * width

    # Untick two layers: their histograms, profile rows, curves and table rows go.
    page.eval("for (const b of document.querySelectorAll('#layers input'))"
              "  if (['embed', 'block0'].includes(b.value)) b.click()")  # fmt: skip
    hists1, curves1, profile1 = _by_kind(page.canvases())
    assert {layer for layer, _ in hists1} == {"block1", "final_norm", "head"}
    assert profile1["rows"] == str(3 * len(TENSORS))
    assert all(int(c["points"]) == 4 * 3 for c in curves1)
    assert "<td>embed</td>" not in page.eval("document.getElementById('values').innerHTML")
    assert page.errors() == []


def test_the_address_opens_a_view_and_alerts_mark_their_histograms(browser, tmp_path):
    run = write_run(tmp_path, [0, 10, 20])
    alert = {"step": 10, "alerts": [{"layer": "head", "tensor": "act_grad", "reasons": ["RMS"]}]}
    with open(run / "scales.jsonl", "a") as f:
        f.write(json.dumps(alert) + "\n")
    assert scales.main([str(run)]) == 0
    page = browser.open((run / "scales.html").as_uri() + "#step=10&layers=head")
    assert page.eval("document.body.dataset.step") == "10"
    assert page.eval("document.getElementById('step').value") == "1"
    hists, _, profile = _by_kind(page.canvases())
    assert {layer for layer, _ in hists} == {"head"} and profile["rows"] == str(len(TENSORS))
    assert {key: c["alert"] for key, c in hists.items() if "alert" in c} == {
        ("head", "act_grad"): "10"
    }
    page.eval("const s = document.getElementById('step'); s.value = '0';"
              "s.dispatchEvent(new Event('input'))")  # fmt: skip
    assert not any("alert" in c for c in page.canvases())  # not yet alerted at step 0
    assert page.errors() == []


def test_records_without_histograms_render_rms_only(browser, tmp_path):
    run = write_run(tmp_path, [0, 10], histograms=False)
    assert scales.main([str(run)]) == 0
    page = browser.open((run / "scales.html").as_uri())
    image = page.screenshot()
    hists, curves, profile = _by_kind(page.canvases())
    assert len(hists) == len(LAYERS) * len(TENSORS)
    assert all(c["bars"] == "0" for c in hists.values())
    assert _pixels(image, profile) > 2000
    for c in curves:
        assert int(c["points"]) == 2 * len(LAYERS) and _pixels(image, c) > 500
    assert page.errors() == []


def test_a_real_tiny_run_renders_what_its_monitor_recorded(browser, tmp_path):
    trainer = make_trainer(tmp_path, [ScaleMonitor(every_n_steps=1)], max_steps=3)
    trainer.fit(tiny_task(), tiny_loader())
    records = scales.load_records(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert scales.main([str(tmp_path), "--out", str(tmp_path / "scales.html")]) == 0
    page = browser.open((tmp_path / "scales.html").as_uri())
    assert page.eval("document.body.dataset.step") == "2"
    image = page.screenshot()
    hists, curves, profile = _by_kind(page.canvases())
    recorded = {(layer, t): v for layer, ts in records[-1]["layers"].items() for t, v in ts.items()}
    assert hists.keys() == recorded.keys()
    for key, values in recorded.items():
        if "log2_hist" in values:  # written by monitors that keep histograms
            want = sum(1 for n in values["log2_hist"]["counts"] if n > 0)
            assert hists[key]["bars"] == str(want)
            assert _pixels(image, hists[key], COLOURS[key[1]]) > 0, key
        else:
            assert hists[key]["bars"] == "0"
    assert profile["rows"] == str(len(recorded))
    for c in curves:
        kind = sum(1 for _, t in recorded if t == c["tensor"])
        assert int(c["points"]) == 3 * kind and _pixels(image, c) > 100
    assert page.errors() == []
