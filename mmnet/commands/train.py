"""``mmnet train``: one process, or one per GPU under torchrun."""

from __future__ import annotations

from mmnet.commands._options import add_config, add_device


def add_parser(commands) -> None:
    parser = commands.add_parser("train", help="train MMNet (one process, or one per GPU under torchrun)")
    add_config(parser)
    parser.add_argument("--resume", help="checkpoint directory to continue from, or 'auto' for the newest complete one of <output_dir>/last and best")
    parser.add_argument("--stop-after-epochs", type=int, help="end this run after N epochs with a resumable checkpoint")
    add_device(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from mmnet.config import load_config
    from mmnet.train import train

    config = load_config(args.config, args.overrides)
    result = train(config, resume=args.resume, stop_after_epochs=args.stop_after_epochs, device=args.device)
    return 130 if result.interrupted else 0
