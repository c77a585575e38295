"""The web page of ``mmnet serve`` around a Predictor. Upload an image, type an expression, and see
the mask over the image and every query's mask with its score."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PIL import Image

from mmnet.errors import MMNetError
from mmnet.predictor import Predictor
from mmnet.visualize import overlay, spotlight

TITLE = "MMNet: referring image segmentation"


def segment(predictor: Predictor, image: Optional[np.ndarray], text: Optional[str]):
    """The page's one action: (overlay, [(query mask, caption), ...], summary)."""
    import gradio as gr

    if image is None:
        raise gr.Error("Upload an image first.")
    if not text or not text.strip():
        raise gr.Error("Type an expression, e.g. 'the dog on the left'.")
    try:
        result = predictor.predict(image, text.strip())
    except MMNetError as err:
        raise gr.Error(str(err)) from None
    picture = Image.fromarray(image).convert("RGB")
    outlined = overlay(picture, result.probability, threshold=result.threshold)
    order = np.argsort(-result.query_scores, kind="stable")
    # Without the Multi-Mask Projector the one mask is the prediction: nothing per query to show.
    shown = order if len(result.query_masks) == len(order) else []
    queries = [(spotlight(picture, result.query_masks[n]), f"query {n + 1}: {result.query_scores[n]:.2f}") for n in shown]
    attention = result.word_attention[order[0]]
    words = ", ".join(f"{token} {weight:.2f}" for token, weight in zip(result.tokens, attention))
    summary = (
        f"**{result.text}**: {100 * result.mask.mean():.1f}% of the image is the object "
        f"(probability above {predictor.threshold:.2f}). Best query: {order[0] + 1} of {len(order)}, "
        f"score {result.query_scores[order[0]]:.2f}; its word weights: {words}."
    )
    return outlined, queries, summary


def build_app(predictor: Predictor):
    """The Gradio page for ``predictor``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\nUpload an image and say which object you mean.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="numpy", image_mode="RGB", elem_id="image")
                text = gr.Textbox(label="Expression", placeholder="the blue triangle left of the circle", elem_id="expression")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Image(label="Prediction", type="pil", interactive=False, elem_id="overlay")
                summary = gr.Markdown(elem_id="summary")
        queries = gr.Gallery(label="Each query's mask and score, best first", columns=6, elem_id="queries")
        action = dict(fn=lambda i, t: segment(predictor, i, t), inputs=[image, text], outputs=[overlay, queries, summary])
        button.click(**action)
        text.submit(**action)
    return app
