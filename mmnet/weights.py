"""Weight files: reading their tensors without running code from them, and filling the CLIP
towers from pretrained CLIP weights.

Three formats: safetensors; files written by ``torch.save`` (read with ``weights_only=True``,
which refuses anything but tensors and plain containers); and TorchScript archives such as the
CLIP weights OpenAI distributes (``RN50.pt``, ``ViT-B-16.pt``), read with ``torch.jit.load``,
which compiles TorchScript and runs no Python. CLIP weights may also be named by an open_clip
pretrained tag, which downloads them.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from mmnet.errors import MMNetError


class WeightsError(MMNetError):
    """A weight file that is missing, unreadable, or does not fit the model."""


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Returns the tensors of a weight file by name, and its format: ``safetensors``, ``torch`` or
    ``torchscript``. A ``state_dict`` or ``model`` wrapper and a ``module.`` prefix (DDP) are removed."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path} is a directory, not a weights file")
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state, kind = load_file(str(path), device="cpu"), "safetensors"
        elif is_torchscript_archive(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the only reader
                state, kind = torch.jit.load(str(path), map_location="cpu").state_dict(), "torchscript"
        else:
            state, kind = torch.load(path, map_location="cpu", weights_only=True), "torch"
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise WeightsError(f"{path}: refused, the file would construct {found.group(1)}, not only tensors") from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        raise WeightsError(f"{path}: not a readable weight file ({reason.group(1) if reason else 'bad pickle'})") from err
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, SafetensorError) as err:
        reason = ": ".join([type(err).__name__, *str(err).splitlines()[:1]])
        raise WeightsError(f"{path}: not a readable weight file ({reason})") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        found = f"keys {sorted(map(str, state))[:5]}" if isinstance(state, dict) else type(state).__name__
        raise WeightsError(f"{path}: expected a mapping from names to tensors, found {found}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state), kind


def mismatches(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``found`` from loading into a model whose state dict is ``expected``, one phrase
    per kind of problem with a first example; empty when the two fit."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if found[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} of another shape (e.g. {k}: file {tuple(found[k].shape)}, model {tuple(expected[k].shape)})")
    return problems


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or infinity: overwritten bytes read
    without error, and a model computes NaN from them without saying why.

    A sum is NaN or infinite when any of its terms is, so one pass finds them without a mask the
    size of the tensor; the mask then confirms, as finite values can also sum past the range."""
    return [
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all()
    ]


# Entries of CLIP checkpoints that are not weights of the two towers.
_NOT_TOWER_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "logit_scale", "logit_bias", "attn_mask")


def load_clip_weights(clip: torch.nn.Module, source: str, *, backbone: str, quick_gelu: bool) -> None:
    """Fills both towers of ``clip`` (an open_clip CLIP built for ``backbone``) from a weight
    file or an open_clip pretrained tag.

    OpenAI's TorchScript archives and open_clip state dicts share their tensor names; the
    position embeddings of the image tower are resized (bicubic) to the working grid and the
    text's are cut to the working expression length.
    """
    path = _resolve(source, backbone=backbone, quick_gelu=quick_gelu)
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


def _resolve(source: str, *, backbone: str, quick_gelu: bool) -> Path:
    """The weight file ``source`` names: a path, or an open_clip pretrained tag of ``backbone``,
    downloaded (or found in open_clip's cache)."""
    path = Path(source).expanduser()
    if path.is_dir():
        raise WeightsError(f"{path} is a directory; model.clip_weights names a weights file")
    if path.exists() or path.suffix or "/" in source:
        return path
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
    except (OSError, RuntimeError) as err:  # the network, the Hub client, or a checksum that does not match
        raise WeightsError(
            f"could not download the '{source}' weights of {backbone} ({type(err).__name__}: {err}); "
            "download the file elsewhere and set model.clip_weights to its path"
        ) from err


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
    """What CLIP image tower the tensors of ``state`` make, for an error message."""
    if "visual.proj" in state:
        return f"a ViT with {state['visual.conv1.weight'].shape[-1]}-pixel patches and width {state['visual.conv1.weight'].shape[0]}"
    if "visual.attnpool.c_proj.weight" in state:
        blocks = [len({k.split('.')[2] for k in state if k.startswith(f'visual.layer{i}.')}) for i in range(1, 5)]
        return f"a ResNet with blocks {blocks}"
    return "no CLIP image tower that MMNet knows"
