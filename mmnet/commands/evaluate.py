"""``mmnet eval``: the paper's metrics of a checkpoint on dataset splits, printed and written as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmnet.commands._options import add_config, add_device


def add_parser(commands) -> None:
    parser = commands.add_parser("eval", help="mIoU, oIoU and Pr@0.5-0.9 of a checkpoint on dataset splits (and gIoU, cIoU, N-acc, T-acc on gRefCOCO)")
    add_config(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. runs/x/best)")
    parser.add_argument("--split", action="append", required=True, help="split name; repeat for several")
    parser.add_argument("--vis", help="save a picture per expression (image, truth, prediction, query masks) here")
    parser.add_argument("--vis-limit", type=int, help="draw at most this many expressions per split (and process)")
    parser.add_argument("--out", help="metrics JSON (default eval_<checkpoint name>.json beside the checkpoint)")
    add_device(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from mmnet import diagnostics
    from mmnet.checkpoint import find_checkpoint
    from mmnet.evaluate import evaluate_checkpoint
    from mmnet.metrics import format_table

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
