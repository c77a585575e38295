"""The ``mmnet`` command: one sub-command per task, each importing its work only when run."""

from __future__ import annotations

import argparse
import importlib
import sys

from mmnet.errors import MMNetError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings to override, e.g. model.num_queries=8")


def _run(module: str, function: str):
    """The handler of a sub-command: imports ``module`` only when the sub-command runs."""

    def handler(args) -> int:
        return getattr(importlib.import_module(module), function)(args)

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmnet", description="MMNet: Multi-Mask Network for Referring Image Segmentation")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="parameters per part and GFLOPs of one forward pass")
    _add_config_args(info)
    info.add_argument("--json", help="also write the figures to this JSON file")
    info.set_defaults(func=_run("mmnet.info", "run_info"))

    train = commands.add_parser("train", help="train MMNet (one process, or one per GPU under torchrun)")
    _add_config_args(train)
    train.add_argument("--resume", help="checkpoint directory to continue from, or 'auto' for <output_dir>/last")
    train.add_argument("--stop-after-epochs", type=int, help="end this run after N epochs with a resumable checkpoint")
    train.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    train.set_defaults(func=_run("mmnet.train", "run_train"))

    evaluate = commands.add_parser("eval", help="mIoU, oIoU and Pr@0.5-0.9 of a checkpoint on dataset splits")
    _add_config_args(evaluate)
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. runs/x/best)")
    evaluate.add_argument("--split", action="append", required=True, help="split name; repeat for several")
    evaluate.add_argument("--vis", help="save a picture per expression (image, truth, prediction, query masks) here")
    evaluate.add_argument("--vis-limit", type=int, help="draw at most this many expressions per split (and process)")
    evaluate.add_argument("--out", help="metrics JSON (default eval_<checkpoint name>.json beside the checkpoint)")
    evaluate.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    evaluate.set_defaults(func=_run("mmnet.evaluate", "run_eval"))

    predict = commands.add_parser("predict", help="segment what expressions refer to in an image of your own")
    predict.add_argument("--checkpoint", required=True, help="checkpoint directory, a training run's folder, or a Hub repository id")
    predict.add_argument("--image", required=True, help="the image (JPEG, PNG, ...)")
    predict.add_argument("--text", action="append", required=True, help="an expression; repeat for several about the same image")
    predict.add_argument("--out", default="predictions", help="folder for a mask PNG and an overlay per expression (default predictions/)")
    predict.add_argument("--threshold", type=float, help="probability above which a pixel is the object (default: the checkpoint's eval.threshold)")
    predict.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    predict.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="torch.compile the model first; the first prediction waits for the compiler (default: the checkpoint's eval.compile)",
    )
    predict.set_defaults(func=_run("mmnet.predictor", "run_predict"))

    export = commands.add_parser("export", help="write a trained MMNet as an ONNX graph with a free batch size")
    export.add_argument("--checkpoint", required=True, help="checkpoint directory, a training run's folder, or a Hub repository id")
    export.add_argument("--format", default="onnx", choices=["onnx"], help="the format to write (onnx)")
    export.add_argument("--out", required=True, help="the file to write, e.g. mmnet.onnx")
    export.set_defaults(func=_run("mmnet.export", "run_export"))

    serve = commands.add_parser("serve", help="a web page: upload an image, type an expression, see the masks")
    serve.add_argument("--checkpoint", required=True, help="checkpoint directory, a training run's folder, or a Hub repository id")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    serve.set_defaults(func=_run("mmnet.serve", "run_serve"))

    demo = commands.add_parser("demo", help="synthesise data, train a small MMNet on CPU, evaluate, write a report")
    demo.add_argument("--config", default="configs/demo.yaml", help="training config (default configs/demo.yaml)")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="settings to override")
    demo.add_argument("--out", default="runs/demo", help="folder for the data, the run, report.md and predictions.png")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    demo.add_argument("--images", type=int, nargs=4, default=[6000, 100, 100, 100], metavar=("TRAIN", "VAL", "TESTA", "TESTB"))
    demo.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"), help="synthetic image size")
    demo.add_argument("--examples", type=int, default=6, help="examples drawn in predictions.png")
    demo.set_defaults(func=_run("mmnet.demo", "run_demo"))

    data = commands.add_parser("data", help="build or check a dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    synth = data_commands.add_parser("synth", help="write a synthetic referring dataset in the refer layout")
    synth.add_argument("--out", required=True, help="root folder to write (the data.root of a config)")
    synth.add_argument("--name", default="synthref", help="dataset folder name under --out")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--images", type=int, nargs=4, default=[400, 50, 50, 50], metavar=("TRAIN", "VAL", "TESTA", "TESTB"), help="images per split")
    synth.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"), help="image width and height in pixels")
    synth.set_defaults(func=_run("mmnet.data.synth", "run_synth"))

    check = data_commands.add_parser("check", help="check a dataset in the refer layout and count it")
    check.add_argument("--root", required=True)
    check.add_argument("--dataset", required=True)
    check.add_argument("--split-by", required=True)
    check.add_argument("--image-dir", help="images folder (default <root>/images/train2014)")
    check.add_argument("--workers", type=int, default=0, help="threads decoding images (default: all cores)")
    check.add_argument("--limit", type=int, default=20, help="problems listed per kind")
    check.add_argument("--context-length", type=int, default=17, help="count the expressions cut at this model.context_length")
    check.set_defaults(func=_run("mmnet.data.check", "run_check"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MMNetError as err:
        print(f"mmnet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
