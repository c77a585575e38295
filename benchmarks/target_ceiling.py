"""The best mIoU a model can reach when it reproduces its training target exactly.

The loss compares the model's 4H3 x 4W3 mask with the ground truth resized to that size
(``mmnet.modeling.target_for``); evaluation reads the mask back at the image's own size. This
takes each expression of a split, resizes its letterboxed ground truth to the mask size by
``nearest`` or by ``area`` (each cell the share of it the object covers), and scores that map as
a prediction with the evaluation's own code and threshold: the ceiling that the target's
resolution sets, with no model at all.

    python benchmarks/target_ceiling.py            # the demo's data and model size

Results: benchmarks/results/target_ceiling.json, and a line per mode on stdout.
"""

from __future__ import annotations

import argparse
import sys
import json
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def ceiling(dataset, *, side: int, mode: str, threshold: float) -> dict:
    from mmnet.data.transforms import Letterbox, to_original
    from mmnet.metrics import intersection_union, summarize
    from mmnet.modeling import target_for

    intersections, unions = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        truth, g = item["mask"], item["geometry"]
        canvas = Letterbox(g.size).mask(truth, g)  # as training letterboxes it
        target = target_for(torch.zeros(1, 1, side, side), canvas, resize=mode)[0, 0]
        intersection, union = intersection_union(to_original(target, g) > threshold, truth.bool())
        intersections.append(int(intersection))
        unions.append(int(union))
    return summarize(intersections, unions)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--images", type=int, default=100, help="synthetic val images, as the demo writes them")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "target_ceiling.json"))
    args = parser.parse_args(argv)
    from mmnet.config import load_config
    from mmnet.data.datasets import ReferEvalDataset
    from mmnet.data.refer import ReferIndex
    from mmnet.data.synth import write_synthetic

    config = load_config(args.config)
    side = 4 * config.model.image_size // 16
    results = {}
    with tempfile.TemporaryDirectory(prefix="mmnet_ceiling_") as root:
        write_synthetic(root, name="synthref", seed=0, images=[1, args.images, 1, 1], progress=False)
        config.data.root, config.data.dataset = root, "synthref"
        index = ReferIndex.from_config(config.data, progress=False)
        dataset = ReferEvalDataset(index, split="val", image_size=config.model.image_size, context_length=config.model.context_length)
        for mode in ("nearest", "area"):
            results[mode] = ceiling(dataset, side=side, mode=mode, threshold=config.eval.threshold)
            print(f"{mode:>8}: mIoU {results[mode]['mIoU']:.2f}, oIoU {results[mode]['oIoU']:.2f}, Pr@0.9 {results[mode]['Pr@0.9']:.2f} over {results[mode]['count']} expressions ({side} x {side} target)")
    command = ["python", "benchmarks/target_ceiling.py", *(sys.argv[1:] if argv is None else argv)]
    Path(args.json).write_text(json.dumps({"command": " ".join(command), "side": side, "results": results}, indent=2))


if __name__ == "__main__":
    main()
