"""``mmnet info``: parameters per part and GFLOPs of one forward pass."""

from __future__ import annotations

import json
from pathlib import Path

from mmnet.commands._options import add_config


def add_parser(commands) -> None:
    parser = commands.add_parser("info", help="parameters per part and GFLOPs of one forward pass")
    add_config(parser)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.set_defaults(run=run)


def run(args) -> int:
    from mmnet.build import build_mmnet
    from mmnet.config import load_config
    from mmnet.info import format_figures, model_figures

    config = load_config(args.config, args.overrides).model
    figures = model_figures(build_mmnet(config, load_clip_weights=False), config)
    print(format_figures(figures))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0
