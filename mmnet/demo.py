"""The demo (``mmnet demo``): the whole project on a CPU in about 12 minutes (two cores).

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
from mmnet.experiment import Experiment, train_and_evaluate
from mmnet.metrics import GENERALIZED_NAMES, METRIC_NAMES
from mmnet.visualize import stack

def demo(
    out: str | Path,
    *,
    config_path: str | Path = "configs/demo.yaml",
    overrides: tuple[str, ...] = (),
    seed: int = 0,
    images: tuple[int, int, int, int] = (6000, 100, 100, 100),
    size: tuple[int, int] = (320, 240),
    examples: int = 6,
    generalized: bool = False,
    workers: int = 1,
) -> str:
    """Synthesises a dataset under ``out``, trains and evaluates on CPU, and writes
    ``out/report.md`` and ``out/predictions.png``; returns the report.

    Args:
        images: images of the train, val, testA and testB splits.
        size: width and height of the synthetic images.
        examples: val expressions drawn in predictions.png.
        generalized: synthesise gRefCOCO's layout, with expressions that name several shapes or
            none (``mmnet data synth --generalized``), and report the GRES metrics too.
        workers: processes that draw the synthetic images (``write_synthetic``).
    """
    out = Path(out)
    config = load_config(config_path, [f"data.root={out / 'data'}", f"train.output_dir={out / 'train'}", *overrides])
    start = time.perf_counter()
    write_synthetic(
        config.data.root,
        name=config.data.dataset,
        seed=seed,
        images=images,
        width=size[0],
        height=size[1],
        generalized=generalized,
        workers=workers,
    )
    seconds = {"synthesise the dataset": time.perf_counter() - start}
    for previous in (out / "train", out / "vis"):  # the demo's own folders: each demo starts afresh
        shutil.rmtree(previous, ignore_errors=True)
    select = _each_kind(examples) if generalized else None
    experiment = train_and_evaluate(config, device="cpu", vis_dir=out / "vis", vis_limit=examples, vis_select=select)
    seconds.update(experiment.seconds)

    panels = sorted((out / "vis" / "val").glob("*.png"), key=lambda p: int(p.stem))[:examples]
    stack([Image.open(p) for p in panels]).save(out / "predictions.png")
    dataset = f"mmnet data synth --name {config.data.dataset} --seed {seed} --images {' '.join(map(str, images))} --size {size[0]} {size[1]}"
    dataset += " --generalized" if generalized else ""
    report = _report(config, experiment, seconds, dataset)
    (out / "report.md").write_text(report)
    return report


def _each_kind(examples: int):
    """A ``vis_select`` that takes the first expressions of each kind (one object, several, none)
    in turn, ``examples`` in all, so that predictions.png shows all three."""
    wanted = {kind: examples // 3 + (i < examples % 3) for i, kind in enumerate(("one", "several", "none"))}

    def select(entries: dict) -> bool:
        kind = "none" if entries["objects"] == 0 else "one" if entries["objects"] == 1 else "several"
        if wanted[kind] <= 0:
            return False
        wanted[kind] -= 1
        return True

    return select


def _report(config, experiment: Experiment, timings: dict, dataset: str) -> str:
    result, metrics = experiment.trained, experiment.metrics
    lines = [
        "# MMNet demo",
        "",
        f"A {config.model.backbone} MMNet (C = {config.model.hidden_dim}, N_q = {config.model.num_queries}, "
        f"{config.model.image_size} x {config.model.image_size} input) trained from scratch on CPU for "
        f"{result.state.epoch} epochs on a synthetic referring dataset, evaluated at the original image size "
        f"with the best validation checkpoint (epoch {_best_epoch(result)}).",
        "",
    ]
    names = METRIC_NAMES + (GENERALIZED_NAMES if all("gIoU" in row for row in metrics.values()) else ())
    lines += ["| split | " + " | ".join(names) + " | expressions |", "| --- | " + " | ".join("---" for _ in names) + " | --- |"]
    for split, row in metrics.items():
        cells = " | ".join("-" if row[name] is None else f"{row[name]:.2f}" for name in names)
        lines.append(f"| {split} | {cells} | {row['count']} |")
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
        f"Dataset: `{dataset}`.",
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
        "its IoU (and, with the no-target head, its probability that nothing matches), and the masks of",
        "the four queries (or fewer, if the model has fewer) the Multi-Query Estimator scored highest,",
        "each with its score, best first; the image is dimmed where a mask or probability is low.",
        "",
    ]
    return "\n".join(lines)


def _best_epoch(result) -> int:
    return max(result.state.history, key=lambda h: h["mIoU"])["epoch"]
