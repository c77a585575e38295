"""Train, then evaluate the best checkpoint: the sequence the demo and the ablation benchmark share."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from mmnet.config import Config
from mmnet.data.synth import SPLITS

if TYPE_CHECKING:
    from mmnet.train import TrainResult

EVAL_SPLITS = SPLITS[1:]
"""The splits a model is evaluated on: val, testA and testB."""


@dataclass
class Experiment:
    trained: TrainResult
    evaluation: dict[str, dict]
    """Per split, ``metrics`` and ``records`` as ``mmnet.evaluate.evaluate_checkpoint`` gives them."""
    seconds: dict[str, float]
    """Wall time of ``train`` and ``evaluate``."""

    @property
    def metrics(self) -> dict[str, dict]:
        return {split: result["metrics"] for split, result in self.evaluation.items()}


def train_and_evaluate(
    config: Config,
    *,
    splits: tuple[str, ...] = EVAL_SPLITS,
    device: Optional[str] = None,
    vis_dir: Optional[str | Path] = None,
    vis_limit: Optional[int] = None,
    vis_select: Optional[Callable[[dict], bool]] = None,
) -> Experiment:
    """Trains as ``config`` says from scratch, then evaluates ``<train.output_dir>/best`` on ``splits``
    (drawing up to ``vis_limit`` expressions per split that ``vis_select`` accepts into ``vis_dir``)."""
    from mmnet.evaluate import evaluate_checkpoint
    from mmnet.train import train

    output = Path(config.train.output_dir)
    start = time.perf_counter()
    trained = train(config, device=device)
    seconds = {"train": time.perf_counter() - start}
    start = time.perf_counter()
    evaluation = evaluate_checkpoint(
        output / "best", list(splits), device=device, vis_dir=vis_dir, vis_limit=vis_limit, vis_select=vis_select
    )
    seconds["evaluate"] = time.perf_counter() - start
    return Experiment(trained=trained, evaluation=evaluation, seconds=seconds)

