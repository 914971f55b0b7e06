"""The portal in a real headless browser: Playwright driving Debian's chromium.

Fills the submission form (typed area, advanced parameter left at its default),
submits, waits on the job page for the job to finish, checks that the animated
overlay is on the Leaflet map at the bounds of overlays.json and that its frames
change, clicks the map to plot the time series, and saves a screenshot
(``portal_job.png`` in the test's temporary folder, or in ``$TIO_SCREENSHOT_DIR``).

Chromium is installed by ``.ci/run`` (``apt-get install chromium``); Playwright's
own browser downloads are not used.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tio.synthetic import make_scene
from web_server import Server

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("TIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}: install it with `apt-get install chromium`")
    root = tmp_path_factory.mktemp("browser")
    make_scene(root / "scenes", shape=(200, 200), n_dates=6, seed=5)
    srv = Server(root / "jobs", {"valley": root / "scenes"}).start()
    yield srv
    srv.stop()


def test_submit_watch_and_explore_a_job_in_the_browser(portal, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    shots = Path(os.environ.get("TIO_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(portal.url + "/portal/")
            page.wait_for_selector("#source option[value='folder:valley']", state="attached")
            # the data folder's quicklook is the map background; the area is typed
            page.wait_for_selector(".leaflet-image-layer", state="attached")
            # drawing the area: press, drag, release on the map fills the four fields
            page.click("#draw")
            m = page.locator("#map").bounding_box()
            page.mouse.move(m["x"] + m["width"] * 0.4, m["y"] + m["height"] * 0.4)
            page.mouse.down()
            page.mouse.move(m["x"] + m["width"] * 0.6, m["y"] + m["height"] * 0.6, steps=5)
            page.mouse.up()
            drawn = [float(page.input_value(f"#bbox-{k}")) for k in "wsen"]
            assert drawn[0] < drawn[2] and drawn[1] < drawn[3], drawn
            assert page.locator("path.leaflet-interactive").count() == 1  # the rectangle
            src = page.evaluate(
                "fetch('/api/portal').then(r => r.json()).then(i => i.sources[0].bbox)"
            )
            w, s, e, n = src
            page.fill("#bbox-w", str(w - 0.001))
            page.fill("#bbox-s", str(s - 0.001))
            page.fill("#bbox-e", str(e + 0.001))
            page.fill("#bbox-n", str(n + 0.001))
            page.fill("#max_cloud", "0.6")
            page.fill("#title", "browser job")
            page.click("#advanced > summary")
            assert page.input_value("#p-correlation-window") == "32"  # defaults shown
            page.screenshot(path=str(shots / "portal_form.png"))
            page.click("#submit")
            page.wait_for_url("**/job.html?id=*")
            page.wait_for_selector("body[data-status=successful]", timeout=400_000)

            # the animated overlay on the map, at the bounds of overlays.json
            anim = page.wait_for_selector("img.tio-animation", state="visible")
            # poll from Python: wait_for_function's in-page polling needs eval, which the
            # portal's content security policy rightly forbids
            for _ in range(300):
                if page.evaluate("document.querySelector('img.tio-animation').naturalWidth") > 0:
                    break
                page.wait_for_timeout(100)
            else:
                raise AssertionError("the animated overlay never loaded")
            assert "overlays/animation_4326.png" in anim.get_attribute("src")
            box = anim.bounding_box()
            assert box["width"] > 50 and box["height"] > 50
            first = anim.screenshot()
            page.wait_for_timeout(1300)  # frames last 0.6 s
            frames = {first, anim.screenshot()}
            page.wait_for_timeout(700)
            frames.add(anim.screenshot())
            assert len(frames) > 1, "the overlay does not animate"
            assert page.locator(".leaflet-image-layer").count() >= 2  # reference + animation
            assert page.locator("#gallery img").count() >= 4  # quicklooks
            assert page.locator("#files a").count() > 10
            assert page.get_attribute("#zip", "href").endswith("/download.zip")

            # a click on the map plots the time series there
            page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
            page.wait_for_selector("#chart svg polyline")
            assert page.locator("#chart svg polyline").count() == 3
            page.wait_for_timeout(300)
            page.screenshot(path=str(shots / "portal_job.png"))

            page.goto(portal.url + "/portal/jobs.html")
            page.wait_for_selector("#jobs tbody tr td.status-successful")
            assert "browser job" in page.inner_text("#jobs")
        finally:
            browser.close()
    assert not errors, errors
    assert (shots / "portal_job.png").stat().st_size > 10_000
