"""What the training sweeps (ablations.py, generalized.py) share: runs trained in a pool of
processes, each appended to a runs file as it ends, and the runs of a file made with the same
settings read back, so that a stopped sweep continues where it stopped."""

from __future__ import annotations

import json
import multiprocessing
import platform
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Optional

import torch


def machine(*, jobs: int, threads: int) -> dict:
    """Where a sweep's runs train: ``jobs`` runs at once of ``threads`` torch threads each."""
    return {"processor": platform.machine(), "jobs": jobs, "threads": threads, "torch": torch.__version__}


def read_runs(path: Path, settings: dict) -> dict[tuple[str, int], dict]:
    """The runs in ``path`` made with ``settings``, by (name, seed)."""
    return runs_by_settings(path).get(json.dumps(settings, sort_keys=True), {})


def runs_by_settings(path: Path) -> dict[str, dict[tuple[str, int], dict]]:
    """Every run in ``path``, grouped by its settings (as sorted JSON) in the order each settings
    first appears, then by (name, seed); a later line for the same run replaces an earlier one."""
    groups: dict[str, dict[tuple[str, int], dict]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            result = json.loads(line)
            groups.setdefault(json.dumps(result.get("settings"), sort_keys=True), {})[(result["name"], result["seed"])] = result
    return groups


def train_in_processes(
    function: Callable[..., dict],
    tasks: list[dict],
    *,
    jobs: int,
    runs_file: Path,
    settings: dict,
    announce: Callable[[dict], str],
    where: dict,
) -> list[dict]:
    """Runs ``function(**task)`` for every task in ``jobs`` fresh processes; appends each result,
    with ``settings`` and ``where`` (``machine``), to ``runs_file`` as it ends and prints
    ``announce(result)``."""
    results = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in as_completed([pool.submit(function, **task) for task in tasks]):
            result = {**future.result(), "settings": settings, "machine": where}
            runs_file.parent.mkdir(parents=True, exist_ok=True)
            with runs_file.open("a") as f:
                f.write(json.dumps(result) + "\n")
            results.append(result)
            print(announce(result), flush=True)
    return results


def run_folder(out: str | Path, name: str, seed: int) -> Path:
    """``out/<row name as a word>_seed<seed>``: a run's own folder."""
    return Path(out) / ("".join(c for c in name.replace(" ", "_") if c.isalnum() or c == "_") + f"_seed{seed}")


def train_fresh(config: str, run_dir: Path, overrides: list[str], *, threads: int, splits: Optional[tuple[str, ...]] = None):
    """Trains ``config`` with ``overrides`` from scratch on the CPU into ``run_dir`` (emptied first:
    the sweep's own folder) and evaluates its best checkpoint on ``splits`` (default val, testA,
    testB); returns the ``mmnet.experiment.Experiment``."""
    torch.set_num_threads(threads)
    from mmnet import experiment
    from mmnet.config import load_config

    shutil.rmtree(run_dir, ignore_errors=True)
    settings = [f"train.output_dir={run_dir}", "train.tensorboard=false", *overrides]
    return experiment.train_and_evaluate(load_config(config, settings), device="cpu", splits=splits or experiment.EVAL_SPLITS)
