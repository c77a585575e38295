"""The training run of Sec. 4.1 (``mmnet train``), in one process or under torchrun.

Adam with polynomial decay, gradients accumulated up to ``train.batch_size`` samples per step
over all processes, bf16 autocast on GPUs, validation every epoch, ``last`` and ``best``
checkpoints written atomically, exact resumption, and a clean stop on SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from mmnet import distributed, runlock
from mmnet.build import build_mmnet
from mmnet.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
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
from mmnet.config import Config, ConfigError, config_to_dict, save_config
from mmnet.data.datasets import ReferTrainDataset
from mmnet.data.refer import ReferIndex
from mmnet.engine import TrainState, batch_plan, poly_schedule, steps_per_epoch, train_one_epoch
from mmnet.evaluate import evaluate, split_loader
from mmnet.modeling import MMNet
from mmnet.runlock import run_lock

PRETRAINED_PREFIXES = ("image_encoder.tower.", "text_encoder.")
# Devices where torch.optim.Adam has a fused kernel.
FUSED_ADAM_DEVICES = {"cpu", "cuda"}


def parameter_groups(model: MMNet, *, lr: float, backbone_lr_mult: float) -> list[dict]:
    """The pretrained CLIP towers at ``lr * backbone_lr_mult``, everything new at ``lr``."""
    backbone, heads = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (backbone if name.startswith(PRETRAINED_PREFIXES) else heads).append(parameter)
    return [{"params": backbone, "lr": lr * backbone_lr_mult}, {"params": heads, "lr": lr}]


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
    whole process group) to the main process, which stops cleanly and then ends them: every pass
    over a loader is a ``LoaderPass``, which stops its workers however it ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    runlock.release_inherited()  # the run's lock is the main process's alone


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
    """Trains as ``config`` says, holding the lock on ``train.output_dir`` (``run_lock``) for
    as long as the run writes there.

    Args:
        resume: a checkpoint directory to continue from, or ``auto`` for the newest complete
            checkpoint of ``<output_dir>/last`` and ``<output_dir>/best`` when there is one.
        stop_after_epochs: end this run (with a resumable checkpoint) after so many epochs,
            for jobs with a time limit.
        device: ``cpu`` or ``cuda``; None picks a GPU when there is one.
    """
    with distributed.session(device) as ctx, run_lock(Path(config.train.output_dir), enabled=ctx.is_main):
        return Trainer(config=config, ctx=ctx, resume=resume).fit(stop_after_epochs=stop_after_epochs)


class Trainer:
    """One training run of this process: built ready to train (data, model, optimizer, and the
    state of a resumed run), then ``fit`` runs the epochs."""

    def __init__(self, *, config: Config, ctx: distributed.Context, resume: Optional[str] = None) -> None:
        """
        Args:
            config: every setting of the run.
            ctx: this process's rank among the processes, and its device.
            resume: a checkpoint directory to continue from, ``auto`` (see ``checkpoint_to_resume``),
                or None for a fresh run.
        """
        self.config, self.ctx = config, ctx
        self.output = Path(config.train.output_dir)
        self.micro, self.accumulation = batch_plan(config, ctx.world_size)
        checkpoint = checkpoint_to_resume(self.output, resume, verbose=ctx.is_main)
        self.resumed = checkpoint is not None
        seed_everything(config.train.seed)  # the same initial weights on every process
        self.train_loader, self.val_loader = self._loaders()
        total_steps = self._steps_per_epoch() * config.train.epochs
        self.model = build_mmnet(config.model, load_clip_weights=checkpoint is None).to(ctx.device)
        seed_everything(config.train.seed + ctx.rank)  # then dropout differs between processes
        self.optimizer, self.scheduler = optimization(self.model, config, total_steps=total_steps)
        self.state = TrainState() if checkpoint is None else self._resume(checkpoint)
        self.wrapped = wrap(self.model, ctx)
        self.stop = StopSignal()

    def _loaders(self) -> tuple[DataLoader, DataLoader]:
        """This process's shard of ``data.train_split`` in micro-batches, and ``data.val_split``."""
        config, ctx = self.config, self.ctx
        index = distributed.main_first(ctx, lambda main: ReferIndex.from_config(config.data, progress=main))
        train_set = ReferTrainDataset(
            index,
            split=config.data.train_split,
            image_size=config.model.image_size,
            context_length=config.model.context_length,
            seed=config.train.seed,
            text_blind=config.data.text_blind,
        )
        sampler = distributed.ShardSampler(len(train_set), rank=ctx.rank, world_size=ctx.world_size, shuffle=True, seed=config.train.seed)
        # Loaders draw their worker seeds from their own generators, not the global one that dropout
        # uses, so that a run resumed mid-epoch draws the same random numbers as one never stopped.
        options = {
            "num_workers": config.data.num_workers,
            "pin_memory": ctx.device.type == "cuda",
            "generator": torch.Generator().manual_seed(config.train.seed),
            "worker_init_fn": _ignore_interrupts,
        }
        train_loader = DataLoader(train_set, batch_size=self.micro, sampler=sampler, drop_last=True, **options)
        return train_loader, split_loader(index, config.data.val_split, config, ctx, **options)

    def _steps_per_epoch(self) -> int:
        steps = steps_per_epoch(len(self.train_loader.sampler), self.micro, self.accumulation)
        if steps == 0:
            refs, batch = len(self.train_loader.dataset), self.config.train.batch_size
            raise ConfigError(f"{refs} training refs give no full step of train.batch_size={batch}; lower it")
        return steps

    def _resume(self, resume: str) -> TrainState:
        """Loads the weights, optimizer, schedule and this process's random state of a checkpoint
        that continues this run; returns where it stood."""
        directory = find_checkpoint(resume)
        saved = load_state(directory)
        _check_resumable(read_config(directory), self.config, directory, saved_world=len(saved["rng"]), world=self.ctx.world_size)
        load_weights(self.model, directory)
        # Run Adam as this machine can (fused or not), whatever the saved run did; the flag also
        # decides where the loaded step counts go.
        fused = self.optimizer.defaults["fused"]
        for group in saved["optimizer"].get("param_groups", []):
            group["fused"] = fused
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
        except ValueError as err:  # another number or order of parameters than this model's
            raise CheckpointError(f"{directory / STATE_FILE}: its optimizer state does not fit this model ({err})") from None
        self.scheduler.load_state_dict(saved["scheduler"])
        state = TrainState(**saved["train_state"])
        set_rng_state(saved["rng"][self.ctx.rank])
        if self.ctx.is_main:
            print(f"mmnet: resuming from {directory} at epoch {state.epoch + 1}, step {state.step}", flush=True)
        return state

    def fit(self, *, stop_after_epochs: Optional[int] = None) -> TrainResult:
        """Trains and validates epoch by epoch until ``train.epochs`` are done, ``stop_after_epochs``
        have run, or a signal stops the run (after saving ``last``)."""
        self._write_config()
        epochs_run = 0
        resumed_at = self.state.step if self.resumed else None
        with RunLog(output=self.output, tensorboard=self.config.train.tensorboard, enabled=self.ctx.is_main, resumed_at=resumed_at) as log, self.stop:
            while self.state.epoch < self.config.train.epochs:
                if self._train_epoch(log):
                    path = self._save("last")
                    if self.ctx.is_main:
                        print(f"mmnet: stopped; resume with --resume {path}", flush=True)
                    return self._result(interrupted=True)
                self._end_epoch(log)
                epochs_run += 1
                if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                    break
        return self._result(interrupted=False)

    def _write_config(self) -> None:
        if self.ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.output / "config.yaml")

    def _train_epoch(self, log: RunLog) -> bool:
        """The rest of the epoch in progress; True when a signal stopped it."""
        epoch, done = self.state.epoch, self.state.epoch_step * self.accumulation * self.micro
        self.train_loader.dataset.set_epoch(epoch)
        self.train_loader.sampler.set_epoch(epoch, skip=done)
        return train_one_epoch(
            self.config,
            model=self.wrapped,
            loader=self.train_loader,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            ctx=self.ctx,
            state=self.state,
            log=log.training,
            stop_requested=lambda: self.stop.requested,
        )

    def _end_epoch(self, log: RunLog) -> None:
        """Validates, records the metrics, and saves ``last`` (and ``best`` when it is)."""
        state = self.state
        distributed.broadcast_buffers(self.model)  # every process validates and saves the same model
        metrics, _ = evaluate(
            model=self.model,
            loader=self.val_loader,
            ctx=self.ctx,
            threshold=self.config.eval.threshold,
            precision=self.config.eval.precision,
            no_target_threshold=self.config.eval.no_target_threshold,
            desc=f"val {state.epoch + 1}",
            batch_size=self.config.eval.batch_size,
        )
        state.epoch += 1
        state.epoch_step = 0
        state.history.append({"epoch": state.epoch, "step": state.step, **metrics})
        log.validation(epoch=state.epoch, step=state.step, metrics=metrics)
        is_best = metrics["mIoU"] > state.best_miou
        if is_best:
            state.best_miou = metrics["mIoU"]
        if self.ctx.is_main:
            line = f"epoch {state.epoch}: val mIoU {metrics['mIoU']:.2f}, oIoU {metrics['oIoU']:.2f}"
            if "gIoU" in metrics:  # a generalized set, or a model with the no-target head
                line += "".join(f", {name} {metrics[name]:.2f}" for name in ("N-acc", "T-acc") if metrics[name] is not None)
            print(line, flush=True)
        # best first: a kill between the two saves must not leave last claiming a best that is not saved
        self._save(*(("best", "last") if is_best else ("last",)))

    def _save(self, *names: str) -> Optional[Path]:
        """Every process hands in its random state; the main one writes the named checkpoints in
        order, each atomically, and a second Ctrl-C waits until they are written. A write that
        fails stops every process with the main one's error, not only the main one."""
        rngs = distributed.all_gather_objects(rng_state())
        path, failure = None, None
        if self.ctx.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "train_state": vars(self.state),
                "rng": rngs,
            }
            self.stop.saving = True
            try:
                for name in names:
                    path = save_checkpoint(self.output / name, model=self.model, config=self.config, state=state)
            except CheckpointError as err:
                failure = err
            finally:
                self.stop.saving = False
        reported = distributed.all_gather_objects(None if failure is None else str(failure))[0]
        if failure is not None:
            raise failure
        if reported is not None:
            raise CheckpointError(f"the main process could not write the checkpoint: {reported}")
        return path

    def _result(self, *, interrupted: bool) -> TrainResult:
        return TrainResult(model=self.model, output_dir=self.output, state=self.state, interrupted=interrupted)


