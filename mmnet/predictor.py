"""A trained MMNet on one's own images: ``Predictor(...).predict(image, text)``.

    from mmnet import Predictor

    predictor = Predictor.from_pretrained("runs/refcoco_vit-b-16/best")
    result = predictor.predict("photo.jpg", "the man in the red shirt")
    result.mask            # H x W bool, at the photo's own size
    result.query_scores    # N_q, summing to 1
    result.no_target       # True when a model with the no-target head finds nothing that matches

Several expressions about one image encode the image once. Checkpoints are directories holding
``config.json`` and ``model.safetensors``: a training run's ``best/`` or ``last/``, a folder
written by ``save_pretrained``, or a Hugging Face Hub repository with those two files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from mmnet.checkpoint import load_pretrained, save_pretrained
from mmnet.config import Config, ConfigError
from mmnet.data.errors import DataError
from mmnet.data.images import as_rgb, from_array, load_image
from mmnet.data.tokenizer import token_name, tokenize, word_tokens
from mmnet.data.transforms import Letterbox
from mmnet.device import autocast, choose_device
from mmnet.modeling import MMNet
from mmnet.postprocess import segment

ImageInput = Union[str, Path, Image.Image, np.ndarray]


@dataclass
class Prediction:
    """What MMNet says about one expression, every map at the original image size (H x W)."""

    text: str
    mask: np.ndarray
    """H x W bool: probability above the threshold; all False when ``no_target``."""
    probability: np.ndarray
    """H x W float32: sigmoid of the final logits y (Eq. 16)."""
    query_masks: np.ndarray
    """N_q x H x W float32: each query's mask probability (one map without MMP)."""
    query_scores: np.ndarray
    """N_q float32: S_q (Eq. 15), summing to 1."""
    word_attention: np.ndarray
    """N_q x T float32: each query's weights (Eq. 9) over ``tokens``; each row sums to 1."""
    tokens: list[str]
    """The T tokens the model read: '[SOS]', the BPE pieces of the words, '[EOS]'."""
    threshold: float
    """The probability above which ``mask`` holds."""
    truncated: bool
    """True when the expression had more tokens than the context length and was cut."""
    no_target_probability: Optional[float] = None
    """The probability that the expression refers to nothing in the image, from a model with the
    no-target head (``model.no_target``); None for the paper's single-target model."""
    no_target: bool = False
    """Nothing in the image matches: ``no_target_probability`` above the predictor's ``no_target_threshold``."""


def as_image(image: ImageInput) -> Image.Image:
    """A file path, PIL image or array (``mmnet.data.images.from_array``) as an RGB picture, as a person sees it."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return as_rgb(image)
    if isinstance(image, np.ndarray):
        return from_array(image)
    raise DataError(f"an image is a file path, a PIL image or an array, got {type(image).__name__}")


class Predictor:
    """Segments what expressions refer to in images, with a trained MMNet."""

    def __init__(
        self,
        model: MMNet,
        config: Config,
        *,
        device: Optional[str | torch.device] = None,
        threshold: Optional[float] = None,
        compile: Optional[bool] = None,
        no_target_threshold: Optional[float] = None,
    ):
        """
        Args:
            model: a trained MMNet.
            config: its settings (the image size and context length come from ``config.model``).
            device: where to run; default the GPU when there is one.
            threshold: probability above which a pixel is the object (default ``config.eval.threshold``).
            no_target_threshold: for a model with the no-target head, the probability of "nothing
                matches" above which the mask is left empty (default ``config.eval.no_target_threshold``).
            compile: compile ``model``'s parts in place with torch.compile (default
                ``config.eval.compile``); the first prediction at each batch size waits for it.
        """
        self.device = choose_device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.threshold = config.eval.threshold if threshold is None else threshold
        self.no_target_threshold = config.eval.no_target_threshold if no_target_threshold is None else no_target_threshold
        for name in ("threshold", "no_target_threshold"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} must lie between 0 and 1, got {getattr(self, name)}")
        self.letterbox = Letterbox(config.model.image_size)
        if config.eval.compile if compile is None else compile:
            self.model.compile()

    @classmethod
    def from_pretrained(
        cls,
        name: str | Path,
        *,
        device: Optional[str | torch.device] = None,
        threshold: Optional[float] = None,
        compile: Optional[bool] = None,
        no_target_threshold: Optional[float] = None,
        **hub_options,
    ) -> "Predictor":
        """From a checkpoint directory, a training run's folder, or a Hub repository id
        (``hub_options``: ``revision``, ``cache_dir``, ``token``, ... of ``snapshot_download``)."""
        model, config = load_pretrained(name, **hub_options)
        return cls(model, config, device=device, threshold=threshold, compile=compile, no_target_threshold=no_target_threshold)

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_pretrained(self.model, self.config, directory)

    @torch.inference_mode()
    def predict(self, image: ImageInput, text: str | Sequence[str]) -> Prediction | list[Prediction]:
        """Segments, in ``image``, what ``text`` refers to.

        Args:
            image: a file path, a PIL image, or an array: uint8, uint16 or floats in [0, 1], of
                H x W, H x W x 3 or H x W x 4.
            text: one expression, or a list of them about the same image.
        Returns:
            a Prediction for one expression, or a list in the order of ``text``.
        Raises DataError for an unreadable image or an empty expression.
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not texts:
            raise DataError("no expression given: pass a string or a non-empty list of strings")
        picture = as_image(image)
        pixels, geometry = self.letterbox(picture)
        tokens = tokenize(texts, self.config.model.context_length)
        precision = self.config.eval.precision
        with autocast(self.device, precision):
            visual = self.model.encode_image(pixels[None].to(self.device))
        results = []
        for start in range(0, len(texts), self.config.eval.batch_size):
            chunk = tokens[start : start + self.config.eval.batch_size]
            with autocast(self.device, precision):
                outputs = self.model.decode(visual, chunk.to(self.device))
            shown = segment(
                outputs,
                [geometry] * chunk.shape[0],
                threshold=self.threshold,
                no_target_threshold=self.no_target_threshold,
                queries=True,
            )
            for b, segmentation in enumerate(shown):
                length = int((chunk[b] != 0).sum())
                results.append(
                    Prediction(
                        text=texts[start + b],
                        mask=segmentation.mask.numpy(),
                        probability=segmentation.probability.numpy(),
                        query_masks=segmentation.query_probabilities.numpy(),
                        query_scores=outputs.query_scores[b].float().cpu().numpy(),
                        word_attention=outputs.word_attention[b, :, :length].float().cpu().numpy(),
                        tokens=[token_name(int(t)) for t in chunk[b, :length]],
                        threshold=self.threshold,
                        truncated=word_tokens(texts[start + b]) + 2 > self.config.model.context_length,
                        no_target_probability=segmentation.no_target_probability,
                        no_target=segmentation.no_target,
                    )
                )
        return results[0] if single else results
