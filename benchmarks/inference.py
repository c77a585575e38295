"""Forward-pass speed of MMNet at the paper's settings (480 x 480, N_q = 24), random weights.

For each backbone: latency at batch 1 and throughput at batch 8 (and 32 on a GPU), for the
full model and for the same backbone with one query and no Multi-Mask Projector, so that the
cost of the multi-mask machinery is a ratio; and the full model without channels_last (or, in
the compiled modes, not compiled), so that what that buys is a ratio too. The models compared
are built in one process and timed in turns (A B C, C B A, ...), so that a slow spell of the
machine falls on all of them. A large matrix product timed in the same run gives the FLOP/s the
machine reaches on easy work; the model's FLOPs per image (as `mmnet info` counts them) over its
time give the FLOP/s it achieves. Peak memory comes from a fresh process per configuration running one forward at
each batch size.

    python benchmarks/inference.py                          # CPU: fp32
    python benchmarks/inference.py --modes fp32-vs-bf16 --out benchmarks/results/inference_cpu_bf16.json
    python benchmarks/inference.py --device cuda            # GPU: fp32, bf16, bf16 + torch.compile
    python benchmarks/inference.py --backbones ViT-B-16 --repeats 3 --batches 1
    python benchmarks/inference.py --backbones RN50 --modes fp32+compile --out benchmarks/results/inference_cpu_compile.json
    python benchmarks/inference.py --resummarize benchmarks/results/inference_cpu.json

The ``fp32-vs-bf16`` mode times, in turns in one process, the full model in fp32 and in bf16
autocast, bf16 without channels_last, and bf16 compiled (``MMNet.compile``, inductor on a CPU):
the bf16 speed-up, what channels_last and compiling add to it, the compiled model's first call
(the compiler's cost), and the share of a bf16 matrix product's FLOP/s timed in the same run.

Results: benchmarks/results/inference_<cpu|cuda>.json, and a table on stdout.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VARIANTS, arguments, build, in_fresh_process, in_turns, inputs, matmul_flops, peak_memory_mb, sync, write_results  # noqa: E402

FULL, BARE = VARIANTS  # "full (Nq 24)", "Nq 1, w/o MMP"

# Dense bf16 tensor-core peaks from the makers' datasheets (TFLOP/s, no sparsity), by a piece of
# the name torch reports; --peak-bf16-tflops gives it for any other GPU.
# The first key found in the name wins, so the NVL cards come before their SXM siblings.
DATASHEET_BF16_TFLOPS = {
    "H200 NVL": 835.5, "H200": 989.4, "H100 NVL": 835.5, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0,
}


def datasheet_bf16_tflops(gpu: str) -> float | None:
    return next((peak for key, peak in DATASHEET_BF16_TFLOPS.items() if key in gpu), None)


class Plan(NamedTuple):
    """One model to time: which variant, in which memory layout, compiled or not, and in which
    precision where the mode times both (None: the mode's own)."""

    variant: str
    channels_last: bool = True
    compiled: bool = False
    precision: str | None = None

    @property
    def name(self) -> str:
        return (
            self.variant
            + ("" if self.channels_last else ", contiguous")
            + (", compiled" if self.compiled else "")
            + (f", {self.precision}" if self.precision else "")
        )


SIDE_BY_SIDE = "fp32-vs-bf16"


def plans_for(mode: str) -> list[Plan]:
    """The full model and Nq 1 w/o MMP as ``mode`` runs them, then the full model without the
    one optimisation the mode is about: channels_last in eager modes, compilation in compiled ones.
    ``fp32-vs-bf16``: the full model in fp32, in bf16, in bf16 without channels_last, and in bf16
    compiled."""
    if mode == SIDE_BY_SIDE:
        return [
            Plan(FULL, precision="fp32"),
            Plan(FULL, precision="bf16"),
            Plan(FULL, channels_last=False, precision="bf16"),
            Plan(FULL, compiled=True, precision="bf16"),
        ]
    compiled = mode.endswith("+compile")
    plans = [Plan(FULL, compiled=compiled), Plan(BARE, compiled=compiled)]
    plans.append(Plan(FULL, compiled=False) if compiled else Plan(FULL, channels_last=False))
    return plans


def _prepare(backbone: str, plan: Plan, device: torch.device, *, count_flops: bool = True):
    """The model, its config and its FLOPs per image (or None), as ``plan`` says."""
    from mmnet.info import model_figures

    model, config = build(backbone, VARIANTS[plan.variant], device, channels_last=plan.channels_last)
    gflops = model_figures(model, config)["total"]["gflops"] if count_flops else None  # per image, fp32 graph
    model.eval()
    if plan.compiled:
        model.compile()
    return model, config, gflops


def _inputs(config, batch: int, mode: str, device: torch.device, plan: Plan):
    """Images in the plan's layout, tokens, and the autocast context the mode runs under."""
    images, tokens = inputs(config, batch, device)
    if plan.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    bf16 = (plan.precision or mode).startswith("bf16")
    return images, tokens, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _forward(model, config, batch: int, mode: str, device: torch.device, plan: Plan):
    images, tokens, autocast = _inputs(config, batch, mode, device, plan)

    def step():
        with torch.inference_mode(), autocast:
            return model(images, tokens).logits

    return step


def _decode(model, config, batch: int, mode: str, device: torch.device, plan: Plan):
    """``decode`` alone, on image features encoded once: everything where the variants differ."""
    images, tokens, autocast = _inputs(config, batch, mode, device, plan)
    with torch.inference_mode(), autocast:
        visual = model.encode_image(images)

    def step():
        with torch.inference_mode(), autocast:
            return model.decode(visual, tokens).logits

    return step


def measure(
    *, backbone: str, plans: list[Plan], device: str, batches: list[int], mode: str, warmup: int, repeats: int, decode_repeats: int, threads: int
) -> list[dict]:
    """Times ``plans`` in turns in this process: the median seconds of each at each batch size,
    and per repeat the time of each plan over the first plan's. The first two plans (full and
    Nq 1 w/o MMP) also time ``decode`` alone, ``decode_repeats`` times, which pins the cost of
    the multi-mask machinery far more tightly than whole forward passes can."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    prepared = [_prepare(backbone, plan, device) for plan in plans]
    results = [{"gflops_per_image": gflops, "batches": {}} for _, _, gflops in prepared]
    for batch in batches:
        steps = [_forward(model, config, batch, mode, device, plan) for (model, config, _), plan in zip(prepared, plans)]
        times, first_calls = in_turns(steps, device, warmup=warmup, repeats=repeats)
        decodes = [_decode(model, config, batch, mode, device, plan) for (model, config, _), plan in zip(prepared[:2], plans[:2])]
        decode_times, _ = in_turns(decodes, device, warmup=warmup, repeats=decode_repeats)
        for i, result in enumerate(results):
            seconds = statistics.median(times[i])
            result["batches"][str(batch)] = {
                "median_s": seconds,
                "times_s": times[i],
                "images_per_s": batch / seconds,
                "achieved_gflops_per_s": result["gflops_per_image"] * batch / seconds,
                # paired with the first plan's run of the same repeat
                "median_ratio_to_first": statistics.median(t / t0 for t, t0 in zip(times[i], times[0])),
                "first_call_s": first_calls[i],
            }
            if i < len(decode_times):
                result["batches"][str(batch)]["decode_median_s"] = statistics.median(decode_times[i])
                result["batches"][str(batch)]["decode_times_s"] = decode_times[i]
    return results


def peak_memory(*, backbone: str, plan: Plan, device: str, batches: list[int], mode: str, threads: int) -> float:
    """Peak memory (MiB) of a fresh process that runs one forward at each batch size: the largest
    batch's, in effect. FLOPs are not counted here, as that forward keeps every attention matrix."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    model, config, _ = _prepare(backbone, plan, device, count_flops=False)
    for batch in batches:
        _forward(model, config, batch, mode, device, plan)()
    sync(device)
    return peak_memory_mb(device)


def _paired(slow: dict, fast: dict) -> float:
    """The median over repeats of slow / fast, each repeat's two runs timed in one round."""
    return statistics.median(a / b for a, b in zip(slow["times_s"], fast["times_s"]))


def summarize_side_by_side(results: list[dict], reference: dict) -> dict:
    """fp32 against bf16 in one process: speed-ups (paired per round), first calls, FLOP/s shares."""
    fp32, bf16, contiguous, compiled = (r["batches"] for r in results)
    entry = {}
    for b in fp32:
        entry[f"bf16_speedup_batch_{b}"] = _paired(fp32[b], bf16[b])
        entry[f"bf16_channels_last_speedup_batch_{b}"] = _paired(contiguous[b], bf16[b])
        entry[f"bf16_compile_speedup_batch_{b}"] = _paired(bf16[b], compiled[b])
        entry[f"bf16_compiled_speedup_over_fp32_batch_{b}"] = _paired(fp32[b], compiled[b])
        entry[f"first_call_s_bf16_batch_{b}"] = bf16[b]["first_call_s"]
        entry[f"first_call_s_bf16_compiled_batch_{b}"] = compiled[b]["first_call_s"]
        entry[f"fraction_of_fp32_matmul_flops_fp32_batch_{b}"] = fp32[b]["achieved_gflops_per_s"] / reference["fp32_matmul_gflops_per_s"]
        entry[f"fraction_of_bf16_matmul_flops_bf16_batch_{b}"] = bf16[b]["achieved_gflops_per_s"] / reference["bf16_matmul_gflops_per_s"]
    return entry


def summarize(results: list[dict], plans: list[Plan], mode: str, reference: dict) -> dict:
    """The ratios and shares of one backbone and mode, from the timings of its plans."""
    if mode == SIDE_BY_SIDE:
        return summarize_side_by_side(results, reference)
    full, bare = results[0]["batches"], results[1]["batches"]
    entry = {
        # time(Nq 1, w/o MMP) / time(full), paired per repeat, turned into full / bare
        f"multi_mask_latency_ratio_batch_{b}": 1 / bare[b]["median_ratio_to_first"] for b in full
    }
    # the same cost from decode alone, paired per round, as a share of the full forward pass
    entry.update({
        f"multi_mask_decode_overhead_share_batch_{b}": statistics.median(
            t - t0 for t, t0 in zip(full[b]["decode_times_s"], bare[b]["decode_times_s"])
        ) / full[b]["median_s"]
        for b in full
    })
    # time(without the optimisation) / time(with it), paired per repeat
    gain = "compile_speedup" if plans[2].channels_last else "channels_last_speedup"
    entry.update({f"{gain}_batch_{b}": results[2]["batches"][b]["median_ratio_to_first"] for b in full})
    if plans[0].compiled:
        entry.update({f"first_call_s_compiled_batch_{b}": full[b]["first_call_s"] for b in full if "first_call_s" in full[b]})
    largest = str(max(int(b) for b in full))
    if mode.startswith("fp32") and "8" in full:
        entry["fraction_of_matmul_flops_batch_8"] = full["8"]["achieved_gflops_per_s"] / reference["fp32_matmul_gflops_per_s"]
    if mode.startswith("bf16") and "bf16_matmul_gflops_per_s" in reference:
        achieved = full[largest]["achieved_gflops_per_s"]
        entry[f"fraction_of_bf16_matmul_flops_batch_{largest}"] = achieved / reference["bf16_matmul_gflops_per_s"]
        if "bf16_datasheet_peak_gflops_per_s" in reference:
            entry[f"fraction_of_bf16_datasheet_peak_batch_{largest}"] = achieved / reference["bf16_datasheet_peak_gflops_per_s"]
    return entry


def resummarize(path: Path) -> None:
    """Recomputes the summary of a results file with ``summarize``, from the timings it holds."""
    data = json.loads(path.read_text())
    for key in data["summary"]:
        backbone, mode = key.rsplit(" ", 1)
        runs = [run for run in data["runs"] if run["backbone"] == backbone and run["mode"] == mode]
        plans = [Plan(run["variant"], run["channels_last"], run.get("compiled", False), run.get("precision")) for run in runs]
        data["summary"][key] = summarize(runs, plans, mode, data["reference"])
    path.write_text(json.dumps(data, indent=2))
    print(f"summary recomputed: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, name="inference", batches_help="default: 1 8 on a CPU, 1 8 32 on a GPU", warmup=2, repeats=5)
    parser.add_argument(
        "--modes", nargs="+", choices=["fp32", "fp32+compile", "bf16", "bf16+compile", SIDE_BY_SIDE],
        help=f"default: fp32 on a CPU; fp32, bf16 and bf16+compile on a GPU; {SIDE_BY_SIDE}: both in turns, with channels_last and compile",
    )
    parser.add_argument("--decode-repeats", type=int, default=15, help="timed decode-only runs of the full model and Nq 1 w/o MMP (default 15)")
    parser.add_argument("--peak-bf16-tflops", type=float, help="the GPU's dense bf16 peak, where the built-in datasheet table lacks it")
    parser.add_argument("--resummarize", metavar="JSON", help="only recompute the summary of a results file from its raw times, in place")
    args = parser.parse_args(argv)
    if args.resummarize:
        resummarize(Path(args.resummarize))
        return
    if args.threads:  # here too, for the reference and the machine record
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = args.batches or ([1, 8] if device.type == "cpu" else [1, 8, 32])
    modes = args.modes or (["fp32"] if device.type == "cpu" else ["fp32", "bf16", "bf16+compile"])

    # The reference first, in this process, before any model warms the caches.
    reference = {"fp32_matmul_gflops_per_s": matmul_flops(device) / 1e9}
    if device.type == "cuda":
        reference["bf16_matmul_gflops_per_s"] = matmul_flops(device, torch.bfloat16, size=8192) / 1e9
    elif SIDE_BY_SIDE in modes or any(mode.startswith("bf16") for mode in modes):
        # 2048^3, as docs/performance.md's CPU table: a CPU without AMX or AVX512-BF16 emulates it slowly.
        reference["bf16_matmul_gflops_per_s"] = matmul_flops(device, torch.bfloat16, size=2048) / 1e9
        print(f"2048 x 2048 bf16 matrix product: {reference['bf16_matmul_gflops_per_s']:.1f} GFLOP/s", flush=True)
    if device.type == "cuda":
        peak = args.peak_bf16_tflops or datasheet_bf16_tflops(torch.cuda.get_device_name(device))
        if peak:
            reference["bf16_datasheet_peak_gflops_per_s"] = peak * 1e3
    print(f"4096 x 4096 fp32 matrix product: {reference['fp32_matmul_gflops_per_s']:.1f} GFLOP/s", flush=True)

    runs, summary = [], {}
    for backbone in args.backbones:
        for mode in modes:
            plans = plans_for(mode)
            print(f"== {backbone} | {mode}: {'; '.join(plan.name for plan in plans)}; in turns", flush=True)
            results = in_fresh_process(
                measure, backbone=backbone, plans=plans, device=args.device, batches=batches, mode=mode,
                warmup=args.warmup, repeats=args.repeats, decode_repeats=args.decode_repeats, threads=args.threads,
            )
            for plan, result in zip(plans, results):
                result["peak_memory_mb"] = in_fresh_process(
                    peak_memory, backbone=backbone, plan=plan, device=args.device, batches=batches, mode=mode, threads=args.threads
                )
                result.update(backbone=backbone, mode=mode, **plan._asdict())
                runs.append(result)
                cells = ", ".join(
                    f"batch {b}: {r['median_s'] * 1e3:.0f} ms ({r['images_per_s']:.2f} img/s, {r['achieved_gflops_per_s']:.0f} GFLOP/s)"
                    for b, r in result["batches"].items()
                )
                print(f"   {plan.name}: {result['gflops_per_image']:.1f} GFLOPs/image; {cells}; peak {result['peak_memory_mb']:.0f} MiB", flush=True)
            entry = summarize(results, plans, mode, reference)
            summary[f"{backbone} {mode}"] = entry
            print("   " + "; ".join(f"{key} {value:.3f}" for key, value in entry.items()), flush=True)

    write_results(args.out, "inference", device, {"reference": reference, "summary": summary, "runs": runs, "settings": vars(args)})


if __name__ == "__main__":
    main()
