"""bf16 against fp32 for inference on this machine's CPU: what it changes in the masks, and what
it gains or costs in time, measured in one process.

For each model: every expression of a synthetic val split is evaluated at fp32 and at bf16
(``eval.precision``), and the two are compared expression by expression: the largest
probability difference, the mean IoU between the two predicted masks, and the mIoU of each
against the truth. Then one forward pass at batch 1 and 8 is timed at each precision, in turns,
beside a square matrix product at each (``--matmul-size``). Where the CPU has no native bf16
(no AMX-BF16 or AVX512-BF16) bf16 is emulated and far slower: there, ``--backbones`` with no
names keeps to the small demo model.

Models: the demo's trained checkpoint (``--checkpoint``, default runs/demo/train/best, from
``make demo``) on its own val split, and RN50 and ViT-B-16 at 480 with random towers
(``--backbones``) on a synthetic one.

    python benchmarks/bf16_cpu.py                        # demo checkpoint, RN50, ViT-B-16
    python benchmarks/bf16_cpu.py --backbones --images 20   # the demo checkpoint alone
    python benchmarks/bf16_cpu.py --checkpoint none --images 1 --batches   # random towers, masks only

Results: benchmarks/results/bf16_cpu.json, and a line per model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE_CONFIG, in_turns, write_results  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def compare(model, config, index, ctx) -> dict:
    """Every val expression at both precisions: how far apart the two predictions are."""
    from mmnet.evaluate import evaluate, split_loader

    from mmnet.metrics import intersection_union, iou

    seen, miou = {}, {}
    for precision in PRECISIONS:
        shown = seen[precision] = {}

        def keep(entries, outputs, segmentation, value, shown=shown):
            shown[entries["sent_id"]] = segmentation

        metrics, _ = evaluate(
            model=model, loader=split_loader(index, "val", config, ctx), ctx=ctx, threshold=config.eval.threshold,
            precision=precision, batch_size=config.eval.batch_size, on_sample=keep, desc=precision,
        )
        miou[precision] = metrics["mIoU"]
    ious, median_ious, differences = [], [], []
    for sent_id, full in seen["fp32"].items():
        low = seen["bf16"][sent_id]
        ious.append(float(iou(*intersection_union(full.mask, low.mask))))  # 1 where both are empty
        # A random model's probabilities sit on one side of the threshold, leaving both masks
        # empty (or full); cut both at the fp32 map's median instead, to compare where they rank.
        median = full.probability.median()
        median_ious.append(float(iou(*intersection_union(full.probability > median, low.probability > median))))
        differences.append((full.probability - low.probability).abs().max().item())
    return {
        "expressions": len(ious),
        "miou_fp32": miou["fp32"],
        "miou_bf16": miou["bf16"],
        "mask_iou_mean": statistics.mean(ious),
        "mask_iou_min": min(ious),
        "median_mask_iou_mean": statistics.mean(median_ious),
        "median_mask_iou_min": min(median_ious),
        "probability_difference_max": max(differences),
    }


def timing(model, config, *, batches: list[int], repeats: int) -> dict:
    """Median seconds of a forward pass at each precision and batch, in turns, and their ratio."""
    from mmnet.device import autocast
    from mmnet.info import dummy_inputs

    cpu = torch.device("cpu")
    result = {}
    for batch in batches:
        images, tokens = dummy_inputs(config.model, batch)

        def forward(precision):
            with torch.inference_mode(), autocast(cpu, precision):
                model(images, tokens)

        times, _ = in_turns([lambda p=p: forward(p) for p in PRECISIONS], cpu, warmup=1, repeats=repeats)
        result[f"batch_{batch}"] = {
            **{f"{p}_s": statistics.median(t) for p, t in zip(PRECISIONS, times)},
            "bf16_speedup": statistics.median(a / b for a, b in zip(*times)),
        }
    return result


def matmul_gflops(size: int, repeats: int) -> dict:
    from common import matmul_flops

    cpu = torch.device("cpu")
    return {f"{dtype}_matmul_gflops_per_s": matmul_flops(cpu, getattr(torch, name), size=size, repeats=repeats) / 1e9
            for dtype, name in (("fp32", "float32"), ("bf16", "bfloat16"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/demo/train/best", help="a trained checkpoint (skipped when missing)")
    parser.add_argument("--backbones", nargs="*", default=["RN50", "ViT-B-16"], help="random-tower models at 480")
    parser.add_argument("--images", type=int, default=2, help="val images of the synthetic split (about 6.5 expressions each)")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8], help="batches to time; none: compare the masks only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=1024, help="side of the square matrix product timed at each precision")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/bf16_cpu.json)")
    args = parser.parse_args()

    from mmnet import distributed
    from mmnet.build import build_mmnet
    from mmnet.checkpoint import load_pretrained
    from mmnet.config import load_config
    from mmnet.data.refer import ReferIndex
    from mmnet.data.synth import write_synthetic
    from mmnet.device import native_bf16

    cpu = torch.device("cpu")
    ctx = distributed.Context(rank=0, world_size=1, local_rank=0, device=cpu)
    results = {"native_bf16": native_bf16(cpu), "capability": torch.backends.cpu.get_cpu_capability(), **matmul_gflops(args.matmul_size, args.repeats), "models": {}}
    print(f"native bf16: {results['native_bf16']}; {args.matmul_size}^3 matmul: fp32 {results['fp32_matmul_gflops_per_s']:.0f}, bf16 {results['bf16_matmul_gflops_per_s']:.0f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as root:
        write_synthetic(root, name="synthref", seed=0, images=(1, args.images, 1, 1), width=320, height=240, progress=False)
        data = [f"data.root={root}", "data.dataset=synthref", "data.split_by=unc", "data.num_workers=0"]
        models = {}
        if Path(args.checkpoint).exists():  # on its own val split (config.data), as trained
            models[f"demo checkpoint ({args.checkpoint})"] = load_pretrained(args.checkpoint)
        for backbone in args.backbones:
            config = load_config(BASE_CONFIG, [f"model.backbone={backbone}", "model.clip_weights=null", "model.num_queries=24", *data])
            torch.manual_seed(0)
            models[f"{backbone} at {config.model.image_size}, random towers"] = (build_mmnet(config.model, load_clip_weights=False).eval(), config)
        for name, (model, config) in models.items():
            index = ReferIndex.from_config(config.data, progress=False)
            entry = {**compare(model.eval(), config, index, ctx), "forward": timing(model, config, batches=args.batches, repeats=args.repeats)}
            results["models"][name] = entry
            speed = ", ".join(f"{b}: bf16 {r['bf16_speedup']:.2f}x fp32" for b, r in entry["forward"].items())
            print(
                f"{name}: mIoU fp32 {entry['miou_fp32']:.2f} bf16 {entry['miou_bf16']:.2f}; mask IoU between them "
                f"{entry['mask_iou_mean']:.4f} (min {entry['mask_iou_min']:.4f}), cut at the fp32 median "
                f"{entry['median_mask_iou_mean']:.4f} (min {entry['median_mask_iou_min']:.4f}); largest probability difference "
                f"{entry['probability_difference_max']:.4f}; {speed}",
                flush=True,
            )
    write_results(args.out or str(Path(__file__).resolve().parent / "results" / "bf16_cpu.json"), "bf16_cpu", cpu, results)


if __name__ == "__main__":
    main()
