"""`personseg demo` in a real browser: Debian's chromium, headless, driven by playwright (no browser
download), loads the demo on 127.0.0.1, uploads a real photo and reads back a PNG mask of its size."""
import io
import os
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio", reason='the demo needs Gradio: pip install "personseg[demo]"')
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright: pip install playwright")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no chromium: apt-get install -y chromium (CI's .ci/run does)")
def test_demo_in_chromium_returns_a_png_mask_of_the_photo_size(data_dir, tmp_path):
    from personseg.demo import Models, build_demo, launch

    photo = tmp_path / "person.jpg"
    Image.open(data_dir / "portraits" / "images" / "00001.jpg").convert("RGB").resize((300, 400)).save(photo)
    port = free_port()
    demo = build_demo(Models(["fast"], "fast", refine=False))
    launch(demo, port=port, block=False)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True, timeout=60_000)
            try:
                page = browser.new_page()
                page.set_default_timeout(90_000)
                page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
                page.locator("#photo input[type=file]").set_input_files(str(photo))
                result = page.locator("#mask img")
                result.wait_for(state="visible")
                src = result.get_attribute("src")
                page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)  # kept for a failing run
                body = page.request.get(src if src.startswith("http") else f"http://127.0.0.1:{port}{src}").body()
            finally:
                browser.close()
    finally:
        demo.close()
    assert body[:8] == b"\x89PNG\r\n\x1a\n", f"the mask is not a PNG: {src}"
    mask = np.asarray(Image.open(io.BytesIO(body)).convert("L"))
    assert mask.shape == (400, 300)
    assert set(np.unique(mask)) <= {0, 255} and 0.2 < (mask == 255).mean() < 0.9  # a portrait's person
