"""Options several commands share."""

from __future__ import annotations

import argparse
import os

DEVICES = ["cpu", "cuda"]


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings to override, e.g. model.num_queries=8")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, help="default: cuda when available")


def add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory, a training run's folder, or a Hub repository id")


def add_synth_workers(parser: argparse.ArgumentParser) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser.add_argument(
        "--workers",
        type=_positive,
        default=min(cores, 8),
        help="processes that draw the synthetic images (default: one per CPU core this process may use, at most 8); "
        "any number writes the same files",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
