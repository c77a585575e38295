"""The training loop: one epoch of optimizer steps, and the learning-rate schedule."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from mmnet import distributed
from mmnet.device import autocast
from mmnet.errors import MMNetError
from mmnet.metrics import intersection_union, iou
from mmnet.modeling import target_for


class NonFiniteLossError(MMNetError):
    """The loss or the gradient became NaN or infinite; training stops before the optimizer step,
    without saving."""


@dataclass
class TrainState:
    """Where training stands: what a checkpoint must carry to resume exactly."""

    epoch: int = 0
    """The epoch in progress (0-based)."""
    step: int = 0
    """Optimizer steps taken since the start."""
    epoch_step: int = 0
    """Optimizer steps taken in the epoch in progress."""
    best_miou: float = -1.0
    history: list = field(default_factory=list)


def batch_iou(logits: torch.Tensor, masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """IoU per sample at the logits' resolution, for the progress bar: B."""
    target = target_for(logits, masks) > 0.5
    pred = logits.detach().float().sigmoid() > threshold
    return iou(*intersection_union(pred[:, 0], target[:, 0]))


def train_one_epoch(
    *,
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    ctx: distributed.Context,
    state: TrainState,
    accumulation: int,
    samples_per_step: int,
    grad_clip: float,
    bf16: bool,
    loss_fn: Callable[[dict, torch.Tensor], dict],
    threshold: float,
    log: Callable[[dict], None],
    log_every: int,
    stop_requested: Callable[[], bool],
) -> bool:
    """Runs the rest of ``state.epoch``: an optimizer step every ``accumulation`` micro-batches.

    ``loss_fn(outputs, masks)`` gives the loss parts of a micro-batch, ``loss`` their sum
    (``mmnet.modeling.mmnet_loss`` with the run's settings).

    Returns True when a stop was requested (by a signal, on any process) and the loop ended
    after a whole optimizer step. The logged loss and IoU are means over all processes.
    """
    model.train()
    steps_left = len(loader) // accumulation
    bar = tqdm(total=steps_left, desc=f"epoch {state.epoch + 1}", unit="step", disable=not ctx.is_main, dynamic_ncols=True)
    step_loss = torch.zeros((), device=ctx.device)
    step_iou = torch.zeros((), device=ctx.device, dtype=torch.float64)
    # Sums over the log window, kept on the device so that a step never waits for a copy.
    window = torch.zeros(2, device=ctx.device, dtype=torch.float64)
    window_steps, window_start, done = 0, time.perf_counter(), 0
    no_limit = float("inf")
    for index, batch in enumerate(loader):
        if index // accumulation >= steps_left:
            break
        images = batch["image"].to(ctx.device, non_blocking=True)
        tokens = batch["tokens"].to(ctx.device, non_blocking=True)
        masks = batch["mask"].to(ctx.device, non_blocking=True)
        last_micro = (index + 1) % accumulation == 0
        no_sync = model.no_sync() if ctx.distributed and not last_micro else contextlib.nullcontext()
        with no_sync:
            with autocast(ctx.device, "auto" if bf16 else "fp32"):
                outputs = model(images, tokens)
            logits = outputs.logits
            loss = loss_fn(outputs, masks)["loss"]
            (loss / accumulation).backward()
        step_loss += loss.detach() / accumulation
        step_iou += batch_iou(logits, masks, threshold).mean() / accumulation
        if not last_micro:
            continue

        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else no_limit)
        # One all-reduce per step decides for every process: a bad loss or gradient anywhere, or a signal anywhere.
        flags = distributed.all_reduce_sum(
            torch.stack(
                [
                    (~torch.isfinite(step_loss)).float(),
                    (~torch.isfinite(grad_norm)).float(),
                    torch.tensor(float(stop_requested()), device=ctx.device),
                ]
            )
        )
        if flags[0] > 0 or flags[1] > 0:
            name, value = ("loss", step_loss) if flags[0] > 0 else ("gradient norm", grad_norm)
            became = f"became {value.item()}" if not torch.isfinite(value) else "became non-finite on another process"
            raise NonFiniteLossError(
                f"the {name} {became} at epoch {state.epoch + 1}, step {state.step + 1}; training stopped without saving this "
                "state, so the last checkpoint (if any) is the last good one (try a lower train.lr or train.grad_clip)"
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state.step += 1
        state.epoch_step += 1
        done += 1

        window += torch.stack([step_loss.double(), step_iou])
        window_steps += 1
        step_loss.zero_()
        step_iou.zero_()
        stop = bool(flags[2] > 0)
        if window_steps == log_every or done == steps_left or stop:
            mean = distributed.all_reduce_sum(window.clone()) / (window_steps * ctx.world_size)
            record = {
                "epoch": state.epoch + 1,
                "step": state.step,
                "loss": float(mean[0]),
                "iou": 100.0 * float(mean[1]),
                "lr": optimizer.param_groups[-1]["lr"],
                "samples_per_s": window_steps * samples_per_step / max(time.perf_counter() - window_start, 1e-9),
            }
            log(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", iou=f"{record['iou']:.1f}", samples_s=f"{record['samples_per_s']:.1f}")
            window.zero_()
            window_steps, window_start = 0, time.perf_counter()
        bar.update(1)
        if stop:
            bar.close()
            return True
    bar.close()
    return False


def steps_per_epoch(samples_per_process: int, micro_batch: int, accumulation: int) -> int:
    return (samples_per_process // micro_batch) // accumulation


def poly_schedule(total_steps: int, power: float) -> Callable[[int], float]:
    """The learning-rate factor after ``step`` optimizer steps: (1 - step / total) ** power."""

    def factor(step: int) -> float:
        return max(0.0, 1.0 - step / max(1, total_steps)) ** power

    return factor

