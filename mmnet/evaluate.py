"""Evaluation: the paper's metrics of a model on a split, each image encoded once, and Figure-5 pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmnet import distributed
from mmnet.checkpoint import CONFIG_FILE, find_checkpoint, load_model, read_config
from mmnet.config import Config, ConfigError, EvalConfig, load_config, with_overrides
from mmnet.data.datasets import ExpressionBatches, ReferEvalDataset, ReferImageEvalDataset, collate_eval, collate_images
from mmnet.data.images import load_image
from mmnet.data.refer import ReferIndex
from mmnet.device import autocast
from mmnet.engine import LoaderPass
from mmnet.diagnostics import QueryDiagnostics
from mmnet.errors import MMNetError
from mmnet.metrics import intersection_union, iou, summarize
from mmnet.modeling import MMNetOutput
from mmnet.postprocess import Segmentation, segment
from mmnet.visualize import expression_panel


OnSample = Callable[[dict[str, Any], MMNetOutput, Segmentation, float], None]


@torch.inference_mode()
def evaluate(
    *,
    model: nn.Module,
    loader,
    ctx: distributed.Context,
    threshold: float,
    precision: str,
    no_target_threshold: float = 0.5,
    desc: str = "eval",
    batch_size: Optional[int] = None,
    on_sample: Optional[OnSample] = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Predicts every expression of this process's shard, compares at the original resolution,
    and gathers all processes' records.

    Each batch's images are encoded once and decoded for every expression about them (a batch
    as ``collate_images`` makes it; ``collate_eval`` batches, one image per expression, work too).

    Args:
        model: MMNet (not wrapped in DDP: shards may differ in length).
        batch_size: the most expressions decoded at once (``eval.batch_size``), also where one
            image has more; None decodes each batch's expressions together.
        on_sample: called for each expression as (its batch entries: sent_id, ref_id, image_id,
            sentence, mask, geometry; its outputs, a batch of one; its Segmentation; its IoU),
            e.g. to draw it.
    Returns:
        the summary (mIoU, oIoU, Pr@X in percent, count, and under ``diagnostics`` the split's
        means of ``mmnet.diagnostics``) and one record per expression (sent_id, ref_id,
        image_id, intersection, union, iou).
    """
    model.eval()
    records = []
    queries = QueryDiagnostics(device=ctx.device)
    with LoaderPass(loader) as batches:  # a worker's error ends the pass and its workers
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not ctx.is_main, dynamic_ncols=True):
            for chunk, tokens, outputs in _decode(model, batch, ctx=ctx, precision=precision, batch_size=batch_size):
                queries.update(outputs=outputs, tokens=tokens)
                geometries = [batch["geometry"][k] for k in batch["image_index"][chunk].tolist()]
                segmentations = segment(outputs, geometries, threshold=threshold, no_target_threshold=no_target_threshold)
                for offset, segmentation in enumerate(segmentations):
                    e = chunk.start + offset
                    record = _record(batch, e, segmentation)
                    records.append(record)
                    if on_sample is not None:
                        entries = {**record, "sentence": batch["sentence"][e], "mask": batch["mask"][e], "geometry": geometries[offset]}
                        on_sample(entries, outputs.take(slice(offset, offset + 1)), segmentation, record["iou"])
    records = [r for shard in distributed.all_gather_objects(records) for r in shard]
    records.sort(key=lambda r: r["sent_id"])
    diagnostics = queries.summary()
    if not records:
        raise MMNetError("the evaluation split holds no expressions")
    # The GRES metrics where expressions may refer to several objects or none, or the model can say "none".
    generalized = any(r["objects"] != 1 for r in records) or any(r["no_target_probability"] is not None for r in records)
    extra = {"no_target": [r["objects"] == 0 for r in records], "predicted_areas": [r["predicted_area"] for r in records]} if generalized else {}
    metrics = summarize([r["intersection"] for r in records], [r["union"] for r in records], **extra)
    return {**metrics, "diagnostics": diagnostics}, records


def _decode(model: nn.Module, batch: dict[str, Any], *, ctx: distributed.Context, precision: str, batch_size: Optional[int]):
    """Encodes a batch's images once and yields (slice of its expressions, their tokens, their
    outputs), at most ``batch_size`` expressions at a time."""
    with autocast(ctx.device, precision):
        visual = model.encode_image(batch["image"].to(ctx.device))
    count = len(batch["image_index"])
    step = batch_size or count
    for start in range(0, count, step):
        chunk = slice(start, min(count, start + step))
        tokens = batch["tokens"][chunk].to(ctx.device)
        with autocast(ctx.device, precision):
            outputs = model.decode(visual.take(batch["image_index"][chunk]), tokens)
        yield chunk, tokens, outputs  # outside autocast: the caller's post-processing stays fp32


