"""The training loop: one epoch of optimizer steps, the batch plan, the loss and the
learning-rate schedule, all read from the run's configuration."""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmnet import distributed
from mmnet.config import Config, ConfigError
from mmnet.device import autocast
from mmnet.errors import MMNetError
from mmnet.data.transforms import letterbox_geometry
from mmnet.metrics import intersection_union, iou
from mmnet.modeling import MMNetOutput, mmnet_loss
from mmnet.postprocess import probabilities


class LoaderPass:
    """One pass over a DataLoader's batches, as a ``with`` block whose end also ends the loader's
    worker processes, however the block ends.

    Left to themselves, the workers of a pass that an exception broke off would live on until the
    interpreter exits (the traceback keeps the pass alive), and there multiprocessing stops them
    with SIGTERM, which training's workers ignore, and waits for them without end. An MMNetError
    raised in a worker arrives as itself, with its own message, as it does without workers.
    """

    def __init__(self, loader: DataLoader) -> None:
        self._batches = iter(loader)

    def __enter__(self) -> "LoaderPass":
        return self

    def __exit__(self, *exc) -> None:
        # What DataLoader does when a pass is garbage collected: a stop message to each worker,
        # then a join.
        shutdown = getattr(self._batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> "LoaderPass":
        return self

    def __next__(self):
        try:
            return next(self._batches)
        except MMNetError as err:
            original = _raised_in_worker(err)
            if original is None:
                raise
            raise original from None


def _raised_in_worker(err: MMNetError) -> Optional[MMNetError]:
    """The error a DataLoader worker raised, rebuilt from the one DataLoader raises in its stead,
    whose message is "Caught <type> in DataLoader worker process <n>", the worker's traceback, and
    last "<module>.<type>: <the original message>"; None for an error raised elsewhere."""
    text, marker = str(err), f"{type(err).__module__}.{type(err).__qualname__}: "
    if not text.startswith(f"Caught {type(err).__name__} in DataLoader worker"):
        return None
    # The message starts on the first line after the traceback that begins with the marker.
    lines = text.split("\n")
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    for i in range(tracebacks[-1] if tracebacks else 0, len(lines)):
        if lines[i].startswith(marker):
            return type(err)("\n".join([lines[i][len(marker):], *lines[i + 1 :]]).rstrip("\n"))
    return None


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


def batch_plan(config: Config, world_size: int) -> tuple[int, int]:
    """(micro-batch per process, micro-batches accumulated per optimizer step)."""
    batch = config.train.batch_size
    micro = config.train.micro_batch_size or batch // world_size
    if micro < 1 or batch % (micro * world_size):
        raise ConfigError(
            f"train.batch_size={batch} must be a multiple of train.micro_batch_size ({micro}) x processes ({world_size})"
        )
    return micro, batch // (micro * world_size)


def loss_function(config: Config, *, has_estimator: bool) -> Callable[[MMNetOutput, torch.Tensor], dict]:
    """``mmnet_loss`` with the run's settings: ``(outputs, masks, no_target=None)`` gives the loss
    parts of a micro-batch, ``loss`` their sum."""
    return functools.partial(
        mmnet_loss,
        query_loss=config.train.query_loss,
        query_loss_weight=config.train.query_loss_weight,
        # Equal scores (w/o MQE, one query) have nothing to learn.
        score_loss_weight=config.train.score_loss_weight if has_estimator else 0.0,
        dice_weight=config.train.dice_weight,
        target_resize=config.train.target_resize,
        no_target_weight=config.train.no_target_weight,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper, or ``model`` itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def batch_iou(logits: torch.Tensor, masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """IoU per sample for the progress bar, B: the prediction post-processed as everywhere else,
    onto the S x S letterboxed canvas that a training sample's mask (B x 1 x S x S) covers."""
    side = masks.shape[-1]
    canvas = letterbox_geometry(height=side, width=side, size=side)
    predicted = probabilities(logits[:, 0], canvas) > threshold
    return iou(*intersection_union(predicted, masks[:, 0] > 0.5))


def train_one_epoch(
    config: Config,
    *,
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ctx: distributed.Context,
    state: TrainState,
    log: Callable[[dict], None],
    stop_requested: Callable[[], bool],
) -> bool:
    """Runs the rest of ``state.epoch``: an optimizer step every ``accumulation`` micro-batches
    (``batch_plan``), on the loss of ``loss_function``, in bf16 autocast on GPUs when
    ``train.bf16``. A record of the mean loss, IoU, learning rate and samples/s goes to ``log``
    every ``train.log_every`` steps and at the epoch's end.

    Args:
        model: MMNet, or MMNet wrapped in DistributedDataParallel.
        loader: this process's micro-batches of the epoch (``image``, ``tokens``, ``mask``).
        stop_requested: whether a signal asked this process to stop.
    Returns:
        True when a stop was requested (by a signal, on any process) and the loop ended after a
        whole optimizer step.
    """
    _, accumulation = batch_plan(config, ctx.world_size)
    loss_fn = loss_function(config, has_estimator=unwrap(model).estimator is not None)
    precision = "bf16" if config.train.bf16 and ctx.device.type == "cuda" else "fp32"  # train.bf16: GPUs only
    steps_left = len(loader) // accumulation
    step_loss = torch.zeros((), device=ctx.device)
    step_iou = torch.zeros((), device=ctx.device, dtype=torch.float64)
    window = LogWindow(device=ctx.device, samples_per_step=config.train.batch_size)
    model.train()
    bar = tqdm(total=steps_left, desc=f"epoch {state.epoch + 1}", unit="step", disable=not ctx.is_main, dynamic_ncols=True)
    with bar, LoaderPass(loader) as batches:
        for index, batch in enumerate(batches):
            if index // accumulation >= steps_left:
                break
            last_micro = (index + 1) % accumulation == 0
            with model.no_sync() if ctx.distributed and not last_micro else contextlib.nullcontext():
                loss, sample_iou = forward_backward(
                    model, batch, loss_fn, ctx=ctx, precision=precision, accumulation=accumulation, threshold=config.eval.threshold
                )
            step_loss += loss / accumulation
            step_iou += sample_iou / accumulation
            if not last_micro:
                continue
            stop = optimizer_step(
                model, optimizer, scheduler, step_loss, ctx=ctx, state=state, grad_clip=config.train.grad_clip, stop_requested=stop_requested
            )
            window.add(step_loss, step_iou)
            step_loss.zero_()
            step_iou.zero_()
            if window.steps == config.train.log_every or index + 1 == steps_left * accumulation or stop:
                record = window.flush(state=state, lr=optimizer.param_groups[-1]["lr"], world_size=ctx.world_size)
                log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", iou=f"{record['iou']:.1f}", samples_s=f"{record['samples_per_s']:.1f}")
            bar.update(1)
            if stop:
                return True
    return False


def forward_backward(
    model: nn.Module, batch: dict, loss_fn: Callable, *, ctx: distributed.Context, precision: str, accumulation: int, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch: the forward pass, the loss and its gradient scaled by ``1 / accumulation``.
    Returns the loss (detached) and the mean IoU of the micro-batch."""
    images = batch["image"].to(ctx.device, non_blocking=True)
    tokens = batch["tokens"].to(ctx.device, non_blocking=True)
    masks = batch["mask"].to(ctx.device, non_blocking=True)
    no_target = (batch["objects"] == 0).to(ctx.device, non_blocking=True) if "objects" in batch else None
    with autocast(ctx.device, precision):
        outputs = model(images, tokens)
    loss = loss_fn(outputs, masks, no_target=no_target)["loss"]
    (loss / accumulation).backward()
    return loss.detach(), batch_iou(outputs.logits, masks, threshold).mean()


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step_loss: torch.Tensor,
    *,
    ctx: distributed.Context,
    state: TrainState,
    grad_clip: float,
    stop_requested: Callable[[], bool],
) -> bool:
    """Clips the accumulated gradients (``grad_clip`` 0: measures their norm only), checks that
    loss and gradient are finite on every process, and steps optimizer and schedule.
    Returns whether a stop was requested on any process."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    stop = agree(step_loss, grad_norm, ctx=ctx, state=state, stop_requested=stop_requested)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    state.step += 1
    state.epoch_step += 1
    return stop


def agree(step_loss: torch.Tensor, grad_norm: torch.Tensor, *, ctx: distributed.Context, state: TrainState, stop_requested: Callable[[], bool]) -> bool:
    """One all-reduce per step decides for every process: a non-finite loss or gradient norm
    anywhere raises NonFiniteLossError, and a stop requested anywhere stops all (True)."""
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
    return bool(flags[2] > 0)


class LogWindow:
    """Sums of the step loss and IoU since the last log record, kept on the device so that a step
    never waits for a copy; a record averages them over the steps and all processes."""

    def __init__(self, *, device: torch.device, samples_per_step: int) -> None:
        self.sums = torch.zeros(2, device=device, dtype=torch.float64)
        self.samples_per_step = samples_per_step
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, step_loss: torch.Tensor, step_iou: torch.Tensor) -> None:
        self.sums += torch.stack([step_loss.double(), step_iou])
        self.steps += 1

    def flush(self, *, state: TrainState, lr: float, world_size: int) -> dict:
        """The record of the window (IoU in percent), which then starts again empty."""
        mean = distributed.all_reduce_sum(self.sums.clone()) / (self.steps * world_size)
        record = {
            "epoch": state.epoch + 1,
            "step": state.step,
            "loss": float(mean[0]),
            "iou": 100.0 * float(mean[1]),
            "lr": lr,
            "samples_per_s": self.steps * self.samples_per_step / max(time.perf_counter() - self.start, 1e-9),
        }
        self.sums.zero_()
        self.steps, self.start = 0, time.perf_counter()
        return record


def steps_per_epoch(samples_per_process: int, micro_batch: int, accumulation: int) -> int:
    return (samples_per_process // micro_batch) // accumulation


def poly_schedule(total_steps: int, power: float) -> Callable[[int], float]:
    """The learning-rate factor after ``step`` optimizer steps: (1 - step / total) ** power."""

    def factor(step: int) -> float:
        return max(0.0, 1.0 - step / max(1, total_steps)) ** power

    return factor
