"""How much faster evaluation is when each image is encoded once for all its expressions.

Writes a synthetic val split (its images hold 3 to 9 expressions; the default 4 images hold
6.75 each, near RefCOCO val's 7.2), builds
MMNet with random weights at the paper's settings (ViT-B-16, 480 x 480, N_q = 24), and runs
``mmnet.evaluate.evaluate`` over the split both ways, taking turns: one image per expression
(the image encoded once per expression) and one image per group of expressions. Both give the
same records, which the script checks; it reports the median seconds of each and the median
per-round ratio.

    python benchmarks/eval_by_image.py                     # CPU, 4 images, 3 rounds
    python benchmarks/eval_by_image.py --images 20 --repeats 5 --device cuda

Results: benchmarks/results/eval_by_image_<device>.json, and a summary line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE_CONFIG, in_turns, write_results  # noqa: E402


def measure(*, backbone: str, images: int, repeats: int, batch_size: int, device: torch.device) -> dict:
    from mmnet import distributed
    from mmnet.build import build_mmnet
    from mmnet.config import load_config
    from mmnet.data.refer import ReferIndex
    from mmnet.data.synth import write_synthetic
    from mmnet.evaluate import evaluate, split_loader

    with tempfile.TemporaryDirectory() as root:
        write_synthetic(root, name="synthref", seed=0, images=(1, images, 1, 1), width=320, height=240, progress=False)
        config = load_config(
            BASE_CONFIG,
            [f"model.backbone={backbone}", "model.clip_weights=null", "model.num_queries=24", f"data.root={root}",
             "data.dataset=synthref", "data.split_by=unc", "data.num_workers=0", f"eval.batch_size={batch_size}", "eval.precision=fp32"],
        )
        torch.manual_seed(0)
        model = build_mmnet(config.model, load_clip_weights=False).to(device).eval()
        index = ReferIndex.from_config(config.data, progress=False)
        ctx = distributed.Context(rank=0, world_size=1, local_rank=0, device=device)
        per_image = Counter(index.ref(s.ref_id).image_id for s in index.sentences("val"))
        records = {}

        def run(by_image: bool):
            loader = split_loader(index, "val", config, ctx, by_image=by_image)
            _, records[by_image] = evaluate(model=model, loader=loader, ctx=ctx, threshold=0.35, precision="fp32", desc=f"by image {by_image}")

        (per_expression, grouped), _ = in_turns([lambda: run(False), lambda: run(True)], device, warmup=1, repeats=repeats)
        if records[True] != records[False]:
            raise RuntimeError("the two ways gave different records")
    ratios = [a / b for a, b in zip(per_expression, grouped)]
    return {
        "backbone": backbone,
        "image_size": config.model.image_size,
        "num_queries": config.model.num_queries,
        "eval_batch_size": batch_size,
        "images": len(per_image),
        "expressions": sum(per_image.values()),
        "expressions_per_image": sum(per_image.values()) / len(per_image),
        "one_image_per_expression_s": statistics.median(per_expression),
        "each_image_once_s": statistics.median(grouped),
        "times_s": {"one image per expression": per_expression, "each image once": grouped},
        "median_speedup": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--images", type=int, default=4, help="val images of the synthetic split")
    parser.add_argument("--batch-size", type=int, default=16, help="eval.batch_size: expressions a batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (default: torch's choice)")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/eval_by_image_<device>.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = measure(backbone=args.backbone, images=args.images, repeats=args.repeats, batch_size=args.batch_size, device=device)
    write_results(args.out, "eval_by_image", device, {"settings": vars(args), "result": result})
    print(
        f"{result['backbone']} at {result['image_size']}, {result['expressions']} expressions on {result['images']} images "
        f"({result['expressions_per_image']:.2f} each): one image per expression {result['one_image_per_expression_s']:.1f} s, "
        f"each image once {result['each_image_once_s']:.1f} s; median speed-up {result['median_speedup']:.2f}x"
    )


if __name__ == "__main__":
    main()
