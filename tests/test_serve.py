"""The web page: its action on its own, then the whole page driven in a real headless Chromium."""

from __future__ import annotations

import inspect
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from test_predictor import picture, tiny_predictor

gr = pytest.importorskip("gradio")

import mmnet.serve  # noqa: E402
from mmnet.cli import main  # noqa: E402
from mmnet.predictor import Predictor  # noqa: E402
from mmnet.serve import answer, build_app  # noqa: E402  (needs gradio)

LIMITS = dict(max_text_length=40, max_pixels=70 * 45)


def photo(path, height: int = 45, width: int = 70) -> str:
    """``picture()`` saved as a PNG at ``path``, as the page receives an upload."""
    Image.fromarray(picture(height, width)).save(path)
    return str(path)


def test_answer_gives_the_overlay_the_queries_best_first_and_a_summary(tmp_path):
    predictor = tiny_predictor()
    overlay, queries, summary = answer(predictor, photo(tmp_path / "photo.png"), "  the blue triangle ", **LIMITS)
    result = predictor.predict(picture(), "the blue triangle")
    assert overlay.size == (70, 45)
    assert len(queries) == 5
    scores = [float(caption.split(": ")[1]) for _, caption in queries]
    assert scores == sorted(scores, reverse=True)
    assert all(q.size == (70, 45) for q, _ in queries)
    assert summary.startswith("**the blue triangle**")
    assert f"{100 * result.mask.mean():.1f}% of the image" in summary
    assert "[SOS]" in summary and "blue" in summary
    assert "Downscaled" not in summary and "Cut at the context length" not in summary


@pytest.mark.parametrize("bias", [5.0, -5.0])
def test_answer_says_nothing_matches_when_the_no_target_head_fires(tmp_path, bias):
    import numpy as np

    from test_generalized import _predictor

    predictor = _predictor(True, bias=bias)
    overlay, queries, summary = answer(predictor, photo(tmp_path / "photo.png"), "the purple star", **LIMITS)
    probability = 1 / (1 + np.exp(-bias))
    assert f"o-target probability {probability:.2f}" in summary
    assert ("nothing matches" in summary) == (bias > 0)
    assert ("% of the image is the object" in summary) == (bias < 0)
    assert len(queries) == 5  # each query's mask is still shown
    # Nothing matches: the overlay of a probability of 0 everywhere, with no outline; else the probability's.
    from mmnet.visualize import overlay as draw

    result = predictor.predict(picture(), "the purple star")
    shown = np.zeros_like(result.probability) if bias > 0 else result.probability
    np.testing.assert_array_equal(np.asarray(overlay), np.asarray(draw(Image.fromarray(picture()), shown, threshold=result.threshold)))
    # ... which differs from the probability's: where the head fires, the page's picture changes.
    as_predicted = np.asarray(draw(Image.fromarray(picture()), result.probability, threshold=result.threshold))
    assert np.array_equal(np.asarray(overlay), as_predicted) == (bias < 0)


def test_answer_asks_for_what_is_missing(tmp_path):
    predictor = tiny_predictor()
    with pytest.raises(gr.Error, match="Upload an image"):
        answer(predictor, None, "the cat", **LIMITS)
    with pytest.raises(gr.Error, match="Type an expression"):
        answer(predictor, photo(tmp_path / "photo.png"), "   ", **LIMITS)


def test_an_expression_over_the_limit_is_refused_without_being_echoed(tmp_path):
    image = photo(tmp_path / "photo.png")
    text = "the blue triangle left of the red circle " * 1000
    with pytest.raises(gr.Error) as refused:
        answer(tiny_predictor(), image, text, **LIMITS)
    assert refused.value.message == f"The expression has {len(text.strip()):,} characters; this page reads at most 40."
    at_the_limit = "the blue triangle left of the red circle"
    assert len(at_the_limit) == 40
    assert answer(tiny_predictor(), image, at_the_limit, **LIMITS)[2].startswith(f"**{at_the_limit}**")


def test_a_larger_image_is_downscaled_before_inference_and_the_summary_says_so(tmp_path, monkeypatch):
    seen = []
    predict = Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, image, text: seen.append(image.size) or predict(self, image, text))
    overlay, queries, summary = answer(tiny_predictor(), photo(tmp_path / "large.png", 90, 140), "the blue triangle", **LIMITS)
    assert seen == [(70, 45)]  # 140 x 90 has four times the 70 x 45 allowed: halved on each side
    assert overlay.size == (70, 45) and all(q.size == (70, 45) for q, _ in queries)
    assert "Downscaled from 140 x 90 to 70 x 45 pixels (this page reads at most 3,150 pixels)." in summary


