"""Checkpoints, and the one place models are loaded from them: a directory with the weights (model.safetensors), the full config (config.json)
and, for training, the state to resume from (state.pt).

A directory is written under a temporary name and renamed into place, so a run killed while
saving leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from mmnet.config import PAPER_TEXT, Config, ConfigError, ModelConfig, config_from_dict, config_to_dict
from mmnet.errors import MMNetError
from mmnet.weights import mismatches, non_finite, read_state_dict

if TYPE_CHECKING:
    from mmnet.modeling import MMNet

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"


class CheckpointError(MMNetError):
    """A checkpoint that is missing, incomplete, or made for another model."""


def save_checkpoint(directory: str | Path, *, model: nn.Module, config: Config, state: Optional[dict] = None) -> Path:
    """Writes ``directory`` atomically: weights, config and (optionally) the training state.

    A save is refused before it writes anything when the disk has less free space than the
    larger of the checkpoint it replaces and the bytes of its tensors. A write that fails (a full
    disk, a folder that cannot be written) raises a CheckpointError naming the folder and the
    cause; what it had written is removed and the previous checkpoint stays whole. Every file
    gets the mode the umask gives.
    """
    directory = Path(directory)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    staging = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        for stale in directory.parent.glob(f"{directory.name}.tmp-*"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        _check_free_space(directory, needed=max(_bytes_on_disk(directory), _tensor_bytes(weights) + _tensor_bytes(state)))
        try:
            staging.mkdir()
            _write(staging, weights=weights, config=config, state=state)
            _swap(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except (OSError, RuntimeError, SafetensorError) as err:
        raise CheckpointError(f"{directory}: the checkpoint could not be written: {_cause(err)}") from err
    return directory


def _write(staging: Path, *, weights: dict[str, torch.Tensor], config: Config, state: Optional[dict]) -> None:
    save_file(weights, str(staging / MODEL_FILE), metadata={"format": "pt"})
    (staging / CONFIG_FILE).write_text(json.dumps(config_to_dict(config), indent=2))
    if state is not None:
        # Through a Python file, so that a failed write keeps its OSError (as __context__) rather
        # than only torch's "unexpected pos".
        with (staging / STATE_FILE).open("wb") as file:
            torch.save(state, file)
    mode = _file_mode()
    for written in staging.iterdir():
        os.chmod(written, mode)  # safetensors creates its file 600, Python's open what the umask allows
    for written in [*staging.iterdir(), staging]:  # on disk before the swap, so a power cut cannot leave it half written
        _fsync(written)


def _swap(staging: Path, directory: Path) -> None:
    retired = directory.with_name(f"{directory.name}.old")
    if directory.exists():
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(directory, retired)
    os.replace(staging, directory)
    _fsync(directory.parent)
    shutil.rmtree(retired, ignore_errors=True)


def _file_mode() -> int:
    """The mode Python gives a new file: 0o666 less the umask. Linux reports the umask in
    /proc/self/status; elsewhere os.umask reads it only by setting it for an instant."""
    try:
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("Umask:"))
        umask = int(line.split()[1], 8)
    except (OSError, StopIteration, IndexError, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _check_free_space(directory: Path, *, needed: int) -> None:
    """Refuses a save before it starts when the disk cannot hold the new copy beside the old one."""
    free = shutil.disk_usage(directory.parent).free
    if free < needed:
        raise CheckpointError(
            f"{directory}: not enough free space for the checkpoint: it needs about {_mebibytes(needed)}, "
            f"{directory.parent} has {_mebibytes(free)} free"
        )


def _mebibytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _bytes_on_disk(directory: Path) -> int:
    """The size of the checkpoint a save replaces, 0 when there is none."""
    return sum(path.stat().st_size for path in directory.iterdir() if path.is_file()) if directory.is_dir() else 0


def _tensor_bytes(value: object) -> int:
    return sum(tensor.numel() * tensor.element_size() for _, tensor in _named_tensors(value))


def _named_tensors(value: object, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors inside nested dicts, lists and tuples, each with its dotted path."""
    if torch.is_tensor(value):
        yield prefix, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _named_tensors(inner, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for i, inner in enumerate(value):
            yield from _named_tensors(inner, f"{prefix}.{i}" if prefix else str(i))


def _cause(err: BaseException) -> str:
    """Why a write failed, in the operating system's words where they can be found: torch keeps
    the OSError as the context of its own error, safetensors only names the errno in its message."""
    for candidate in (err, err.__cause__, err.__context__):
        if isinstance(candidate, OSError) and candidate.errno:
            return os.strerror(candidate.errno).lower()
    found = re.search(r"os error (\d+)|Os \{ code: (\d+)", str(err))  # safetensors' wordings
    if found:
        return os.strerror(int(found.group(1) or found.group(2))).lower()
    return ": ".join([type(err).__name__, *str(err).splitlines()[:1]])


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory at ``path``, or the one a save interrupted mid-swap left behind."""
    path = Path(path)
    for candidate in (path, path.with_name(f"{path.name}.old")):
        if (candidate / MODEL_FILE).is_file():
            return candidate
    if path.is_file():
        raise CheckpointError(f"{path}: a checkpoint is a directory holding {MODEL_FILE} and {CONFIG_FILE}; give the directory")
    raise CheckpointError(f"no checkpoint at {path} (expected {path / MODEL_FILE})")


# Settings that checkpoints from before they existed were built and trained with: the paper's
# text. A config.json without them describes such a run, not one with today's defaults.
EARLIER_MODEL, EARLIER_TRAIN = PAPER_TEXT["model"], PAPER_TEXT["train"]


def read_config(directory: Path) -> Config:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint does not say which model it holds")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: must be a JSON object of settings, got a {type(values).__name__}")
    for section, earlier in (("model", EARLIER_MODEL), ("train", EARLIER_TRAIN)):
        if isinstance(values.get(section), dict):
            for key, value in earlier.items():
                values[section].setdefault(key, value)
    try:
        return config_from_dict(values, source=str(path))
    except ConfigError as err:
        message = str(err)
        raise CheckpointError(message if str(path) in message else f"{path}: {message}") from None


# Weights that earlier versions of the model had and that never changed an output: the
# estimator's score bias is one offset shared by every query under a softmax (Eq. 15).
OBSOLETE_KEYS = ("estimator.score.bias",)


def load_weights(model: nn.Module, directory: Path) -> None:
    """Loads ``model.safetensors`` strictly, naming the file and the first mismatch when it does not fit."""
    path = directory / MODEL_FILE
    weights, _ = read_state_dict(path)
    _refuse_non_finite(weights, path=path, consequence="the file is damaged: save or download it again")
    expected = model.state_dict()
    for key in OBSOLETE_KEYS:
        if key in weights and key not in expected:
            del weights[key]
    problems = mismatches(weights, expected)
    if problems:
        raise CheckpointError(f"{path} does not fit this model: " + "; ".join(problems))
    model.load_state_dict(weights)


def pretrained_directory(name: str | Path, **hub_options) -> Path:
    """A local checkpoint directory, or a training run's folder (its ``best``, else ``last``), or
    a Hugging Face Hub repository id, fetched into the local cache (``hub_options`` such as
    ``revision``, ``cache_dir`` or ``token`` go to ``huggingface_hub.snapshot_download``)."""
    path = Path(name)
    if path.exists():
        if not (path / MODEL_FILE).is_file():
            for inner in ("best", "last"):
                if (path / inner / MODEL_FILE).is_file() or (path / f"{inner}.old" / MODEL_FILE).is_file():
                    return find_checkpoint(path / inner)
        return find_checkpoint(path)
    if str(name).count("/") != 1 or str(name).startswith((".", "/")):
        raise CheckpointError(f"no checkpoint at {name} (expected a directory holding {MODEL_FILE} and {CONFIG_FILE})")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name), allow_patterns=[MODEL_FILE, CONFIG_FILE], **hub_options))
    except Exception as err:  # offline, unknown repository, no permission: all say the same to a user
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"no local directory {name}, and as a Hub repository id it could not be fetched "
            f"({type(err).__name__}: {first_line})"
        ) from err


def load_model(directory: Path, config: ModelConfig) -> MMNet:
    """MMNet as ``config`` describes it, with the weights of the checkpoint at ``directory``."""
    from mmnet.build import build_mmnet  # the model's modules, only when a model is loaded

    try:
        model = build_mmnet(config, load_clip_weights=False)
    except MMNetError as err:  # e.g. a backbone this version does not know
        raise CheckpointError(f"{directory / CONFIG_FILE}: {err}") from err
    load_weights(model, directory)
    return model


def load_pretrained(name: str | Path, *, device: str | torch.device = "cpu", **hub_options) -> tuple[MMNet, Config]:
    """The model (in eval mode, on ``device``) and the full config of a checkpoint directory, a
    training run's folder or a Hub repository id (see ``pretrained_directory``)."""
    directory = pretrained_directory(name, **hub_options)
    config = read_config(directory)
    return load_model(directory, config.model).to(device).eval(), config


def save_pretrained(model: MMNet, config: Config, directory: str | Path) -> Path:
    """Writes ``config.json`` and ``model.safetensors`` (atomically) for ``load_pretrained``."""
    return save_checkpoint(directory, model=model, config=config)




def load_state(directory: Path) -> dict:
    path = directory / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: this checkpoint holds weights only and cannot resume training")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        reason = ": ".join([type(err).__name__, *str(err).splitlines()[:1]])
        raise CheckpointError(f"{path}: not a readable training state ({reason})") from err
    _refuse_non_finite(
        dict(_named_tensors(state)), path=path, holding=" of the training state", consequence="training cannot continue from it"
    )
    return state


def _refuse_non_finite(tensors: dict[str, torch.Tensor], *, path: Path, holding: str = "", consequence: str) -> None:
    """Refuses tensors with NaN or infinity: they load without error and turn every output NaN."""
    damaged = non_finite(tensors)
    if damaged:
        count = f"{len(damaged)} tensor{'s' if len(damaged) > 1 else ''}{holding}"
        raise CheckpointError(f"{path}: NaN or infinite values in {count} (e.g. {damaged[0]}); {consequence}")


def rng_state() -> dict:
    """Every random generator training draws from, in a form ``torch.load(weights_only=True)`` reads."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": numpy_state[2], "gauss": [numpy_state[3], numpy_state[4]]},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], *numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

