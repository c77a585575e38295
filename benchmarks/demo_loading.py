"""Where the demo's training reads its data: in the training process, or in data-loader workers.

Trains the demo's model (configs/demo.yaml, all threads) for one epoch on a small synthetic set,
once for each ``data.num_workers``, each in a fresh process, and reports the median samples per
second of the logged training windows and the validation mIoU. The samples drawn do not depend on
the workers, so the runs must end with the same weights and the same mIoU; the script records
whether the mIoU agrees (tests/test_training.py checks the weights).

    python benchmarks/demo_loading.py                     # 1,000 images, num_workers 0 and 1
    python benchmarks/demo_loading.py --workers 0 1 2

Results: benchmarks/results/demo_loading_cpu.json, and a line per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, in_fresh_process, write_results  # noqa: E402


def train_once(*, root: str, output: str, workers: int) -> dict:
    from mmnet.config import load_config
    from mmnet.train import train

    config = load_config(
        REPO / "configs" / "demo.yaml",
        [f"data.root={root}", f"data.num_workers={workers}", "train.epochs=1", f"train.output_dir={output}", "train.tensorboard=false"],
    )
    start = time.perf_counter()
    train(config, device="cpu")
    seconds = time.perf_counter() - start  # the whole call: setup, the epoch, validation, checkpoints
    records = [json.loads(line) for line in (Path(output) / "log.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    val = [r["val"]["mIoU"] for r in records if "val" in r]
    return {"samples_per_s": statistics.median(rates), "train_s": seconds, "val_miou": val[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="data.num_workers values to compare")
    parser.add_argument("--images", type=int, default=1000, help="training images of the synthetic set")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/demo_loading_cpu.json)")
    args = parser.parse_args()

    from mmnet.data.synth import write_synthetic

    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic(folder, name="synthref", seed=0, images=(args.images, 100, 10, 10), width=320, height=240, progress=False)
        # The first run also builds the dataset's index cache (a few seconds), which the others reuse.
        for workers in args.workers:
            result = in_fresh_process(train_once, root=folder, output=f"{folder}/run_{workers}", workers=workers)
            runs[str(workers)] = result
            print(f"num_workers {workers}: {result['samples_per_s']:.1f} samples/s, {result['train_s']:.0f} s, val mIoU {result['val_miou']:.2f}", flush=True)
    same = len({round(r["val_miou"], 6) for r in runs.values()}) == 1
    print("the runs end with the same val mIoU" if same else "the runs differ in val mIoU: the samples depend on the workers")
    base = runs[str(args.workers[0])]["samples_per_s"]
    for workers, result in runs.items():
        result["speed_vs_first"] = result["samples_per_s"] / base
    write_results(args.out, "demo_loading", torch.device("cpu"), {"images": args.images, "threads": torch.get_num_threads(), "runs": runs, "same_val_miou": same})


if __name__ == "__main__":
    main()
