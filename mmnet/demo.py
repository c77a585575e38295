"""``mmnet demo``: the whole project on a CPU in about ten minutes.

Writes a synthetic referring dataset, trains a small MMNet from scratch, evaluates it on val,
testA and testB, and writes ``report.md`` (metrics, settings, time taken) and
``predictions.png`` (examples, each with its best scored queries' masks) under ``--out``.
"""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path

import torch
import yaml
from PIL import Image

from mmnet.config import config_to_dict, load_config
from mmnet.data.synth import write_synthetic
from mmnet.diagnostics import DIAGNOSTIC_NAMES, LABELS, MEANING, format_value
from mmnet.evaluate import evaluate_checkpoint
from mmnet.metrics import METRIC_NAMES
from mmnet.train import train
from mmnet.visualize import stack

SPLITS = ("val", "testA", "testB")


def run_demo(args) -> int:
    out = Path(args.out)
    config = load_config(args.config, [f"data.root={out / 'data'}", f"train.output_dir={out / 'train'}", *args.overrides])
    timings = {}

    start = time.perf_counter()
    write_synthetic(
        config.data.root,
        name=config.data.dataset,
        seed=args.seed,
        images=args.images,
        width=args.size[0],
        height=args.size[1],
    )
    timings["synthesise the dataset"] = time.perf_counter() - start

    start = time.perf_counter()
    for previous in (out / "train", out / "vis"):  # the demo's own folders: each demo starts afresh
        shutil.rmtree(previous, ignore_errors=True)
    result = train(config, device="cpu")
    timings["train"] = time.perf_counter() - start

    start = time.perf_counter()
    best = out / "train" / "best"
    results = evaluate_checkpoint(best, list(SPLITS), device="cpu", vis_dir=out / "vis", vis_limit=args.examples)
    timings["evaluate"] = time.perf_counter() - start

    panels = sorted((out / "vis" / "val").glob("*.png"), key=lambda p: int(p.stem))[: args.examples]
    stack([Image.open(p) for p in panels]).save(out / "predictions.png")
    report = _report(config, result, results, timings, args)
    (out / "report.md").write_text(report)
    print(report)
    print(f"written: {out / 'report.md'}, {out / 'predictions.png'}")
    return 0


def _report(config, result, results: dict, timings: dict, args) -> str:
    metrics = {split: results[split]["metrics"] for split in SPLITS}
    lines = [
        "# MMNet demo",
        "",
        f"A {config.model.backbone} MMNet (C = {config.model.hidden_dim}, N_q = {config.model.num_queries}, "
        f"{config.model.image_size} x {config.model.image_size} input) trained from scratch on CPU for "
        f"{result.state.epoch} epochs on a synthetic referring dataset, evaluated at the original image size "
        f"with the best validation checkpoint (epoch {_best_epoch(result)}).",
        "",
        "| split | " + " | ".join(METRIC_NAMES) + " | expressions |",
        "| --- | " + " | ".join("---" for _ in METRIC_NAMES) + " | --- |",
    ]
    for split, row in metrics.items():
        lines.append(f"| {split} | " + " | ".join(f"{row[name]:.2f}" for name in METRIC_NAMES) + f" | {row['count']} |")
    lines += ["", "Validation mIoU by epoch: " + ", ".join(f"{h['mIoU']:.1f}" for h in result.state.history) + ".", ""]
    lines += [
        "## Queries",
        "",
        "| split | " + " | ".join(LABELS[name] for name in DIAGNOSTIC_NAMES) + " |",
        "| --- | " + " | ".join("---" for _ in DIAGNOSTIC_NAMES) + " |",
    ]
    for split, row in metrics.items():
        lines.append(f"| {split} | " + " | ".join(format_value(row["diagnostics"][name]) for name in DIAGNOSTIC_NAMES) + " |")
    lines += ["", MEANING, ""]
    lines += ["## Time taken", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in timings.items()]
    lines += [f"| total | {sum(timings.values()):.0f} |", ""]
    lines += [
        "## Machine",
        "",
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "## Settings",
        "",
        f"Dataset: `mmnet data synth --seed {args.seed} --images {' '.join(map(str, args.images))} --size {args.size[0]} {args.size[1]}`.",
        "",
        "```yaml",
        yaml.safe_dump(config_to_dict(config), sort_keys=False).rstrip(),
        "```",
        "",
        "## Predictions",
        "",
        "![predictions](predictions.png)",
        "",
        "Each panel: the image, the ground truth (outlined green), the prediction (outlined red) with",
        "its IoU, and every query's mask with the score the Multi-Query Estimator gave it, best first;",
        "the image is dimmed where a mask or probability is low.",
        "",
    ]
    return "\n".join(lines)


def _best_epoch(result) -> int:
    return max(result.state.history, key=lambda h: h["mIoU"])["epoch"]
