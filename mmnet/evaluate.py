"""``mmnet eval``: the paper's metrics of a checkpoint on one or more splits, and Figure-5 pictures."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmnet import diagnostics, distributed
from mmnet.checkpoint import CONFIG_FILE, find_checkpoint, load_model, read_config
from mmnet.config import Config, ConfigError, load_config, with_overrides
from mmnet.data.datasets import ReferEvalDataset, collate_eval
from mmnet.data.images import load_image
from mmnet.data.refer import ReferIndex
from mmnet.device import autocast
from mmnet.diagnostics import QueryDiagnostics
from mmnet.data.transforms import to_original
from mmnet.errors import MMNetError
from mmnet.metrics import format_table, intersection_union, iou, summarize
from mmnet.modeling import MMNetOutput
from mmnet.visualize import expression_panel


def query_maps(outputs: MMNetOutput, index: int, geometry) -> torch.Tensor:
    """Sample ``index``'s query probabilities at the original size, on the CPU: M x H x W."""
    return to_original(outputs.query_masks[index].float().sigmoid().cpu(), geometry)


@torch.inference_mode()
def evaluate(
    *,
    model: nn.Module,
    loader,
    ctx: distributed.Context,
    threshold: float,
    precision: str,
    desc: str = "eval",
    on_sample: Optional[Callable[[dict[str, Any], int, dict[str, torch.Tensor], torch.Tensor, float], None]] = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Predicts every expression of this process's shard, compares at the original resolution,
    and gathers all processes' records.

    Args:
        model: MMNet (not wrapped in DDP: shards may differ in length).
        on_sample: called as (batch, index in batch, outputs, probability map, IoU) for each
            expression, e.g. to draw it.
    Returns:
        the summary (mIoU, oIoU, Pr@X in percent, count, and under ``diagnostics`` the split's
        means of ``mmnet.diagnostics``) and one record per expression (sent_id, ref_id,
        image_id, intersection, union, iou).
    """
    model.eval()
    records = []
    queries = QueryDiagnostics(device=ctx.device)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not ctx.is_main, dynamic_ncols=True):
        tokens = batch["tokens"].to(ctx.device)
        with autocast(ctx.device, precision):
            outputs = model(batch["image"].to(ctx.device), tokens)
        queries.update(outputs=outputs, tokens=tokens)
        probs = outputs.logits.float().sigmoid().cpu()
        for b, geometry in enumerate(batch["geometry"]):
            probability = to_original(probs[b, 0], geometry)
            intersection, union = intersection_union(probability > threshold, batch["mask"][b].bool())
            value = float(iou(intersection, union))
            records.append(
                {
                    "sent_id": int(batch["sent_id"][b]),
                    "ref_id": int(batch["ref_id"][b]),
                    "image_id": int(batch["image_id"][b]),
                    "intersection": int(intersection),
                    "union": int(union),
                    "iou": value,
                }
            )
            if on_sample is not None:
                on_sample(batch, b, outputs, probability, value)
    records = [r for shard in distributed.all_gather_objects(records) for r in shard]
    records.sort(key=lambda r: r["sent_id"])
    diagnostics = queries.summary()
    if not records:
        raise MMNetError("the evaluation split holds no expressions")
    return {**summarize([r["intersection"] for r in records], [r["union"] for r in records]), "diagnostics": diagnostics}, records


def split_loader(index: ReferIndex, split: str, config: Config, ctx: distributed.Context, **options) -> DataLoader:
    """The batches ``evaluate`` reads for ``split``: this process's shard of its expressions.

    Args:
        options: further DataLoader options (``num_workers`` defaults to ``config.data.num_workers``).
    """
    dataset = ReferEvalDataset(
        index,
        split=split,
        image_size=config.model.image_size,
        context_length=config.model.context_length,
        text_blind=config.data.text_blind,
    )
    return DataLoader(
        dataset,
        batch_size=config.eval.batch_size,
        sampler=distributed.ShardSampler(len(dataset), rank=ctx.rank, world_size=ctx.world_size),
        collate_fn=collate_eval,
        **{"num_workers": config.data.num_workers, **options},
    )


def _config_for(checkpoint: Path, config_path: Optional[str], overrides: list[str]) -> Config:
    """The data and eval settings from ``--config`` (or the checkpoint's own), the model settings
    and the text-blind switch always from the checkpoint: they describe what its weights learnt."""
    if any(o.strip().startswith("model.") for o in overrides):
        raise ConfigError(f"{checkpoint}: the model settings of an evaluation come from the checkpoint's {CONFIG_FILE}")
    saved = read_config(checkpoint)
    config = load_config(config_path, overrides) if config_path else with_overrides(saved, overrides)
    config.model = saved.model
    config.data.text_blind = saved.data.text_blind
    return config


def evaluate_checkpoint(
    checkpoint: str | Path,
    splits: list[str],
    *,
    config_path: Optional[str] = None,
    overrides: tuple[str, ...] = (),
    vis_dir: Optional[str | Path] = None,
    vis_limit: Optional[int] = None,
    device: Optional[str] = None,
) -> dict[str, dict]:
    """Metrics per split (mIoU, oIoU, Pr@0.5-0.9 in percent, count, and the query ``diagnostics``)
    of the checkpoint at ``checkpoint``."""
    directory = find_checkpoint(checkpoint)
    config = _config_for(directory, config_path, list(overrides))
    with distributed.session(device) as ctx:
        model = load_model(directory, config.model).to(ctx.device)
        if config.eval.compile:
            model.compile()
        index = distributed.main_first(ctx, lambda main: ReferIndex.from_config(config.data, progress=main))
        results = {}
        for split in splits:
            loader = split_loader(index, split, config, ctx)
            drawn = {"count": 0}

            def draw(batch, b, outputs, probability, value, split=split):
                if vis_limit is not None and drawn["count"] >= vis_limit:
                    return
                drawn["count"] += 1
                save_panel(Path(vis_dir) / split, index, batch, b, outputs, probability, value, config.eval.threshold)

            metrics, records = evaluate(
                model=model,
                loader=loader,
                ctx=ctx,
                threshold=config.eval.threshold,
                precision=config.eval.precision,
                desc=split,
                on_sample=draw if vis_dir is not None else None,
            )
            results[split] = {"metrics": metrics, "records": records}
        return results


def save_panel(folder: Path, index: ReferIndex, batch, b: int, outputs, probability, value: float, threshold: float) -> Path:
    """Writes ``<folder>/<sent_id>.png``: image, ground truth, prediction (``probability``, H x W at
    the original size) and scored query masks."""
    folder.mkdir(parents=True, exist_ok=True)
    queries = query_maps(outputs, b, batch["geometry"][b])
    record = index.image(int(batch["image_id"][b]))
    panel = expression_panel(
        load_image(index.image_path(record.image_id), size=(record.width, record.height)),
        batch["sentence"][b],
        ground_truth=batch["mask"][b].numpy(),
        probability=probability.numpy(),
        threshold=threshold,
        query_probabilities=list(queries.numpy()),
        query_scores=[float(s) for s in outputs.query_scores[b].float().cpu()],
        iou=value,
    )
    path = folder / f"{int(batch['sent_id'][b])}.png"
    panel.save(path)
    return path


def run_eval(args) -> int:
    results = evaluate_checkpoint(
        args.checkpoint,
        args.split,
        config_path=args.config,
        overrides=tuple(args.overrides),
        vis_dir=args.vis,
        vis_limit=args.vis_limit,
        device=args.device,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(format_table({split: r["metrics"] for split, r in results.items()}))
    print(diagnostics.format_table({split: r["metrics"]["diagnostics"] for split, r in results.items()}))
    find_checkpoint(args.checkpoint)  # a clear error when there is none
    # Beside the checkpoint, not in it: saving the checkpoint again replaces its folder.
    named = Path(args.checkpoint).resolve()  # best/, even where best.old/ was read after an interrupted save
    out = Path(args.out) if args.out else named.parent / f"eval_{named.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({split: r["metrics"] for split, r in results.items()}, indent=2))
    print(f"metrics written to {out}")
    if args.vis:
        print(f"pictures written to {args.vis}/<split>/<sent_id>.png")
    return 0

