"""The CLIP towers MMNet starts from, built by open_clip from a model config (``mmnet.backbones``
finds one by name) at the working image size and expression length, with random weights."""

from __future__ import annotations

import copy

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet


def is_resnet(clip: torch.nn.Module) -> bool:
    return isinstance(clip.visual, ModifiedResNet)


def create_clip(model_config: dict, *, image_size: int, context_length: int, quick_gelu: bool) -> open_clip.CLIP:
    """A randomly initialised CLIP, built on the default device (so a ``with torch.device("meta")``
    build holds no memory).

    Arguments:
        model_config: an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``), as
            ``mmnet.backbones.clip_model_config`` gives it by name; it is not changed.
        image_size: side of the square images the image tower takes.
        context_length: tokens per expression the text tower takes.
        quick_gelu: QuickGELU activations, as OpenAI's weights were trained with (a config that
            names QuickGELU itself keeps it).
    """
    config = copy.deepcopy(model_config)
    if config.pop("custom_text", False) or "hf_model_name" in config["text_cfg"]:
        raise ValueError("a model config with a custom text tower; MMNet's text encoder needs the CLIP text transformer")
    config["vision_cfg"]["image_size"] = image_size
    config["text_cfg"]["context_length"] = context_length
    config["quick_gelu"] = quick_gelu or config.get("quick_gelu", False)
    return open_clip.CLIP(**config)
