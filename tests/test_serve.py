"""The web page: its action on its own, then the whole page driven in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from test_predictor import picture, tiny_predictor

gr = pytest.importorskip("gradio")

from mmnet.serve import build_app, segment  # noqa: E402  (needs gradio)


def test_segment_gives_the_overlay_the_queries_best_first_and_a_summary():
    predictor = tiny_predictor()
    image = picture()
    overlay, queries, summary = segment(predictor, image, "  the blue triangle ")
    result = predictor.predict(image, "the blue triangle")
    assert overlay.size == (70, 45)
    assert len(queries) == 5
    scores = [float(caption.split(": ")[1]) for _, caption in queries]
    assert scores == sorted(scores, reverse=True)
    assert all(q.size == (70, 45) for q, _ in queries)
    assert summary.startswith("**the blue triangle**")
    assert f"{100 * result.mask.mean():.1f}% of the image" in summary
    assert "[SOS]" in summary and "blue" in summary


def test_segment_asks_for_what_is_missing():
    predictor = tiny_predictor()
    with pytest.raises(gr.Error, match="Upload an image"):
        segment(predictor, None, "the cat")
    with pytest.raises(gr.Error, match="Type an expression"):
        segment(predictor, picture(), "   ")


def _chromium() -> str | None:
    return os.environ.get("MMNET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_in_a_headless_browser(tmp_path):
    """CI sets MMNET_REQUIRE_BROWSER=1, so that there a missing browser fails instead of skipping."""
    required = os.environ.get("MMNET_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            raise
        pytest.skip("playwright is not installed")
    chromium = _chromium()
    if chromium is None:
        if required:
            pytest.fail("MMNET_REQUIRE_BROWSER=1 but no chromium found (apt-get install chromium, or set MMNET_CHROMIUM)")
        pytest.skip("no chromium on this machine (apt-get install chromium, or set MMNET_CHROMIUM)")

    Image.fromarray(picture()).save(tmp_path / "photo.png")
    port = _free_port()
    app = build_app(tiny_predictor())
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#expression textarea").fill("the blue triangle")
            page.locator("#segment").click()
            page.get_by_text("Upload an image first.").first.wait_for(timeout=30_000)  # no image yet: the page says so

            page.locator("#image input[type=file]").set_input_files(str(tmp_path / "photo.png"))
            page.locator("#segment").click()
            overlay = page.locator("#overlay img")
            overlay.wait_for(timeout=60_000)
            page.wait_for_function("() => { const i = document.querySelector('#overlay img'); return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
            assert page.evaluate("() => [document.querySelector('#overlay img').naturalWidth, document.querySelector('#overlay img').naturalHeight]") == [70, 45]
            page.locator("#queries img").nth(4).wait_for(timeout=60_000)
            assert page.locator("#queries img").count() == 5
            for n in range(1, 6):  # every query's score is shown beside its mask
                assert page.locator("#queries").get_by_text(f"query {n}: ").count() >= 1
            assert "the blue triangle" in page.locator("#summary").inner_text()
            browser.close()
    finally:
        app.close()
