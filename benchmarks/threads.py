"""How many torch threads to use on a small CPU: a forward pass and a training step timed with 1
and with all threads, on a quiet machine and beside one busy process (a pure-Python loop that
holds a core, as a data-loader worker or another job would).

    python benchmarks/threads.py                  # ViT-B-16 forward at 480, the demo's training step
    python benchmarks/threads.py --repeats 5

Each condition runs in a fresh process. Results: benchmarks/results/threads_cpu.json and a table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, build, in_fresh_process, inputs, median_seconds, write_results  # noqa: E402


def _spin() -> None:
    while True:
        pass


def measure(*, workload: str, threads: int, repeats: int) -> float:
    """Median seconds of one forward (``vit-b-16``) or one training step (``demo``)."""
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    if workload == "vit-b-16 forward, batch 1":
        model, config = build("ViT-B-16", ["model.num_queries=24"], cpu)
        model.eval()
        images, tokens = inputs(config, 1, cpu)

        def step():
            with torch.inference_mode():
                model(images, tokens)
    else:
        from mmnet.build import build_mmnet
        from mmnet.config import load_config
        from mmnet.engine import loss_function

        config = load_config(REPO / "configs" / "demo.yaml")
        torch.manual_seed(0)
        model = build_mmnet(config.model, load_clip_weights=False).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        images, tokens = inputs(config.model, config.train.micro_batch_size or config.train.batch_size, cpu)
        masks = (torch.rand(images.shape[0], 1, config.model.image_size, config.model.image_size) > 0.7).float()
        loss_fn = loss_function(config, has_estimator=model.estimator is not None)

        def step():
            loss_fn(model(images, tokens), masks)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
    seconds, _ = median_seconds(step, cpu, warmup=1, repeats=repeats)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="JSON file (default benchmarks/results/threads_cpu.json)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for workload in ("vit-b-16 forward, batch 1", "demo training step"):
        for busy in (False, True):
            spinner = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) if busy else None
            if spinner is not None:
                spinner.start()
            try:
                for threads in sorted({1, cores}):
                    seconds = in_fresh_process(measure, workload=workload, threads=threads, repeats=args.repeats)
                    rows.append({"workload": workload, "busy": busy, "threads": threads, "median_s": seconds})
                    print(f"{workload} | {'busy' if busy else 'quiet'} | {threads} thread(s): {seconds:.3f} s", flush=True)
            finally:
                if spinner is not None:
                    spinner.terminate()
    write_results(args.out, "threads", torch.device("cpu"), {"settings": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
