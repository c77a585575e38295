"""One process or many: torchrun sets the environment, these helpers read it.

The same code runs as a single process (CPU or one GPU) and under ``torchrun`` with
DistributedDataParallel (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from mmnet.device import choose_device

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device: str | None = None) -> Context:
    """Joins the process group when started by torchrun; picks this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = choose_device(device, local_rank=local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


@contextlib.contextmanager
def session(device: str | None = None) -> Iterator[Context]:
    """The process group for a piece of work: joined on entry when torchrun started this process,
    left on exit unless it was already joined before (then its owner leaves it)."""
    joined_before = dist.is_initialized()
    ctx = init(device)
    try:
        yield ctx
    finally:
        if dist.is_initialized() and not joined_before:
            dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def main_first(ctx: Context, build: Callable[[bool], T]) -> T:
    """``build(is_main)`` on the main process first and then, after a barrier, on the others: for
    work that fills a cache (such as the dataset index) which the others then read."""
    if ctx.is_main:
        result = build(True)
    barrier()
    if not ctx.is_main:
        result = build(False)
    return result


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copies rank 0's buffers (batch-norm statistics) to every process."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class ShardSampler(Sampler[int]):
    """This process's share of a dataset: items rank, rank + W, rank + 2W, ... in a seeded
    shuffled order (training) or the dataset's order (evaluation), each item on one process only.

    ``set_epoch`` chooses the order of an epoch; ``skip`` drops its first items, to resume in the
    middle of an epoch.
    """

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = False, seed: int = 0) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world_size))
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        # Training shards must be equal, so every process makes the same number of steps.
        per_rank = self.size // self.world_size
        return order[self.rank : per_rank * self.world_size : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.skip)
