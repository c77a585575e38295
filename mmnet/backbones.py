"""CLIP model configs by name: open_clip's own, and this package's small ones in ``clip_configs/``
(RN-tiny and ViT-tiny, for tests and CPU work), registered with open_clip when this is imported."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import open_clip

open_clip.add_model_config(Path(__file__).resolve().parent / "clip_configs")


def clip_model_config(backbone: str) -> Optional[dict]:
    """open_clip's model config named ``backbone`` (``embed_dim``, ``vision_cfg``, ``text_cfg``; a
    copy), or None for a name that is neither one of its configs nor this package's."""
    if backbone not in open_clip.list_models():
        return None
    return open_clip.get_model_config(backbone)
