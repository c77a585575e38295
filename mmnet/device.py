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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware, as torch reports it: a GPU with bf16
    (Ampere or later), or a CPU with AMX-BF16 or AVX512-BF16. Elsewhere bf16 is emulated, and
    slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))
    return False


def resolve_precision(device: torch.device, precision: str) -> str:
    """``fp32`` or ``bf16``: ``auto`` is bf16 where ``device`` runs it natively, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise MMNetError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """The context the model runs in at ``precision`` (see ``resolve_precision``): bf16 autocast,
    or none for fp32. bf16 needs no loss scaling."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
