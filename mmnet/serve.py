"""The web page of ``mmnet serve`` around a Predictor. Upload an image, type an expression, and see
the mask over the image and every query's mask with its score.

The page is open to whoever reaches it, so everything it takes in is bounded: the expression's
length, the pixels decoded for inference, the requests waiting, and the files Gradio keeps."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from mmnet.data.errors import DataError
from mmnet.data.images import load_image
from mmnet.data.tokenizer import word_tokens
from mmnet.errors import MMNetError
from mmnet.predictor import Predictor
from mmnet.visualize import overlay, spotlight

TITLE = "MMNet: referring image segmentation"
READABLE = "upload a PNG, JPEG or WebP picture"


def read_upload(path: str, *, max_pixels: int) -> tuple[Image.Image, Optional[tuple[int, int]]]:
    """The uploaded picture as RGB, downscaled (aspect kept) to at most ``max_pixels``, and its
    (width, height) before, when it was downscaled. The header is read first, so that a file that is
    no image, or one past PIL's ``Image.MAX_IMAGE_PIXELS`` guard, is refused before any pixel is decoded."""
    import gradio as gr

    name = html.escape(Path(path).name)  # Gradio shows an error's message as HTML
    if not Path(path).is_file():
        raise gr.Error(f"{name} is no longer on the server (uploads are deleted after a while); upload it again.")
    try:
        Image.open(path).close()
    except Image.DecompressionBombError as err:
        raise gr.Error(f"{name} is too large to decode: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise gr.Error(f"{name} is not an image this page can read; {READABLE}.") from err
    try:
        picture = load_image(path)
    except DataError as err:
        raise gr.Error(f"{name} cannot be decoded as an image (it may be cut short or damaged); {READABLE}.") from err
    pixels = picture.width * picture.height
    if pixels <= max_pixels:
        return picture, None
    scale = math.sqrt(max_pixels / pixels)
    size = (max(1, math.floor(picture.width * scale)), max(1, math.floor(picture.height * scale)))
    return picture.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0), picture.size


def answer(predictor: Predictor, image: Optional[str], text: Optional[str], *, max_text_length: int, max_pixels: int):
    """The page's one action on an uploaded image file: (overlay, [(query mask, caption), ...], summary).

    Args:
        image: the uploaded file's path (read by ``read_upload``).
        max_text_length: longer expressions (in characters, after stripping) are refused.
        max_pixels: larger images are downscaled to this many pixels before inference, and the
            overlay and query masks are shown at that size.
    """
    import gradio as gr

    if image is None:
        raise gr.Error("Upload an image first.")
    text = (text or "").strip()
    if not text:
        raise gr.Error("Type an expression, e.g. 'the dog on the left'.")
    if len(text) > max_text_length:
        raise gr.Error(f"The expression has {len(text):,} characters; this page reads at most {max_text_length:,}.")
    picture, downscaled_from = read_upload(image, max_pixels=max_pixels)
    try:
        result = predictor.predict(picture, text)
    except MMNetError as err:
        raise gr.Error(str(err)) from None
    shown = np.zeros_like(result.probability) if result.no_target else result.probability  # nothing matches: all dimmed
    outlined = overlay(picture, shown, threshold=result.threshold)
    order = np.argsort(-result.query_scores, kind="stable")
    # Without the Multi-Mask Projector the one mask is the prediction: nothing per query to show.
    shown = order if len(result.query_masks) == len(order) else []
    queries = [(spotlight(picture, result.query_masks[n]), f"query {n + 1}: {result.query_scores[n]:.2f}") for n in shown]
    attention = result.word_attention[order[0]]
    words = ", ".join(f"{token} {weight:.2f}" for token, weight in zip(result.tokens, attention))
    if result.no_target:
        found = f"**{result.text}**: nothing matches (no-target probability {result.no_target_probability:.2f})."
    else:
        found = (
            f"**{result.text}**: {100 * result.mask.mean():.1f}% of the image is the object "
            f"(probability above {predictor.threshold:.2f})."
        )
        if result.no_target_probability is not None:
            found += f" No-target probability {result.no_target_probability:.2f}."
    summary = (
        f"{found} Best query: {order[0] + 1} of {len(order)}, "
        f"score {result.query_scores[order[0]]:.2f}; its word weights: {words}."
    )
    if result.truncated:
        summary += (
            f"\n\nCut at the context length: the expression has {word_tokens(result.text) + 2} tokens with [SOS] and "
            f"[EOS]; the model read the first {len(result.tokens)}."
        )
    if downscaled_from is not None:
        summary += (
            f"\n\nDownscaled from {downscaled_from[0]} x {downscaled_from[1]} to {picture.width} x {picture.height} "
            f"pixels (this page reads at most {max_pixels:,} pixels)."
        )
    return outlined, queries, summary


def build_app(
    predictor: Predictor,
    *,
    max_text_length: int = 500,
    max_pixels: int = 2048 * 2048,
    queue_size: int = 16,
    concurrency: int = 1,
    cache_age: int = 3600,
):
    """The Gradio page for ``predictor``, with its limits.

    Args:
        max_text_length: longest expression read, in characters; longer ones are refused.
        max_pixels: images with more pixels are downscaled to this many before inference.
        queue_size: requests that may wait; beyond it a request is turned away ("Queue is full").
        concurrency: requests computed at once.
        cache_age: seconds that uploads and results stay in Gradio's cache; it is swept as often.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    with gr.Blocks(title=TITLE, delete_cache=(cache_age, cache_age)) as app:
        gr.Markdown(f"# {TITLE}\nUpload an image and say which object you mean.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", elem_id="image")
                text = gr.Textbox(
                    label="Expression",
                    info=f"at most {max_text_length:,} characters",
                    placeholder="the blue triangle left of the circle",
                    elem_id="expression",
                )
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Image(label="Prediction", type="pil", interactive=False, elem_id="overlay")
                summary = gr.Markdown(elem_id="summary")
        queries = gr.Gallery(label="Each query's mask and score, best first", columns=6, elem_id="queries")
        # Unpreprocessed, the upload arrives as Gradio's file record, not yet opened: Gradio's own
        # reading would meet a file that is no image with its generic error, where read_upload says
        # what is wrong.
        action = dict(
            fn=lambda upload, t: answer(
                predictor, upload and upload["path"], t, max_text_length=max_text_length, max_pixels=max_pixels
            ),
            inputs=[image, text],
            outputs=[overlay, queries, summary],
            preprocess=False,
        )
        button.click(**action)
        text.submit(**action)
    return app.queue(max_size=queue_size, default_concurrency_limit=concurrency)
