"""Where the model runs and at what precision: the one device choice and the one autocast."""

from __future__ import annotations

import contextlib

import torch

from mmnet.config import PRECISIONS
from mmnet.errors import MMNetError


class DeviceError(MMNetError):
    """A device that was asked for is not there."""


def choose_device(device: str | torch.device | None = None, *, local_rank: int = 0) -> torch.device:
    """``device`` (``cpu``, ``cuda``, ``cuda:1``), or the GPU of ``local_rank`` when there is one
    and nothing was asked for, else the CPU."""
    if device is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"unknown device {device!r} ({err}); use cpu or cuda") from err
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device} was asked for, but torch sees no GPU here; use --device cpu")
        if chosen.index is None:
            chosen = torch.device("cuda", local_rank)
    return chosen


def autocast(device: torch.device, precision: str):
    """The context the model runs in: ``bf16`` autocast, ``fp32`` none, and ``auto`` bf16 on
    GPUs and fp32 elsewhere. bf16 needs no loss scaling."""
    if precision not in PRECISIONS:
        raise MMNetError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
