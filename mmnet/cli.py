"""The ``mmnet`` command: one sub-command per task, each adapter in ``mmnet.commands``."""

from __future__ import annotations

import argparse
import sys

from mmnet.commands import data, demo, evaluate, export, info, predict, serve, train
from mmnet.errors import MMNetError

COMMANDS = (info, train, evaluate, predict, export, serve, demo, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmnet", description="MMNet: Multi-Mask Network for Referring Image Segmentation")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except MMNetError as err:
        print(f"mmnet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
