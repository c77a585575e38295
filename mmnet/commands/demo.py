"""``mmnet demo``: synthesise data, train a small MMNet on CPU, evaluate, and write a report."""

from __future__ import annotations

from pathlib import Path

from mmnet.commands._options import add_synth_workers


def add_parser(commands) -> None:
    parser = commands.add_parser("demo", help="synthesise data, train a small MMNet on CPU, evaluate, write a report")
    parser.add_argument(
        "--generalized",
        action="store_true",
        help="the generalized demo: expressions that name several shapes or none, a model with the no-target head, "
        "the GRES metrics (defaults: configs/demo_generalized.yaml, runs/demo_generalized, 4000 training images)",
    )
    parser.add_argument("--config", help="training config (default configs/demo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings to override")
    parser.add_argument("--out", help="folder for the data, the run, report.md and predictions.png (default runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    parser.add_argument(
        "--images", type=int, nargs=4, metavar=("TRAIN", "VAL", "TESTA", "TESTB"), help="images per split (default 6000 100 100 100)"
    )
    parser.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"), help="synthetic image size")
    parser.add_argument("--examples", type=int, default=6, help="examples drawn in predictions.png")
    add_synth_workers(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from mmnet.demo import demo

    if args.generalized:
        defaults = {"config": "configs/demo_generalized.yaml", "out": "runs/demo_generalized", "images": [4000, 100, 100, 100]}
    else:
        defaults = {"config": "configs/demo.yaml", "out": "runs/demo", "images": [6000, 100, 100, 100]}
    chosen = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in defaults.items()}
    report = demo(
        chosen["out"],
        config_path=chosen["config"],
        overrides=tuple(args.overrides),
        seed=args.seed,
        images=tuple(chosen["images"]),
        size=tuple(args.size),
        examples=args.examples,
        generalized=args.generalized,
        workers=args.workers,
    )
    print(report)
    print(f"written: {Path(chosen['out']) / 'report.md'}, {Path(chosen['out']) / 'predictions.png'}")
    return 0
