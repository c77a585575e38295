"""Forward-pass speed of MMNet at the paper's settings (480 x 480, N_q = 24), random weights.

For each backbone: latency at batch 1 and throughput at batch 8 (and 32 on a GPU), for the
full model and for the same backbone with one query and no Multi-Mask Projector, so that the
cost of the multi-mask machinery is a ratio measured in one run. A large fp32 matrix product
timed in the same run gives the FLOP/s the machine reaches on easy work; the model's FLOPs per
image (as `mmnet info` counts them) over its time give the FLOP/s it achieves. Medians of
repeated runs after warm-up; each configuration in a fresh process, so its peak memory is its own.

    python benchmarks/inference.py                          # CPU: fp32
    python benchmarks/inference.py --device cuda            # GPU: fp32, bf16, bf16 + torch.compile
    python benchmarks/inference.py --backbones ViT-B-16 --repeats 3 --batches 1

Results: benchmarks/results/inference_<cpu|cuda>.json, and a table on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, arguments, VARIANTS, build, in_fresh_process, inputs, machine, matmul_flops, median_seconds, peak_memory_mb  # noqa: E402


def measure(*, backbone: str, variant: str, device: str, batches: list[int], mode: str, channels_last: bool, warmup: int, repeats: int, threads: int) -> dict:
    """One configuration, in its own process: median seconds per forward at each batch size."""
    from mmnet.info import model_figures

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    model, config = build(backbone, VARIANTS[variant], device, channels_last=channels_last)
    gflops = model_figures(model, config)["total"]["gflops"]  # per image, fp32 graph
    model.eval()
    forward = model
    if mode.endswith("compile"):
        forward = torch.compile(model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode.startswith("bf16"))
    rows = {}
    for batch in batches:
        images, tokens = inputs(config, batch, device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)

        def step():
            with torch.inference_mode(), autocast:
                return forward(images, tokens)["logits"]

        seconds, times = median_seconds(step, device, warmup=warmup, repeats=repeats)
        rows[str(batch)] = {
            "median_s": seconds,
            "times_s": times,
            "images_per_s": batch / seconds,
            "achieved_gflops_per_s": gflops * batch / seconds,
        }
    return {"gflops_per_image": gflops, "batches": rows, "peak_memory_mb": peak_memory_mb(device)}


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, name="inference", batches_help="default: 1 8 on a CPU, 1 8 32 on a GPU", warmup=2, repeats=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batches = args.batches or ([1, 8] if device.type == "cpu" else [1, 8, 32])
    modes = ["fp32"] if device.type == "cpu" else ["fp32", "bf16", "bf16+compile"]

    # The reference first, in this process, before any model warms the caches.
    reference = {"fp32_matmul_gflops_per_s": matmul_flops(device) / 1e9}
    if device.type == "cuda":
        reference["bf16_matmul_gflops_per_s"] = matmul_flops(device, torch.bfloat16, size=8192) / 1e9
    print(f"4096 x 4096 fp32 matrix product: {reference['fp32_matmul_gflops_per_s']:.1f} GFLOP/s", flush=True)

    runs = []
    for backbone in args.backbones:
        plans = [(variant, mode, True) for mode in modes for variant in VARIANTS]
        if backbone.startswith("RN"):
            plans.append(("full (Nq 24)", "fp32", False))  # what channels_last buys a ResNet
        for variant, mode, channels_last in plans:
            name = f"{backbone} | {variant} | {mode}{'' if channels_last else ' | contiguous'}"
            print(f"== {name}", flush=True)
            result = in_fresh_process(
                measure, backbone=backbone, variant=variant, device=args.device, batches=batches, mode=mode,
                channels_last=channels_last, warmup=args.warmup, repeats=args.repeats, threads=args.threads,
            )
            result.update(backbone=backbone, variant=variant, mode=mode, channels_last=channels_last)
            runs.append(result)
            cells = ", ".join(f"batch {b}: {r['median_s'] * 1e3:.0f} ms ({r['images_per_s']:.2f} img/s, {r['achieved_gflops_per_s']:.0f} GFLOP/s)" for b, r in result["batches"].items())
            print(f"   {result['gflops_per_image']:.1f} GFLOPs/image; {cells}; peak {result['peak_memory_mb']:.0f} MB", flush=True)

    summary = {}
    for backbone in args.backbones:
        for mode in modes:
            pick = {r["variant"]: r for r in runs if r["backbone"] == backbone and r["mode"] == mode and r["channels_last"]}
            full, bare = pick["full (Nq 24)"], pick["Nq 1, w/o MMP"]
            summary[f"{backbone} {mode}"] = {
                "multi_mask_latency_ratio_batch_1": full["batches"]["1"]["median_s"] / bare["batches"]["1"]["median_s"],
                "fraction_of_matmul_flops_batch_8": (
                    full["batches"]["8"]["achieved_gflops_per_s"] / reference["fp32_matmul_gflops_per_s"] if mode == "fp32" and "8" in full["batches"] else None
                ),
            }
    for key, value in summary.items():
        ratio, fraction = value["multi_mask_latency_ratio_batch_1"], value["fraction_of_matmul_flops_batch_8"]
        print(f"{key}: Nq 24 / (Nq 1 w/o MMP) latency {ratio:.3f}" + (f"; batch 8 at {100 * fraction:.0f}% of the matrix product's FLOP/s" if fraction else ""))

    out = Path(args.out or REPO / "benchmarks" / "results" / f"inference_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(device), "reference": reference, "summary": summary, "runs": runs, "settings": vars(args)}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
