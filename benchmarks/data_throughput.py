"""Data-loading throughput: training samples per second in the main process, with one worker and with every core.

Writes a synthetic set of COCO-sized JPEGs (640 x 480, re-encoded with photo-like texture so
that decoding costs what a photo costs), reads it through ReferTrainDataset into 480 x 480
inputs, and reports medians over repeats, with the time each step of a sample takes.

    .venv/bin/python benchmarks/data_throughput.py            # writes benchmarks/results/data_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmnet.data.datasets import ReferTrainDataset
from mmnet.data.images import load_image
from mmnet.data.refer import ReferIndex
from mmnet.data.synth import write_synthetic
from mmnet.data.tokenizer import tokenize

WIDTH, HEIGHT = 640, 480


def add_texture(path: Path, rng: np.random.Generator) -> int:
    """Overlays coarse and fine noise and saves at JPEG quality 90; returns the file size in bytes."""
    pixels = np.asarray(Image.open(path), dtype=np.float32)
    coarse = Image.fromarray(rng.normal(128, 40, (HEIGHT // 16, WIDTH // 16, 3)).clip(0, 255).astype(np.uint8))
    coarse = np.asarray(coarse.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), dtype=np.float32) - 128
    fine = rng.normal(0, 8, pixels.shape)
    Image.fromarray((pixels + 0.5 * coarse + fine).clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path.stat().st_size


def samples_per_second(dataset: ReferTrainDataset, *, workers: int, batch_size: int) -> float:
    """Samples after the first batch over the time after it, so worker start-up is left out."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    batches = iter(loader)
    next(batches)
    start, count = time.perf_counter(), 0
    for batch in batches:
        count += len(batch["image"])
    return count / (time.perf_counter() - start)


def step_times(dataset: ReferTrainDataset, *, samples: int) -> dict[str, float]:
    """Median milliseconds of each step of a training sample, in this process."""
    index, letterbox = dataset.index, dataset.letterbox
    steps: dict[str, list[float]] = {"decode JPEG": [], "letterbox image": [], "decode and letterbox mask": [], "tokenize": []}
    for ref in dataset.refs[:samples]:
        record = index.image(ref.image_id)
        t0 = time.perf_counter()
        image = load_image(index.image_path(ref.image_id), size=(record.width, record.height))
        t1 = time.perf_counter()
        _, geometry = letterbox(image)
        t2 = time.perf_counter()
        letterbox.mask(index.mask(ref.ref_id), geometry)
        t3 = time.perf_counter()
        tokenize(ref.sentences[0].text, dataset.context_length)
        t4 = time.perf_counter()
        for name, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            steps[name].append(seconds)
    return {name: round(1000 * statistics.median(values), 3) for name, values in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images written (each holds several refs)")
    parser.add_argument("--size", type=int, default=480, help="side of the letterboxed input")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_throughput.json"))
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp, name="bench", seed=0, images=(args.images, 0, 0, 0), width=WIDTH, height=HEIGHT, progress=False)
        rng = np.random.default_rng(0)
        sizes = [add_texture(path, rng) for path in sorted((Path(tmp) / "images" / "train2014").glob("bench_*.jpg"))]
        index = ReferIndex.load(tmp, "bench", "unc", progress=False)
        dataset = ReferTrainDataset(index, split="train", image_size=args.size, context_length=17)
        throughput = {}
        for workers in sorted({0, 1, cores}):
            runs = [samples_per_second(dataset, workers=workers, batch_size=args.batch_size) for _ in range(args.repeats)]
            name = f"{workers} worker{'s' if workers > 1 else ''}" if workers else "main process, no workers"
            throughput[name] = round(statistics.median(runs), 1)
        steps = step_times(dataset, samples=len(dataset))

    result = {
        "what": f"ReferTrainDataset samples per second, {WIDTH} x {HEIGHT} JPEGs to {args.size} x {args.size}, median of {args.repeats}",
        "samples_per_second": throughput,
        "step_ms_median": steps,
        "samples": len(dataset),
        "images": args.images,
        "mean_jpeg_kb": round(statistics.mean(sizes) / 1024, 1),
        "batch_size": args.batch_size,
        "machine": {"cores": cores, "processor": platform.processor() or platform.machine(), "python": platform.python_version(), "torch": torch.__version__},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
