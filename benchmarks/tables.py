"""The tables of docs/performance.md, from the JSON the speed benchmarks wrote.

    python benchmarks/tables.py                  # benchmarks/results/{inference,train_step}_cpu*.json
    python benchmarks/tables.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402


REFERENCES = {
    "fp32_matmul_gflops_per_s": "fp32 matrix product",
    "bf16_matmul_gflops_per_s": "bf16 matrix product",
    "bf16_datasheet_peak_gflops_per_s": "(bf16 datasheet peak)",
}


def _machine(data: dict) -> str:
    machine = data["machine"]
    capability = f" ({machine['cpu_capability']})" if "cpu_capability" in machine else ""
    where = machine.get("gpu") or f"{machine['cores']}-core {machine['processor']}{capability}, {machine['torch_threads']} torch threads"
    settings = data["settings"]
    decode = f" (decode alone: of {settings['decode_repeats']})" if "decode_repeats" in settings else ""
    return f"{where}; torch {machine['torch']}; median of {settings['repeats']}{decode} after {settings['warmup']} warm-up"


def inference_tables(data: dict) -> str:
    reference = data["reference"]
    lines = [
        f"Machine: {_machine(data)}. In the same run: "
        + ", ".join(f"{REFERENCES.get(key, key)} {value:.1f} GFLOP/s" for key, value in reference.items())
        + ".",
        "",
        "| backbone | mode | model | GFLOPs / image | " + " | ".join(f"batch {b}" for b in data["runs"][0]["batches"]) + " | peak memory (largest batch) |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in data["runs"][0]["batches"]) + " | --- |",
    ]
    for run in data["runs"]:
        model = run["variant"] + ("" if run["channels_last"] else ", contiguous layout") + (", compiled" if run.get("compiled") else "")
        cells = [
            f"{r['median_s'] * 1e3:.0f} ms, {r['images_per_s']:.2f} img/s, {r['achieved_gflops_per_s']:.0f} GFLOP/s"
            for r in run["batches"].values()
        ]
        lines.append(f"| {run['backbone']} | {run['mode']} | {model} | {run['gflops_per_image']:.1f} | {' | '.join(cells)} | {run['peak_memory_mb']:.0f} MiB |")
    lines += ["", "| backbone, mode | " + " | ".join(_label(k) for k in _summary_keys(data)) + " |"]
    lines.append("| --- | " + " | ".join("---" for _ in _summary_keys(data)) + " |")
    for name, entry in data["summary"].items():
        lines.append(f"| {name} | " + " | ".join(f"{entry[k]:.3f}" if k in entry else "" for k in _summary_keys(data)) + " |")
    return "\n".join(lines)


def _summary_keys(data: dict) -> list[str]:
    keys: list[str] = []
    for entry in data["summary"].values():
        keys += [k for k in entry if k not in keys]
    return keys


def _label(key: str) -> str:
    words = key.replace("_", " ")
    for old, new in (("multi mask latency ratio", "Nq 24 / (Nq 1 w/o MMP) time,"),
                     ("multi mask decode overhead share", "decode(Nq 24) - decode(Nq 1 w/o MMP), share of the forward,"), ("channels last speedup", "contiguous / channels_last time,"),
                     ("compile speedup", "eager / compiled time,"), ("first call s compiled", "first call of the compiled model (compiler included), s,"),
                     ("fraction of matmul flops", "share of fp32 matmul FLOP/s,"), ("fraction of bf16 matmul flops", "share of bf16 matmul FLOP/s,"),
                     ("fraction of bf16 datasheet peak", "share of the datasheet bf16 peak,")):
        words = words.replace(old, new)
    return words


def train_table(data: dict) -> str:
    lines = [
        f"Machine: {_machine(data)}.",
        "",
        "| backbone | model | batch | precision | step | samples/s | peak memory |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in data["runs"]:
        lines.append(
            f"| {run['backbone']} | {run['variant']} | {run['batch']} | {'bf16' if run['bf16'] else 'fp32'} | "
            f"{run['median_s'] * 1e3:.0f} ms | {run['samples_per_s']:.2f} | {run['peak_memory_mb']:.0f} MiB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    results = REPO / "benchmarks" / "results"
    for name, table in (("inference", inference_tables), ("train_step", train_table)):
        # the default output first, then any written with --out beside it (e.g. inference_cpu_compile.json)
        paths = sorted(results.glob(f"{name}_{args.device}*.json"), key=lambda p: (p.stem != f"{name}_{args.device}", p.name))
        for path in paths:
            print(f"### {path.relative_to(REPO)}\n\n{table(json.loads(path.read_text()))}\n")
        if not paths:
            print(f"### {name}_{args.device}.json: not there yet; run benchmarks/{name}.py{' --device cuda' if args.device == 'cuda' else ''}\n")


if __name__ == "__main__":
    main()
