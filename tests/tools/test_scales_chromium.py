"""The HTML scales dashboard in real headless Chromium (Debian's package): it renders without
script errors, its plots hold drawn pixels, and the step and layer filter change what it shows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

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


def _chromium(binary: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={WINDOW}", "--enable-logging=stderr", "--v=0", *args, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )  # fmt: skip


def _open(binary: str, page: Path, view: str, shot: Path) -> tuple[str, object]:
    """The page's DOM after its scripts ran and a screenshot of the same view; asserts the
    console stayed silent (an uncaught error is logged there).

    Args:
        binary: chromium.
        page: the dashboard file.
        view: the address fragment (``step=..&layers=..``).
        shot: where the screenshot goes.
    """
    from PIL import Image

    url = f"{page.as_uri()}#{view}"
    dom = _chromium(binary, url, "--dump-dom")
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    _chromium(binary, url, f"--screenshot={shot}")
    return dom.stdout, Image.open(shot).convert("RGB")


def _canvases(dom: str) -> list[dict[str, str]]:
    found = []
    for tag in re.findall(r"<canvas [^>]*>", dom):
        found.append(dict(re.findall(r'([\w-]+)="([^"]*)"', tag)))
    return found


def _crop(image, canvas: dict[str, str]):
    x, y, w, h = (int(v) for v in canvas["data-box"].split(","))
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


def test_dashboard_renders_histograms_and_curves(chromium, tmp_path):
    run = write_run(tmp_path, [0, 10, 20, 30])
    assert scales.main([str(run)]) == 0
    page = run / "scales.html"
    dom, image = _open(chromium, page, "", tmp_path / "last.png")
    assert 'data-rendered="ok"' in dom and 'data-step="30"' in dom
    canvases = _canvases(dom)
    hists = [c for c in canvases if c.get("class") == "hist"]
    assert {(c["data-layer"], c["data-tensor"]) for c in hists} == {
        (layer, tensor) for layer in LAYERS for tensor in TENSORS
    }
    for c in hists:
        # A Gaussian of 4,096 elements spans some ten powers of two; each bar is >= 10 px high.
        assert int(c["data-bars"]) >= 8, c
        assert _pixels(image, c, COLOURS[c["data-tensor"]]) > 150, c
    curves = [c for c in canvases if c.get("class") == "curve"]
    assert len(curves) == len(TENSORS)
    for c in curves:
        assert int(c["data-points"]) == 4 * len(LAYERS)
        assert _pixels(image, c) > 1000, c  # five coloured 2-px lines across the plot
    (profile,) = [c for c in canvases if c.get("id") == "profile"]
    assert profile["data-rows"] == str(len(LAYERS) * len(TENSORS))
    assert _pixels(image, profile) > 2000
    assert "<td>head</td><td>act_grad</td>" in dom  # the values table of the step

    # Another step and two layers: fewer plots, and the drifting gradient's bars move.
    dom0, image0 = _open(chromium, page, "step=0&layers=block1,head", tmp_path / "first.png")
    assert 'data-step="0"' in dom0
    hists0 = [c for c in _canvases(dom0) if c.get("class") == "hist"]
    assert {c["data-layer"] for c in hists0} == {"block1", "head"}
    (grad0,) = [c for c in hists0 if (c["data-layer"], c["data-tensor"]) == ("head", "act_grad")]
    (grad30,) = [c for c in hists if (c["data-layer"], c["data-tensor"]) == ("head", "act_grad")]
    colour, width = COLOURS["act_grad"], int(grad30["data-box"].split(",")[2])
    # head's gradient RMS falls by 2^-24 from step 0 to 30 (0.8 per step): its histogram moves
    # left by about 24 of the axis' ~60 powers of two, i.e. over a quarter of the plot's width.
    assert _centre(image0, grad0, colour) - _centre(image, grad30, colour) > 0.25 * width


def test_records_without_histograms_render_rms_only(chromium, tmp_path):
    run = write_run(tmp_path, [0, 10], histograms=False)
    assert scales.main([str(run)]) == 0
    dom, image = _open(chromium, run / "scales.html", "", tmp_path / "shot.png")
    assert 'data-rendered="ok"' in dom
    canvases = _canvases(dom)
    assert all(c["data-bars"] == "0" for c in canvases if c.get("class") == "hist")
    (profile,) = [c for c in canvases if c.get("id") == "profile"]
    assert _pixels(image, profile) > 2000
    for c in (c for c in canvases if c.get("class") == "curve"):
        assert int(c["data-points"]) == 2 * len(LAYERS) and _pixels(image, c) > 500


def test_a_real_tiny_run_renders_what_its_monitor_recorded(chromium, tmp_path):
    trainer = make_trainer(tmp_path, [ScaleMonitor(every_n_steps=1)], max_steps=3)
    trainer.fit(tiny_task(), tiny_loader())
    records = scales.load_records(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert scales.main([str(tmp_path), "--out", str(tmp_path / "scales.html")]) == 0
    dom, image = _open(chromium, tmp_path / "scales.html", "", tmp_path / "shot.png")
    assert 'data-rendered="ok"' in dom and 'data-step="2"' in dom
    canvases = _canvases(dom)
    recorded = {(layer, t): v for layer, ts in records[-1]["layers"].items() for t, v in ts.items()}
    hists = {(c["data-layer"], c["data-tensor"]): c for c in canvases if c.get("class") == "hist"}
    assert hists.keys() == recorded.keys()
    for key, values in recorded.items():
        if "log2_hist" in values:  # written by monitors that keep histograms
            want = sum(1 for n in values["log2_hist"]["counts"] if n > 0)
            assert hists[key]["data-bars"] == str(want)
            assert _pixels(image, hists[key], COLOURS[key[1]]) > 0, key
        else:
            assert hists[key]["data-bars"] == "0"
    (profile,) = [c for c in canvases if c.get("id") == "profile"]
    assert profile["data-rows"] == str(len(recorded))
    for c in (c for c in canvases if c.get("class") == "curve"):
        kind = sum(1 for layer, t in recorded if t == c["data-tensor"])
        assert int(c["data-points"]) == 3 * kind and _pixels(image, c) > 100
