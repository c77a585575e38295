"""Options several commands share."""

from __future__ import annotations

import argparse

DEVICES = ["cpu", "cuda"]


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings to override, e.g. model.num_queries=8")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, help="default: cuda when available")


def add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory, a training run's folder, or a Hub repository id")


def add_synth_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=int, help="processes that draw the synthetic images (default: one per CPU core, at most 8); "
        "any number writes the same files"
    )
