"""The web app in a real browser: how long a portrait takes from the Animate button to the playable result, and
the page's picture for the README (docs/app.jpg).

    python -m benchmarks.bench_app

`python -m src.app` runs in its own process with an untrained `demo`-size generator (128 px, mesh prior: it
warps along the mesh), headless Chromium (Debian's, through Selenium) uploads a fixture portrait and a fixture
talking-head clip and presses Animate; the time is from the click to the result's <video> element, so it holds
the upload-free part of a user's wait: landmark passes, generation, encoding and the page's update.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import FIXTURES, animate_in_page, headless_chromium, save, start_app, untrained_generator

PICTURE = Path("docs/app.jpg")


def main() -> None:
    import cv2
    from selenium.webdriver.common.by import By

    tmp = Path(tempfile.mkdtemp(prefix="bench_app_"))
    generator = untrained_generator(tmp / "demo.ckpt", ["model=demo"])
    portrait = FIXTURES / "portraits" / "portrait_a.jpg"
    driving = sorted((FIXTURES / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[0]
    proc, url = start_app(["--checkpoint", str(generator), "--outputs", str(tmp / "outputs"), "--device", "cpu"],
                          tmp / "server.log")
    browser = headless_chromium(1280, 1500)
    try:
        t0 = time.time()
        animate_in_page(browser, url, portrait, driving)
        seconds = time.time() - t0  # includes the two uploads (local, ~0.3 MB) and the page load

        browser.find_element(By.XPATH, "//*[normalize-space(text())='controls']").click()  # show them too
        browser.execute_script("window.scrollTo(0, 0)")
        time.sleep(1.5)
        browser.save_screenshot(str(tmp / "page.png"))
    finally:
        browser.quit()
        proc.terminate()
        proc.wait(timeout=30)
    PICTURE.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(PICTURE), cv2.imread(str(tmp / "page.png")), [cv2.IMWRITE_JPEG_QUALITY, 80])
    save("app", {"command": "python -m benchmarks.bench_app", "driving_clip": f"{driving.parent.parent.name} "
                 f"({driving.stat().st_size // 1024} KB, 120 frames)", "generator": "untrained demo preset, 128 px",
                 "page_open_upload_animate_s": round(seconds, 1), "picture": str(PICTURE)})


if __name__ == "__main__":
    main()
