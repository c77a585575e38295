"""``mmnet demo``: synthesise data, train a small MMNet on CPU, evaluate, and write a report."""

from __future__ import annotations

from pathlib import Path


def add_parser(commands) -> None:
    parser = commands.add_parser("demo", help="synthesise data, train a small MMNet on CPU, evaluate, write a report")
    parser.add_argument("--config", default="configs/demo.yaml", help="training config (default configs/demo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings to override")
    parser.add_argument("--out", default="runs/demo", help="folder for the data, the run, report.md and predictions.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    parser.add_argument("--images", type=int, nargs=4, default=[6000, 100, 100, 100], metavar=("TRAIN", "VAL", "TESTA", "TESTB"))
    parser.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"), help="synthetic image size")
    parser.add_argument("--examples", type=int, default=6, help="examples drawn in predictions.png")
    parser.set_defaults(run=run)


def run(args) -> int:
    from mmnet.demo import demo

    report = demo(
        args.out,
        config_path=args.config,
        overrides=tuple(args.overrides),
        seed=args.seed,
        images=tuple(args.images),
        size=tuple(args.size),
        examples=args.examples,
    )
    print(report)
    print(f"written: {Path(args.out) / 'report.md'}, {Path(args.out) / 'predictions.png'}")
    return 0
