"""The explorer in a real browser: Debian's headless Chromium, driven by selenium through Debian's
chromedriver (nothing downloads a browser), loads the page of a tiny CapsNet-with-decoder run,
drags a slider of the winning capsule, and the decoded image on the page must change and equal,
pixel for pixel, the model's own decoding of the capsule values the page holds.

Skipped, with the reason, where Chromium, chromedriver or selenium is missing (``make test``
installs the Debian packages where it can). Also a script that makes the README's screenshot:

    python tests/test_explore_browser.py RUN OUT.png
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 30.0      # seconds the page may take for one step (2 busy cores, a cold Chromium)


def pixels(data_url: str) -> np.ndarray:
    arr = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))
    return arr[..., None] if arr.ndim == 2 else arr


@contextmanager
def serving(run: Path):
    """The explorer of ``run`` on a free localhost port, in a thread: yields the server."""
    from capsgen.explore.server import make_server, open_explorer

    srv = make_server(open_explorer(run), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@contextmanager
def chromium():
    """Headless Chromium whose profile and scratch files (its TMPDIR) live in a folder removed
    afterwards: by default each run left an org.chromium.Chromium.* folder in /tmp."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="capsgen-chromium-") as scratch:
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1100,760", "--disable-extensions", "--no-first-run",
                    f"--user-data-dir={scratch}/profile"):
            opts.add_argument(arg)
        service = Service(CHROMEDRIVER, env={**os.environ, "TMPDIR": scratch})
        driver = webdriver.Chrome(service=service, options=opts)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver, script: str, what: str):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    error = driver.execute_script("return document.getElementById('error').textContent")
    raise AssertionError(f"the page did not {what} within {WAIT:.0f} s (page error: {error!r})")


def drag_a_slider(driver, dim: int, pixels_right: int = 60) -> dict:
    """Drag slider ``dim`` of the edited capsule and wait until the page shows its decoding of the
    new values; returns {"before": src, "after": src, "shown": {poses, active}, "encoded": poses}."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    wait_for(driver, "const s = window.capsgenExplorer; return document.body.dataset.ready && s.shown && "
                     "document.getElementById('decoded-image').src.startsWith('data:')", "load and encode")
    before = driver.find_element(By.ID, "decoded-image").get_attribute("src")
    encoded = driver.execute_script("return window.capsgenExplorer.a.poses")
    slider = driver.find_elements(By.CSS_SELECTOR, "#sliders input")[dim]
    ActionChains(driver).click_and_hold(slider).move_by_offset(pixels_right, 0).release().perform()
    wait_for(driver, "const s = window.capsgenExplorer; return s.decodes > 0 && !s.inflight && !s.pending",
             "decode the dragged values")
    return {"before": before, "after": driver.find_element(By.ID, "decoded-image").get_attribute("src"),
            "shown": driver.execute_script("return window.capsgenExplorer.shown"), "encoded": encoded,
            "edit": driver.execute_script("return window.capsgenExplorer.edit")}


needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                   reason="no Debian chromium + chromium-driver here "
                                          "(apt-get install chromium chromium-driver; make test does it)")


@needs_browser
def test_dragging_a_slider_redecodes_the_image_as_the_model_does(tiny_capsnet_run):
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    from capsgen.report.figures import to_uint8_hwc

    with serving(tiny_capsnet_run) as srv, chromium() as driver:
        from capsgen.explore.server import url_of

        driver.get(url_of(srv))
        got = drag_a_slider(driver, dim=2)
        task = srv.explorer.task
    k, shown = got["edit"], got["shown"]
    assert shown["poses"][k][2] != pytest.approx(got["encoded"][k][2], abs=1e-3), "the slider did not move"
    assert got["after"] != got["before"], "the decoded image did not change"
    poses, active = torch.tensor(shown["poses"])[None], torch.tensor(shown["active"])[None]
    want = to_uint8_hwc(task.decode_poses(poses, active))[0]
    assert np.array_equal(pixels(got["after"]), want)


def screenshot(run: str, out: str) -> None:
    """The README's picture: the page of ``run`` after one slider drag, as a PNG."""
    with serving(Path(run)) as srv, chromium() as driver:
        from capsgen.explore.server import url_of

        driver.get(url_of(srv))
        drag_a_slider(driver, dim=0)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(out)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    screenshot(*sys.argv[1:3])
