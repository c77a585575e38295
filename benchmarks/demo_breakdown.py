"""Where a model trained on the synthetic set fails: mIoU by the kind of expression and the size of
the shape it names.

Evaluates a checkpoint on a split of its own synthetic dataset and groups the expressions:
- by form: attributes only ("the big red circle"), a position ("the lowest square") or a
  relation to another shape ("the square left of the blue square"), as mmnet.data.scenes writes them;
- by the referred shape's size: small or big (the longer side of its mask's bounding box against
  the gap between the two sizes' ranges, scenes.RADIUS_SHARE).

    python benchmarks/demo_breakdown.py                                   # runs/demo/train/best, val
    python benchmarks/demo_breakdown.py --checkpoint runs/demo_long/best --split testA

Results: benchmarks/results/demo_breakdown.json (one entry per checkpoint and split), and a table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import numpy as np
import torch

from mmnet.data.scenes import POSITION_PHRASES, RADIUS_SHARE, RELATION_PHRASES

REPO = Path(__file__).resolve().parent.parent
RELATION = re.compile("|".join(rf"\b{phrase}\b" for phrase in RELATION_PHRASES.values()))
# The words of the position phrases ("leftmost", "lowest", "left", ...), less the glue words.
POSITION_WORDS = {w for phrases in POSITION_PHRASES.values() for p in phrases for w in p.replace("{np}", "").split()} - {"the", "on", "at"}


def form_of(sentence: str) -> str:
    if RELATION.search(sentence):
        return "relation"
    return "position" if POSITION_WORDS & set(sentence.split()) else "attributes"


def size_of(mask: np.ndarray, short_side: int) -> str:
    """small or big, from the longer side of the mask's bounding box."""
    rows, cols = np.nonzero(mask)
    extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    # The longer side of a shape's bounding box is 1.5 r (a square) to 2 r (a circle, a diamond),
    # r its radius (scenes.Shape.polygon): the two sizes' spans do not meet; cut between them.
    cut = (2 * RADIUS_SHARE["small"][1] + 1.5 * RADIUS_SHARE["big"][0]) / 2 * short_side
    return "small" if extent < cut else "big"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/demo/train/best")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "demo_breakdown.json"))
    args = parser.parse_args()

    from mmnet import distributed
    from mmnet.checkpoint import load_pretrained
    from mmnet.data.refer import ReferIndex
    from mmnet.evaluate import evaluate, split_loader

    model, config = load_pretrained(args.checkpoint)
    ctx = distributed.Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    index = ReferIndex.from_config(config.data, progress=False)
    _, records = evaluate(
        model=model, loader=split_loader(index, args.split, config, ctx), ctx=ctx, threshold=config.eval.threshold,
        precision="fp32", batch_size=config.eval.batch_size,
    )
    sentences = {s.sent_id: s.text for s in index.sentences(args.split)}
    groups: dict[str, list[float]] = {}
    for record in records:
        image = index.image(record["image_id"])
        form = form_of(sentences[record["sent_id"]])
        size = size_of(index.mask(record["ref_id"]), min(image.width, image.height))
        for key in ("all", form, size, f"{form}, {size}"):
            groups.setdefault(key, []).append(record["iou"])
    table = {
        key: {"expressions": len(v), "mIoU": 100 * statistics.fmean(v), "Pr@0.5": 100 * statistics.fmean(i > 0.5 for i in v)}
        for key, v in groups.items()
    }
    print(f"{args.checkpoint}, {args.split}")
    print(f"{'expressions':24s} {'count':>6s} {'mIoU':>6s} {'Pr@0.5':>7s}")
    for key in sorted(table, key=lambda k: (k != "all", k)):
        row = table[key]
        print(f"{key:24s} {row['expressions']:6d} {row['mIoU']:6.1f} {row['Pr@0.5']:7.1f}")
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.exists() else {}
    results[f"{args.checkpoint} {args.split}"] = {"command": f"python benchmarks/demo_breakdown.py --checkpoint {args.checkpoint} --split {args.split}", "groups": table}
    path.write_text(json.dumps(results, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
