"""Reading tensors from weight files without running code from them.

Three formats: safetensors; files written by ``torch.save`` (read with ``weights_only=True``,
which refuses anything but tensors and plain containers); and TorchScript archives such as the
CLIP weights OpenAI distributes (``RN50.pt``, ``ViT-B-16.pt``), read with ``torch.jit.load``,
which compiles TorchScript and runs no Python.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

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
        raise WeightsError(f"{path}: not a readable weight file ({reason.group(1) if reason else 'bad pickle'})") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(f"{path}: not a readable weight file ({message})") from None
    except Exception as err:  # safetensors raises its own error type
        raise WeightsError(f"{path}: not a readable weight file ({type(err).__name__}: {err})") from None
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