def test_an_image_too_large_to_decode_is_refused_from_its_header(tmp_path, monkeypatch):
    image = photo(tmp_path / "bomb.png", 90, 140)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 140 * 90 // 4)  # PIL refuses twice this, here 140 x 90
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded an image too large to decode"))
    with pytest.raises(gr.Error, match=r"bomb.png is too large to decode: Image size \(12600 pixels\) exceeds limit"):
        answer(tiny_predictor(), image, "the blue triangle", **LIMITS)


def test_a_file_that_is_not_an_image_gets_a_clear_message(tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("a shopping list, not a picture")
    with pytest.raises(gr.Error) as refused:
        answer(tiny_predictor(), str(notes), "the blue triangle", **LIMITS)
    assert refused.value.message == "notes.png is not an image this page can read; upload a PNG, JPEG or WebP picture."
    cut = tmp_path / "cut.png"  # a PNG's header and the start of its pixels
    cut.write_bytes(Path(photo(tmp_path / "whole.png")).read_bytes()[:200])
    with pytest.raises(gr.Error, match=r"cut.png cannot be decoded as an image \(it may be cut short or damaged\)"):
        answer(tiny_predictor(), str(cut), "the blue triangle", **LIMITS)


def test_an_upload_deleted_from_the_cache_is_asked_for_again(tmp_path):
    with pytest.raises(gr.Error, match="photo.png is no longer on the server .*; upload it again"):
        answer(tiny_predictor(), str(tmp_path / "photo.png"), "the blue triangle", **LIMITS)


def test_an_expression_cut_at_the_context_length_is_noted_in_the_summary(tmp_path):
    predictor = tiny_predictor()
    text = "the blue triangle " * 6  # 18 words and [SOS], [EOS]: over the tiny model's 17 tokens
    summary = answer(predictor, photo(tmp_path / "photo.png"), text, max_text_length=500, max_pixels=70 * 45)[2]
    assert predictor.config.model.context_length == 17
    assert "Cut at the context length: the expression has 20 tokens with [SOS] and [EOS]; the model read the first 17." in summary


def test_the_queue_is_bounded_and_the_cache_is_swept():
    app = build_app(tiny_predictor(), queue_size=3, concurrency=2, cache_age=120)
    assert (app._queue.max_size, app._queue.default_concurrency_limit) == (3, 2)
    assert app.delete_cache == (120, 120)


def test_the_command_line_passes_every_limit_and_defaults_to_the_pages(monkeypatch):
    built = []
    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(lambda cls, name, device=None: tiny_predictor()))
    page = SimpleNamespace(launch=lambda **options: None)
    monkeypatch.setattr(mmnet.serve, "build_app", lambda predictor, **limits: built.append(limits) or page)
    given = dict(max_text_length=7, max_pixels=100, queue_size=3, concurrency=2, cache_age=120)
    options = [f"--{name.replace('_', '-')}={value}" for name, value in given.items()]
    assert main(["serve", "--checkpoint", "run/best", *options]) == 0
    assert main(["serve", "--checkpoint", "run/best"]) == 0
    defaults = {name: p.default for name, p in inspect.signature(build_app).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert built == [given, defaults]


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

    photo(tmp_path / "photo.png")
    photo(tmp_path / "large.png", 90, 140)
    (tmp_path / "notes.png").write_text("a shopping list, not a picture")
    port = _free_port()
    app = build_app(tiny_predictor(), **LIMITS)
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
            assert "Downscaled" not in page.locator("#summary").inner_text()

            page.locator("#expression textarea").fill("the blue triangle left of the red circle, under the square")
            page.locator("#segment").click()
            page.get_by_text("The expression has 58 characters; this page reads at most 40.").first.wait_for(timeout=30_000)

            def upload(name: str) -> None:
                page.get_by_role("button", name="Remove Image").click()
                page.locator("#image input[type=file]").set_input_files(str(tmp_path / name))
                page.locator("#expression textarea").fill("the blue triangle")
                page.locator("#segment").click()

            upload("large.png")
            page.locator("#summary").get_by_text("Downscaled from 140 x 90 to 70 x 45 pixels").wait_for(timeout=60_000)
            page.wait_for_function("() => { const i = document.querySelector('#overlay img'); return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
            assert page.evaluate("() => [document.querySelector('#overlay img').naturalWidth, document.querySelector('#overlay img').naturalHeight]") == [70, 45]

            upload("notes.png")
            page.get_by_text("notes.png is not an image this page can read").first.wait_for(timeout=30_000)
            browser.close()
    finally:
        app.close()
