"""Training-step speed of MMNet at the paper's settings (480 x 480, N_q = 24), random weights.

A step is what `mmnet train` does per micro-batch and optimizer step: forward, the loss (BCE on y with the default per-query terms),
backward, gradient clipping and an Adam update (fused, as `mmnet train` runs it; `--adam plain`
for the loop over parameters). Samples per second (median of repeated steps
after warm-up) and peak memory, for the full model and for one query without the Multi-Mask
Projector, each configuration in a fresh process.

    python benchmarks/train_step.py                         # CPU, fp32, batch 4
    python benchmarks/train_step.py --device cuda           # GPU, bf16 autocast, batch 8 and 32

Results: benchmarks/results/train_step_<cpu|cuda>.json, and a table on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VARIANTS, arguments, build, in_fresh_process, inputs, median_seconds, peak_memory_mb, write_results  # noqa: E402


def measure(*, backbone: str, variant: str, device: str, batch: int, bf16: bool, warmup: int, repeats: int, threads: int, adam: str) -> dict:
    from mmnet.device import autocast
    from mmnet.config import TrainConfig
    from mmnet.modeling import mmnet_loss

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    model, config = build(backbone, VARIANTS[variant], device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, fused=adam == "fused")
    images, tokens = inputs(config, batch, device)
    images = images.contiguous(memory_format=torch.channels_last)
    side = config.image_size // 4
    masks = (torch.rand(batch, 1, side, side, device=device) > 0.7).float()

    defaults = TrainConfig()
    settings = {k: getattr(defaults, k) for k in ("query_loss", "query_loss_weight", "score_loss_weight")}

    def step():
        with autocast(device, "bf16" if bf16 else "fp32"):
            outputs = model(images, tokens)
        loss = mmnet_loss(outputs, masks, **settings)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    seconds, times = median_seconds(step, device, warmup=warmup, repeats=repeats)
    return {"median_s": seconds, "times_s": times, "samples_per_s": batch / seconds, "peak_memory_mb": peak_memory_mb(device)}


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, name="train_step", batches_help="default: 4 on a CPU, 8 32 on a GPU", warmup=1, repeats=3)
    parser.add_argument("--adam", choices=["fused", "plain"], default="fused", help="fused, as mmnet train runs it, or the plain loop")
    args = parser.parse_args(argv)
    if args.threads:  # here too, for the reference and the machine record
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = args.batches or ([4] if device.type == "cpu" else [8, 32])
    bf16 = device.type == "cuda"

    runs = []
    for backbone in args.backbones:
        for variant in VARIANTS:
            for batch in batches:
                print(f"== {backbone} | {variant} | batch {batch} | {'bf16' if bf16 else 'fp32'}", flush=True)
                result = in_fresh_process(
                    measure, backbone=backbone, variant=variant, device=args.device, batch=batch, bf16=bf16,
                    warmup=args.warmup, repeats=args.repeats, threads=args.threads, adam=args.adam,
                )
                result.update(backbone=backbone, variant=variant, batch=batch, bf16=bf16, adam=args.adam)
                runs.append(result)
                print(f"   {result['median_s'] * 1e3:.0f} ms a step, {result['samples_per_s']:.2f} samples/s, peak {result['peak_memory_mb']:.0f} MiB", flush=True)

    write_results(args.out, "train_step", device, {"runs": runs, "settings": vars(args)})


if __name__ == "__main__":
    main()
