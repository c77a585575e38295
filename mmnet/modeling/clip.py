"""The CLIP towers MMNet starts from: built by open_clip's factory, filled from local weight files.

Backbones are open_clip model configs by name: the paper's RN50, RN101, ViT-B-16 and ViT-L-14,
and RN-tiny and ViT-tiny (this package's ``clip_configs/``) for tests and CPU work. The towers
are built at the working image size and expression length; pretrained position embeddings are
resized to them when the weights are loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer

from mmnet.config import ConfigError, ModelConfig
from mmnet.weights import WeightsError, mismatches, read_state_dict

open_clip.add_model_config(Path(__file__).resolve().parent.parent / "clip_configs")

PAPER_BACKBONES = ("RN50", "RN101", "ViT-B-16", "ViT-L-14")
TINY_BACKBONES = ("RN-tiny", "ViT-tiny")

# Entries of CLIP checkpoints that are not weights of the two towers.
_NOT_TOWER_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "logit_scale", "logit_bias", "attn_mask")


def is_resnet(clip: torch.nn.Module) -> bool:
    return isinstance(clip.visual, ModifiedResNet)


def create_clip(config: ModelConfig) -> open_clip.CLIP:
    """Builds the CLIP model named by ``config.backbone`` for ``config.image_size`` and
    ``config.context_length``, and loads ``config.clip_weights`` when set."""
    if config.backbone not in open_clip.list_models():
        raise WeightsError(
            f"unknown backbone '{config.backbone}'; the paper's are {', '.join(PAPER_BACKBONES)}, "
            f"the small ones {', '.join(TINY_BACKBONES)}"
        )
    # open_clip warns that no weights were loaded; they are loaded below, from our own reader.
    quiet = _DropMessage("No pretrained weights loaded")
    logging.getLogger().addFilter(quiet)
    try:
        clip = open_clip.create_model(
            config.backbone,
            pretrained=None,
            device=torch.get_default_device(),  # also lets a `with torch.device("meta")` build stay empty
            force_quick_gelu=config.quick_gelu,
            force_image_size=config.image_size,
            force_context_length=config.context_length,
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    if not isinstance(clip, open_clip.CLIP):
        raise WeightsError(f"backbone '{config.backbone}' is not a CLIP with a built-in text transformer")
    visual = clip.visual
    if isinstance(visual, VisionTransformer):
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.proj is None:
            raise WeightsError(f"backbone '{config.backbone}': only ViTs pooled by their class token are supported")
        patch = visual.patch_size[0]
        if config.image_size % (2 * patch):
            raise ConfigError(
                f"model.image_size={config.image_size} must be a multiple of {2 * patch} for {config.backbone} "
                f"(patch {patch}, and the stride-32 scale halves the grid); ViT-L-14 uses 476"
            )
    elif isinstance(visual, ModifiedResNet):
        if config.image_size % 32:
            raise ConfigError(f"model.image_size={config.image_size} must be a multiple of 32 for {config.backbone}")
    else:
        raise WeightsError(f"backbone '{config.backbone}' has an image tower MMNet cannot use ({type(visual).__name__})")
    if config.clip_weights:
        load_clip_weights(clip, config.clip_weights, backbone=config.backbone, quick_gelu=config.quick_gelu)
    return clip


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def _resolve(source: str, backbone: str, quick_gelu: bool) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        raise WeightsError(f"{path} is a directory; model.clip_weights names a weights file")
    if path.exists() or path.suffix or "/" in source:
        return path
    # Not a file: an open_clip pretrained tag such as "openai", which needs the network.
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    tag = get_pretrained_cfg(backbone, source)
    if not tag:
        raise WeightsError(f"'{source}' is neither a file nor an open_clip pretrained tag of {backbone}")
    if tag.get("quick_gelu", False) != quick_gelu:
        raise WeightsError(
            f"the '{source}' weights of {backbone} were trained {'with' if tag.get('quick_gelu') else 'without'} "
            f"QuickGELU; set model.quick_gelu={'true' if tag.get('quick_gelu') else 'false'}"
        )
    try:
        return Path(download_pretrained(tag))
    except Exception as err:
        raise WeightsError(
            f"could not download the '{source}' weights of {backbone} ({type(err).__name__}: {err}); "
            "download the file elsewhere and set model.clip_weights to its path"
        ) from None


def _resize_grid(table: torch.Tensor, tokens: int, *, name: str, path: Path) -> torch.Tensor:
    """Resizes a (1 + g*g) x C table of a leading global token and a g x g grid to ``tokens``
    rows, bicubic on the grid."""
    if table.shape[0] == tokens:
        return table
    old, new = round((table.shape[0] - 1) ** 0.5), round((tokens - 1) ** 0.5)
    if old * old + 1 != table.shape[0]:
        raise WeightsError(f"{path}: {name} has {table.shape[0]} rows, not one global token and a square grid")
    grid = table[1:].reshape(old, old, -1).permute(2, 0, 1)[None].float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([table[:1].float(), grid[0].permute(1, 2, 0).reshape(new * new, -1)]).to(table.dtype)


def _describe(state: dict) -> str:
    if "visual.proj" in state:
        return f"a ViT with {state['visual.conv1.weight'].shape[-1]}-pixel patches and width {state['visual.conv1.weight'].shape[0]}"
    if "visual.attnpool.c_proj.weight" in state:
        blocks = [len({k.split('.')[2] for k in state if k.startswith(f'visual.layer{i}.')}) for i in range(1, 5)]
        return f"a ResNet with blocks {blocks}"
    return "no CLIP image tower that MMNet knows"


def load_clip_weights(clip: open_clip.CLIP, source: str, *, backbone: str, quick_gelu: bool) -> None:
    """Fills both towers of ``clip`` from a weight file or an open_clip tag.

    OpenAI's TorchScript archives and open_clip state dicts share their tensor names; the
    position embeddings of the image tower are resized (bicubic) to the working grid and the
    text's are cut to the working expression length.
    """
    path = _resolve(source, backbone, quick_gelu)
    state, kind = read_state_dict(path)
    if kind == "torchscript" and not quick_gelu:
        raise WeightsError(f"{path}: OpenAI's CLIP weights were trained with QuickGELU; set model.quick_gelu=true")
    if any(k.startswith("text.") for k in state):
        raise WeightsError(f"{path}: a CLIP with a separate text model ('text.' weights); MMNet needs the CLIP text transformer")
    state = {k: v for k, v in state.items() if k not in _NOT_TOWER_WEIGHTS}
    expected = {k: v for k, v in clip.state_dict().items() if k not in _NOT_TOWER_WEIGHTS}
    for key in ("visual.attnpool.positional_embedding", "visual.positional_embedding"):
        if key in state and key in expected and state[key].ndim == 2:
            state[key] = _resize_grid(state[key], expected[key].shape[0], name=key, path=path)
    if "positional_embedding" in state and "positional_embedding" in expected:
        if state["positional_embedding"].shape[0] < expected["positional_embedding"].shape[0]:
            raise WeightsError(
                f"{path}: the text tower holds {state['positional_embedding'].shape[0]} positions, "
                f"fewer than model.context_length={expected['positional_embedding'].shape[0]}"
            )
        state["positional_embedding"] = state["positional_embedding"][: expected["positional_embedding"].shape[0]]

    problems = mismatches(state, expected)
    if problems:
        raise WeightsError(
            f"{path}: these weights do not fit backbone {backbone}: the file holds {_describe(state)}; " + "; ".join(problems)
        )
    clip.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
