"""``mmnet export``: a trained MMNet as an ONNX graph."""

from __future__ import annotations

import json

from mmnet.commands._options import add_checkpoint


def add_parser(commands) -> None:
    parser = commands.add_parser("export", help="write a trained MMNet as an ONNX graph with a free batch size")
    add_checkpoint(parser)
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="the format to write (onnx)")
    parser.add_argument("--out", required=True, help="the file to write, e.g. mmnet.onnx")
    parser.set_defaults(run=run)


def run(args) -> int:
    from mmnet.checkpoint import load_pretrained
    from mmnet.export import export_onnx, output_names

    model, config = load_pretrained(args.checkpoint)
    path = export_onnx(model, args.out)
    meta = {
        "inputs": {"images": f"B x 3 x {model.image_size} x {model.image_size} float32", "tokens": f"B x {model.context_length} int64"},
        "outputs": output_names(model),
        "threshold": config.eval.threshold,
    }
    if model.no_target_head is not None:
        meta["no_target_threshold"] = config.eval.no_target_threshold
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {json.dumps(meta)}")
    return 0
