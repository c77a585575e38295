"""What `make demo` spends its time on, and what the changes that cut it gain.

1. The demo's training step (configs/demo.yaml: forward, the loss, backward, gradient clipping
   and the optimizer step at batch 16) with plain Adam, Adam over all parameters at once
   (``foreach``) and fused Adam, which `mmnet train` uses; the three models start from the same
   weights, take the same batch, and are timed in turns. Their weights after all the steps are
   compared too: each update is the same to float rounding, and the JSON records how far the
   rounding differences have carried the weights apart.
2. Writing the synthetic set (`mmnet data synth`) with one process and with ``--workers``; the
   two sets are compared file by file.
3. Reading one training sample of that set as the demo's training does (decode, letterbox, mask,
   tokens).

    python benchmarks/demo_speed.py              # -> benchmarks/results/demo_speed_cpu.json

Run it alone on the machine: it times both cores.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, in_turns, inputs, write_results  # noqa: E402

ADAMS = {"plain": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def training_step(*, batch: int, warmup: int, repeats: int) -> dict:
    from mmnet.build import build_mmnet
    from mmnet.config import load_config
    from mmnet.engine import loss_function

    config = load_config(REPO / "configs" / "demo.yaml")
    torch.manual_seed(0)
    first = build_mmnet(config.model, load_clip_weights=False)
    images, tokens = inputs(config.model, batch, torch.device("cpu"))
    size = config.model.image_size
    masks = (torch.rand(batch, 1, size, size) > 0.8).float()
    loss = loss_function(config, has_estimator=first.estimator is not None)

    models, steps = {}, []
    for name, options in ADAMS.items():
        model = copy.deepcopy(first).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, **options)

        def step(model=model, optimizer=optimizer):
            loss(model(images, tokens), masks)["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        models[name] = model
        steps.append(step)
    times, _ = in_turns(steps, torch.device("cpu"), warmup=warmup, repeats=repeats)
    plain = dict(models["plain"].named_parameters())
    result = {}
    for (name, model), seconds in zip(models.items(), times):
        differences = [(p - plain[n]).abs().max().item() for n, p in model.named_parameters()]
        result[name] = {
            "median_s": statistics.median(seconds),
            "times_s": seconds,
            "samples_per_s": batch / statistics.median(seconds),
            "median_ratio_to_plain": statistics.median(a / b for a, b in zip(seconds, times[0])),
            "max_weight_difference_to_plain": max(differences),
        }
    return {"batch": batch, "steps_after_warmup": warmup + repeats, "adam": result}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def synthesis(*, images: int, workers: int, samples: int) -> dict:
    from mmnet.data.synth import write_synthetic

    counts = (images, 100, 100, 100)
    seconds, digests = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for n in sorted({1, workers}):
            out = Path(scratch) / f"workers_{n}"
            start = time.perf_counter()
            write_synthetic(out, images=counts, progress=False, workers=n)
            seconds[n] = time.perf_counter() - start
            digests[n] = _digest(out)
        loading = sample_loading(Path(scratch) / f"workers_{workers}", samples=samples)
    return {
        "images": counts,
        "seconds": {str(n): s for n, s in seconds.items()},
        "speedup": seconds[1] / seconds[workers],
        "same_files": digests[1] == digests[workers],
        "files": len(digests[1]),
        "loading": loading,
    }


def sample_loading(root: Path, *, samples: int) -> dict:
    """Milliseconds to read one training sample of the demo (decode, letterbox, mask, tokens), as
    the training process does it with data.num_workers=0: the median of five passes over
    ``samples`` samples, after one pass that builds the index and warms the file cache."""
    from mmnet.config import load_config
    from mmnet.data.datasets import ReferTrainDataset
    from mmnet.data.refer import ReferIndex

    config = load_config(REPO / "configs" / "demo.yaml")
    index = ReferIndex.load(root, "synthref", "unc", progress=False)
    dataset = ReferTrainDataset(index, split="train", image_size=config.model.image_size, context_length=config.model.context_length)
    passes = []
    for _ in range(6):
        start = time.perf_counter()
        for i in range(samples):
            dataset[i]
        passes.append((time.perf_counter() - start) / samples * 1e3)
    return {"samples": samples, "ms_per_sample": statistics.median(passes[1:]), "passes_ms": passes[1:]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="the demo's batch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--images", type=int, default=6000, help="training images to synthesise (the demo's 6,000)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the parallel synthesis")
    parser.add_argument("--samples", type=int, default=500, help="training samples read to time the data loading")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/demo_speed_cpu.json)")
    args = parser.parse_args(argv)

    step = training_step(batch=args.batch, warmup=args.warmup, repeats=args.repeats)
    for name, row in step["adam"].items():
        print(
            f"training step, {name:>7} Adam: {row['median_s'] * 1e3:.0f} ms, {row['samples_per_s']:.1f} samples/s, "
            f"{row['median_ratio_to_plain']:.3f} x plain, weights within {row['max_weight_difference_to_plain']:.1e} of plain",
            flush=True,
        )
    synth = synthesis(images=args.images, workers=args.workers, samples=args.samples)
    print(
        f"synthesis of {sum(synth['images'])} images: "
        + ", ".join(f"{n} process(es) {s:.1f} s" for n, s in synth["seconds"].items())
        + f"; {synth['speedup']:.2f}x; same files: {synth['same_files']}"
    )
    print(f"reading a training sample: {synth['loading']['ms_per_sample']:.2f} ms")
    write_results(args.out, "demo_speed", torch.device("cpu"), {"training_step": step, "synthesis": synth, "settings": vars(args)})


if __name__ == "__main__":
    main()
