"""``mmnet train``: the training run of Sec. 4.1, in one process or under torchrun.

Adam with polynomial decay, gradients accumulated up to ``train.batch_size`` samples per step
over all processes, bf16 autocast on GPUs, validation every epoch, ``last`` and ``best``
checkpoints written atomically, exact resumption, and a clean stop on SIGINT/SIGTERM.
"""

from __future__ import annotations

import functools
import json
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from mmnet import distributed
from mmnet.build import build_mmnet
from mmnet.checkpoint import (
    STATE_FILE,
    CheckpointError,
    find_checkpoint,
    load_state,
    load_weights,
    read_config,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mmnet.config import Config, ConfigError, config_to_dict, load_config, save_config
from mmnet.data.datasets import ReferTrainDataset
from mmnet.data.refer import ReferIndex
from mmnet.engine import TrainState, poly_schedule, steps_per_epoch, train_one_epoch
from mmnet.evaluate import evaluate, split_loader
from mmnet.modeling import MMNet, mmnet_loss

PRETRAINED_PREFIXES = ("image_encoder.tower.", "text_encoder.")


def parameter_groups(model: MMNet, *, lr: float, backbone_lr_mult: float) -> list[dict]:
    """The pretrained CLIP towers at ``lr * backbone_lr_mult``, everything new at ``lr``."""
    backbone, heads = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (backbone if name.startswith(PRETRAINED_PREFIXES) else heads).append(parameter)
    return [{"params": backbone, "lr": lr * backbone_lr_mult}, {"params": heads, "lr": lr}]


def batch_plan(config: Config, world_size: int) -> tuple[int, int]:
    """(micro-batch per process, micro-batches accumulated per optimizer step)."""
    batch = config.train.batch_size
    micro = config.train.micro_batch_size or batch // world_size
    if micro < 1 or batch % (micro * world_size):
        raise ConfigError(
            f"train.batch_size={batch} must be a multiple of train.micro_batch_size ({micro}) x processes ({world_size})"
        )
    return micro, batch // (micro * world_size)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StopSignal:
    """Turns SIGINT or SIGTERM into a request to stop after the current step. A second SIGINT
    (Ctrl-C twice) interrupts at once, unless a checkpoint is being written."""

    def __init__(self) -> None:
        self.requested = False
        self.saving = False
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if signum == signal.SIGINT and not self.saving:
                raise KeyboardInterrupt
            return
        self.requested = True
        print(f"\nmmnet: {signal.Signals(signum).name} received; saving a checkpoint after this step", flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _ignore_interrupts(worker_id: int) -> None:
    """Data-loader workers leave Ctrl-C and SIGTERM (which torchrun and schedulers send to the
    whole process group) to the main process, which stops cleanly and then ends them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# Settings that fix the course of a run: resuming with others would not continue it exactly.
RUN_SETTINGS = (
    "epochs", "batch_size", "micro_batch_size", "lr", "lr_power", "backbone_lr_mult", "weight_decay", "grad_clip", "bf16", "seed",
    "query_loss", "query_loss_weight", "score_loss_weight", "dice_weight", "target_resize",
)
DATA_SETTINGS = ("dataset", "split_by", "train_split", "text_blind")


def _check_resumable(saved: Config, config: Config, directory: Path, *, saved_world: int, world: int) -> None:
    """Refuses to resume where the run would not continue as it began."""
    saved_model, model = config_to_dict(saved.model), config_to_dict(config.model)
    differing = [f"model.{k}" for k, v in model.items() if k != "clip_weights" and saved_model[k] != v]
    differing += [f"train.{k}" for k in RUN_SETTINGS if getattr(saved.train, k) != getattr(config.train, k)]
    differing += [f"data.{k}" for k in DATA_SETTINGS if getattr(saved.data, k) != getattr(config.data, k)]
    if differing:
        raise CheckpointError(f"{directory} was trained with other settings ({', '.join(differing)}); resume with the same ones")
    if saved_world != world:
        raise CheckpointError(f"{directory} was trained by {saved_world} processes; resume it with {saved_world}, not {world}")


@dataclass
class TrainResult:
    model: MMNet
    """The trained network (this process's copy)."""
    output_dir: Path
    state: TrainState
    """Epochs and steps done, the best validation mIoU and the validation history."""
    interrupted: bool
    """True when a signal stopped the run before its last epoch."""


def train(config: Config, *, resume: Optional[str] = None, stop_after_epochs: Optional[int] = None, device: Optional[str] = None) -> TrainResult:
    """Trains as ``config`` says.

    Args:
        resume: a checkpoint directory to continue from, or ``auto`` for ``<output_dir>/last``
            when it exists.
        stop_after_epochs: end this run (with a resumable checkpoint) after so many epochs,
            for jobs with a time limit.
        device: ``cpu`` or ``cuda``; None picks a GPU when there is one.
    """
    with distributed.session(device) as ctx:
        return _train(config, ctx, resume=resume, stop_after_epochs=stop_after_epochs)


def _train(config: Config, ctx: distributed.Context, *, resume: Optional[str], stop_after_epochs: Optional[int]) -> TrainResult:
    output = Path(config.train.output_dir)
    micro, accumulation = batch_plan(config, ctx.world_size)
    if resume == "auto":
        resume = str(output / "last") if (output / "last").exists() or (output / "last.old").exists() else None
    if resume is None and ((output / "last").exists() or (output / "last.old").exists()):
        raise ConfigError(f"{output} already holds a run; continue it with --resume auto, or choose another train.output_dir")
    if resume is None and (output / "log.jsonl").is_file() and (output / "log.jsonl").stat().st_size > 0:
        raise ConfigError(f"{output} holds the log of a run that saved no checkpoint; remove it, or choose another train.output_dir")
    seed_everything(config.train.seed)  # the same initial weights on every process

    index = distributed.main_first(ctx, lambda main: ReferIndex.from_config(config.data, progress=main))
    size, length = config.model.image_size, config.model.context_length
    blind = config.data.text_blind
    train_set = ReferTrainDataset(
        index, split=config.data.train_split, image_size=size, context_length=length, seed=config.train.seed, text_blind=blind
    )
    train_sampler = distributed.ShardSampler(
        len(train_set), rank=ctx.rank, world_size=ctx.world_size, shuffle=True, seed=config.train.seed
    )
    # Loaders draw their worker seeds from their own generators, not the global one that dropout
    # uses, so that a run resumed mid-epoch draws the same random numbers as one never stopped.
    loader_options = {
        "num_workers": config.data.num_workers,
        "pin_memory": ctx.device.type == "cuda",
        "generator": torch.Generator().manual_seed(config.train.seed),
        "worker_init_fn": _ignore_interrupts,
    }
    train_loader = DataLoader(train_set, batch_size=micro, sampler=train_sampler, drop_last=True, **loader_options)
    val_loader = split_loader(index, config.data.val_split, config, ctx, **loader_options)
    per_epoch = steps_per_epoch(len(train_sampler), micro, accumulation)
    if per_epoch == 0:
        raise ConfigError(
            f"{len(train_set)} training refs give no full step of train.batch_size={config.train.batch_size}; lower it"
        )

    model = build_mmnet(config.model, load_clip_weights=resume is None).to(ctx.device)
    seed_everything(config.train.seed + ctx.rank)  # then dropout differs between processes
    optimizer = torch.optim.Adam(
        parameter_groups(model, lr=config.train.lr, backbone_lr_mult=config.train.backbone_lr_mult),
        weight_decay=config.train.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(per_epoch * config.train.epochs, config.train.lr_power))
    state = TrainState()

    if resume is not None:
        directory = find_checkpoint(resume)
        saved = load_state(directory)
        _check_resumable(read_config(directory), config, directory, saved_world=len(saved["rng"]), world=ctx.world_size)
        load_weights(model, directory)
        try:
            optimizer.load_state_dict(saved["optimizer"])
        except ValueError as err:  # another number or order of parameters than this model's
            raise CheckpointError(f"{directory / STATE_FILE}: its optimizer state does not fit this model ({err})") from None
        scheduler.load_state_dict(saved["scheduler"])
        state = TrainState(**saved["train_state"])
        set_rng_state(saved["rng"][ctx.rank])
        if ctx.is_main:
            print(f"mmnet: resuming from {directory} at epoch {state.epoch + 1}, step {state.step}", flush=True)

    wrapped = model
    if ctx.distributed:
        if ctx.device.type == "cuda":  # batch statistics over all GPUs; gloo on CPUs has no SyncBatchNorm
            wrapped = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        wrapped = DistributedDataParallel(wrapped, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    stop = StopSignal()
    log_file, writer = None, None
    if ctx.is_main:
        output.mkdir(parents=True, exist_ok=True)
        save_config(config, output / "config.yaml")
        log_file = (output / "log.jsonl").open("a")
        writer = _tensorboard(output) if config.train.tensorboard else None

    def log(record: dict) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if writer is not None:
            for key, value in record.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    writer.add_scalar(f"train/{key}", value, record["step"])

    def checkpoint(*names: str) -> Optional[Path]:
        """Every process hands in its random state; the main one writes the named checkpoints."""
        rngs = distributed.all_gather_objects(rng_state())
        path = None
        if ctx.is_main:
            payload = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "train_state": vars(state),
                "rng": rngs,
            }
            stop.saving = True
            for name in names:
                path = save_checkpoint(output / name, model=model, config=config, state=payload)
            stop.saving = False
        distributed.barrier()
        return path

    epochs_run = 0
    interrupted = False
    with stop:
        while state.epoch < config.train.epochs:
            train_set.set_epoch(state.epoch)
            train_sampler.set_epoch(state.epoch, skip=state.epoch_step * accumulation * micro)
            interrupted = train_one_epoch(
                model=wrapped,
                loader=train_loader,
                optimizer=optimizer,
                scheduler=scheduler,
                ctx=ctx,
                state=state,
                accumulation=accumulation,
                samples_per_step=config.train.batch_size,
                grad_clip=config.train.grad_clip,
                bf16=config.train.bf16,
                loss_fn=functools.partial(
                    mmnet_loss,
                    query_loss=config.train.query_loss,
                    query_loss_weight=config.train.query_loss_weight,
                    # Equal scores (w/o MQE, one query) have nothing to learn.
                    score_loss_weight=config.train.score_loss_weight if model.estimator is not None else 0.0,
                    dice_weight=config.train.dice_weight,
                    target_resize=config.train.target_resize,
                ),
                threshold=config.eval.threshold,
                log=log,
                log_every=config.train.log_every,
                stop_requested=lambda: stop.requested,
            )
            if interrupted:
                path = checkpoint("last")
                if ctx.is_main:
                    print(f"mmnet: stopped; resume with --resume {path}", flush=True)
                break
            distributed.broadcast_buffers(model)  # every process validates and saves the same model
            metrics, _ = evaluate(
                model=model, loader=val_loader, ctx=ctx, threshold=config.eval.threshold, precision=config.eval.precision, desc=f"val {state.epoch + 1}"
            )
            state.epoch += 1
            state.epoch_step = 0
            state.history.append({"epoch": state.epoch, "step": state.step, **metrics})
            log({"epoch": state.epoch, "step": state.step, "val": metrics})
            if writer is not None:
                for key, value in {**metrics, **metrics["diagnostics"]}.items():
                    if isinstance(value, (int, float)):  # not the diagnostics dict, nor one that is None
                        writer.add_scalar(f"val/{key}", value, state.step)
            is_best = metrics["mIoU"] > state.best_miou
            if is_best:
                state.best_miou = metrics["mIoU"]
            if ctx.is_main:
                print(f"epoch {state.epoch}: val mIoU {metrics['mIoU']:.2f}, oIoU {metrics['oIoU']:.2f}", flush=True)
            # best first: a kill between the two saves must not leave last claiming a best that is not saved
            checkpoint(*(("best", "last") if is_best else ("last",)))
            epochs_run += 1
            if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                break
    if log_file is not None:
        log_file.close()
    if writer is not None:
        writer.close()
    return TrainResult(model=model, output_dir=output, state=state, interrupted=interrupted)


def _tensorboard(output: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("mmnet: tensorboard is not installed; logging to log.jsonl only", flush=True)
        return None
    return SummaryWriter(str(output / "tensorboard"))


def run_train(args) -> int:
    config = load_config(args.config, args.overrides)
    result = train(config, resume=args.resume, stop_after_epochs=args.stop_after_epochs, device=args.device)
    return 130 if result.interrupted else 0