RESUMABLE = ("last", "last.old", "best", "best.old")
"""The checkpoints of a run's folder that ``--resume auto`` chooses from, in this order when they
stand at the same step (the ``.old`` forms are left by a save interrupted mid-swap)."""


def checkpoint_to_resume(output: Path, resume: Optional[str], *, verbose: bool = True) -> Optional[str]:
    """The checkpoint a run continues from: ``resume``, with ``auto`` meaning the newest complete
    one of ``RESUMABLE`` in ``output`` (a failed save of ``last`` may leave only ``best``), or a
    fresh run when there is none. A fresh run refuses a folder that holds another run.

    Args:
        verbose: say which checkpoint ``auto`` passed over, and why.
    """
    saved = [output / name for name in RESUMABLE if (output / name).exists()]
    if resume == "auto":
        resume = str(newest_complete_checkpoint(output, saved, verbose=verbose)) if saved else None
    if resume is None and saved:
        raise ConfigError(f"{output} already holds a run; continue it with --resume auto, or choose another train.output_dir")
    log = output / "log.jsonl"
    if resume is None and log.is_file() and log.stat().st_size > 0:
        raise ConfigError(f"{output} holds the log of a run that saved no checkpoint; remove it, or choose another train.output_dir")
    return resume


def newest_complete_checkpoint(output: Path, candidates: list[Path], *, verbose: bool) -> Path:
    """Of ``candidates``, the checkpoint with the most training steps among those that hold the
    weights, the config and a readable training state."""
    complete, passed_over = [], []
    for directory in candidates:
        missing = [name for name in (MODEL_FILE, CONFIG_FILE, STATE_FILE) if not (directory / name).is_file()]
        step = None if missing else _saved_step(directory)
        if step is not None:
            complete.append((step, directory))
        else:
            passed_over.append(f"{directory.name}/ lacks {', '.join(missing)}" if missing else f"{directory / STATE_FILE} cannot be read")
    if not complete:
        raise CheckpointError(
            f"{output} holds no complete checkpoint to resume ({'; '.join(passed_over)}); "
            "name one with --resume DIR, or start a fresh run in another train.output_dir"
        )
    _, chosen = max(complete, key=lambda found: found[0])  # max keeps the first of equals
    older = [directory.name for _, directory in complete if directory != chosen]
    if verbose and chosen.name != "last":
        reasons = passed_over + [f"{name}/ is older" for name in older]
        because = f" ({'; '.join(reasons)})" if reasons else ""
        print(f"mmnet: --resume auto takes {chosen}, the newest complete checkpoint{because}", flush=True)
    return chosen