def _record(batch: dict[str, Any], e: int, segmentation: Segmentation) -> dict[str, Any]:
    """Expression ``e``'s ids, how many objects it refers to, and its intersection, union and IoU
    with the truth at the original size, the predicted mask's area and the no-target probability."""
    intersection, union = intersection_union(segmentation.mask, batch["mask"][e].bool())
    return {
        "sent_id": int(batch["sent_id"][e]),
        "ref_id": int(batch["ref_id"][e]),
        "image_id": int(batch["image_id"][batch["image_index"][e]]),
        "objects": int(batch["objects"][e]),
        "intersection": int(intersection),
        "union": int(union),
        "iou": float(iou(intersection, union)),
        "predicted_area": int(segmentation.mask.sum()),
        "no_target_probability": segmentation.no_target_probability,
    }


def split_loader(
    index: ReferIndex, split: str, config: Config, ctx: distributed.Context, *, by_image: bool = True, **options
) -> DataLoader:
    """The batches ``evaluate`` reads for ``split``: this process's shard of its images (each with
    all its expressions, about ``eval.batch_size`` expressions a batch), or with ``by_image``
    False of its expressions, each with its own copy of its image.

    Args:
        options: further DataLoader options (``num_workers`` defaults to ``config.data.num_workers``).
    """
    settings = {"image_size": config.model.image_size, "context_length": config.model.context_length, "text_blind": config.data.text_blind}
    options = {"num_workers": config.data.num_workers, **options}
    if not by_image:
        dataset = ReferEvalDataset(index, split=split, **settings)
        shard = distributed.ShardSampler(len(dataset), rank=ctx.rank, world_size=ctx.world_size)
        return DataLoader(dataset, batch_size=config.eval.batch_size, sampler=shard, collate_fn=collate_eval, **options)
    dataset = ReferImageEvalDataset(index, split=split, **settings)
    shard = distributed.ShardSampler(len(dataset), rank=ctx.rank, world_size=ctx.world_size)
    batches = ExpressionBatches(shard, dataset.expression_counts(), budget=config.eval.batch_size)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_images, **options)


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
    vis_select: Optional[Callable[[dict[str, Any]], bool]] = None,
    device: Optional[str] = None,
) -> dict[str, dict]:
    """Metrics per split (mIoU, oIoU, Pr@0.5-0.9 in percent, count, and the query ``diagnostics``;
    the GRES metrics where expressions may name several objects or none) of the checkpoint at
    ``checkpoint``, with up to ``vis_limit`` pictures per split in ``vis_dir`` of the expressions
    that ``vis_select`` (given an expression's record) accepts."""
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

            def draw(entries, outputs, segmentation, value, split=split):
                if vis_limit is not None and drawn["count"] >= vis_limit or vis_select is not None and not vis_select(entries):
                    return
                drawn["count"] += 1
                save_panel(Path(vis_dir) / split, index, entries, outputs, value, config.eval)

            metrics, records = evaluate(
                model=model,
                loader=loader,
                ctx=ctx,
                threshold=config.eval.threshold,
                precision=config.eval.precision,
                no_target_threshold=config.eval.no_target_threshold,
                desc=split,
                batch_size=config.eval.batch_size,
                on_sample=draw if vis_dir is not None else None,
            )
            results[split] = {"metrics": metrics, "records": records}
        return results


def save_panel(folder: Path, index: ReferIndex, entries: dict[str, Any], outputs: MMNetOutput, value: float, settings: EvalConfig) -> Path:
    """Writes ``<folder>/<sent_id>.png`` for one expression (``entries`` and ``outputs`` as
    ``evaluate`` hands them to ``on_sample``): image, ground truth, prediction and scored query masks."""
    folder.mkdir(parents=True, exist_ok=True)
    threshold = settings.threshold
    (shown,) = segment(outputs, [entries["geometry"]], threshold=threshold, no_target_threshold=settings.no_target_threshold, queries=True)
    record = index.image(entries["image_id"])
    panel = expression_panel(
        load_image(index.image_path(record.image_id), size=(record.width, record.height)),
        entries["sentence"],
        ground_truth=entries["mask"].numpy(),
        probability=shown.probability.numpy(),
        threshold=threshold,
        query_probabilities=list(shown.query_probabilities.numpy()),
        query_scores=[float(s) for s in outputs.query_scores[0].float().cpu()],
        iou=value,
        no_target_probability=shown.no_target_probability,
        no_target=shown.no_target,
    )
    path = folder / f"{entries['sent_id']}.png"
    panel.save(path)
    return path
