"""The CLIP towers MMNet starts from, built by open_clip from its model configs by name.

The paper's backbones are RN50, RN101, ViT-B-16 and ViT-L-14; RN-tiny and ViT-tiny (this
package's ``clip_configs/``) are small ones for tests and CPU work. The towers are built at the
working image size and expression length, with random weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet

open_clip.add_model_config(Path(__file__).resolve().parent.parent / "clip_configs")


def clip_model_config(backbone: str) -> Optional[dict]:
    """open_clip's model config named ``backbone`` (``embed_dim``, ``vision_cfg``, ``text_cfg``),
    or None for a name that is not one of its built-in or this package's configs."""
    if backbone not in open_clip.list_models():
        return None
    return open_clip.get_model_config(backbone)


def is_resnet(clip: torch.nn.Module) -> bool:
    return isinstance(clip.visual, ModifiedResNet)


def create_clip(backbone: str, *, image_size: int, context_length: int, quick_gelu: bool) -> open_clip.CLIP:
    """A randomly initialised CLIP of the named model config, built on the default device (so
    a ``with torch.device("meta")`` build holds no memory).

    Arguments:
        backbone: the open_clip model config, e.g. ``RN50`` or ``ViT-B-16``.
        image_size: side of the square images the image tower takes.
        context_length: tokens per expression the text tower takes.
        quick_gelu: QuickGELU activations, as OpenAI's weights were trained with (a config that
            names QuickGELU itself keeps it).
    """
    config = clip_model_config(backbone)
    if config is None:
        raise ValueError(f"open_clip has no model config named '{backbone}'")
    if config.pop("custom_text", False) or "hf_model_name" in config["text_cfg"]:
        raise ValueError(f"'{backbone}' has a custom text tower; MMNet's text encoder needs the CLIP text transformer")
    config["vision_cfg"]["image_size"] = image_size
    config["text_cfg"]["context_length"] = context_length
    config["quick_gelu"] = quick_gelu or config.get("quick_gelu", False)
    return open_clip.CLIP(**config)