def _saved_step(directory: Path) -> Optional[int]:
    """The optimizer steps a checkpoint's training state records, None when it cannot be read.
    Memory-mapped: the optimizer's tensors are not read."""
    try:
        state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
        return int(state["train_state"]["step"])
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError):
        return None


def optimization(model: MMNet, config: Config, *, total_steps: int) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam over ``parameter_groups`` and the polynomial decay over ``total_steps`` optimizer steps.

    On CPUs and CUDA GPUs Adam runs fused, one operator call over all parameters: the same update to
    float rounding, and on the demo's model a step takes 0.91 times as long (docs/performance.md).
    """
    train = config.train
    devices = {p.device.type for p in model.parameters()}
    optimizer = torch.optim.Adam(
        parameter_groups(model, lr=train.lr, backbone_lr_mult=train.backbone_lr_mult),
        weight_decay=train.weight_decay,
        fused=devices <= FUSED_ADAM_DEVICES,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(total_steps, train.lr_power))


def wrap(model: MMNet, ctx: distributed.Context) -> nn.Module:
    """The model as the training steps run it: under torchrun in DistributedDataParallel, with
    SyncBatchNorm on GPUs (batch statistics over all of them; gloo on CPUs has none)."""
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)


class RunLog:
    """The run's records: ``log.jsonl`` (a JSON line each) and, with ``train.tensorboard``, the
    same numbers as TensorBoard scalars. Only the main process writes (``enabled``); leaving the
    ``with`` block closes both, also when training raises.

    A run resumed at step s (``resumed_at``) continues the records of the run it resumes, less what
    that run recorded after step s: a run killed after its last checkpoint wrote lines for steps
    that the resumed run takes again."""

    def __init__(self, *, output: Path, tensorboard: bool, enabled: bool, resumed_at: Optional[int] = None) -> None:
        self.output, self.tensorboard, self.enabled, self.resumed_at = output, tensorboard, enabled, resumed_at
        self.file: Optional[TextIO] = None
        self.writer = None

    def __enter__(self) -> "RunLog":
        if self.enabled:
            path = self.output / "log.jsonl"
            if self.resumed_at is not None and path.is_file():
                _truncate_log(path, after_step=self.resumed_at)
            self.file = path.open("a")
            if self.tensorboard:
                try:
                    self.writer = _tensorboard(self.output, purge_step=None if self.resumed_at is None else self.resumed_at + 1)
                except BaseException:  # __exit__ does not run after a failed __enter__
                    self.file.close()
                    raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.file is not None:
                self.file.close()
        finally:
            if self.writer is not None:
                self.writer.close()

    def training(self, record: dict) -> None:
        """A record of ``train_one_epoch``; its numbers as scalars ``train/<key>``."""
        self._write(record)
        self._scalars("train", {k: v for k, v in record.items() if k not in ("epoch", "step")}, record["step"])

    def validation(self, *, epoch: int, step: int, metrics: dict) -> None:
        """An epoch's validation metrics; as scalars ``val/<key>``, the query diagnostics among them."""
        self._write({"epoch": epoch, "step": step, "val": metrics})
        self._scalars("val", {**metrics, **metrics["diagnostics"]}, step)

    def _write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def _scalars(self, group: str, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)):  # not the diagnostics dict, nor one that is None
                self.writer.add_scalar(f"{group}/{key}", value, step)


def _truncate_log(path: Path, *, after_step: int) -> None:
    """Drops the lines of ``path`` for steps after ``after_step``, and a line that does not parse
    (one cut short by a kill); replaces the file in one rename, so a kill meanwhile loses nothing."""
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line).get("step", 0)
            keep = isinstance(step, (int, float)) and step <= after_step
        except (json.JSONDecodeError, AttributeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        staging = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        staging.write_text("".join(kept))
        os.replace(staging, path)
        print(f"mmnet: {path}: dropped {dropped} lines written after step {after_step}, which this run takes again", flush=True)


def _tensorboard(output: Path, *, purge_step: Optional[int] = None):
    """A SummaryWriter for ``output/tensorboard``; ``purge_step`` hides the events from that step
    on that a run killed after its last checkpoint wrote."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("mmnet: tensorboard is not installed; logging to log.jsonl only", flush=True)
        return None
    return SummaryWriter(str(output / "tensorboard"), purge_step=purge_step)
