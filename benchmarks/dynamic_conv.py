"""The N_q dynamic 3 x 3 convolutions of Eq. 14 in three forms, at the paper's sizes (F_p of
C/2 = 256 channels at 120 x 120, the stride 4 of 480; N_q = 24): one grouped convolution for all
queries of all images (what the model runs), one convolution per query (the plain loop), and a
product with the nine shifted copies of F_p (what the ONNX export runs). The forms are timed in
turns in one process and checked to give the same masks.

    python benchmarks/dynamic_conv.py
    python benchmarks/dynamic_conv.py --device cuda --batches 1 8 32

Results: benchmarks/results/dynamic_conv_<cpu|cuda>.json, and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, sync  # noqa: E402


def grouped(f_p: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = f_p.shape
    count = params.shape[1]
    weight = params[..., :-1].reshape(batch * count, channels, 3, 3)
    bias = params[..., -1].reshape(batch * count)
    return F.conv2d(f_p.reshape(1, batch * channels, height, width), weight, bias, padding=1, groups=batch).view(batch, count, height, width)


def per_query(f_p: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    batch, channels = f_p.shape[:2]
    masks = [
        F.conv2d(f_p[b : b + 1], params[b, n, :-1].reshape(1, channels, 3, 3), params[b, n, -1:], padding=1)
        for b in range(batch)
        for n in range(params.shape[1])
    ]
    return torch.cat(masks, dim=1).view(batch, params.shape[1], *f_p.shape[2:])


def main(argv: list[str] | None = None) -> None:
    from mmnet.modeling.mask_decoder import _dynamic_conv_by_patches

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", help="JSON file (default benchmarks/results/dynamic_conv_<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    forms = {"grouped convolution": grouped, "one convolution per query": per_query, "shifted copies and bmm (ONNX)": _dynamic_conv_by_patches}

    torch.manual_seed(0)
    results = {}
    for batch in args.batches:
        f_p = torch.randn(batch, 256, 120, 120, device=device)
        params = torch.relu(torch.randn(batch, 24, 9 * 256 + 1, device=device)) / 48
        with torch.inference_mode():
            reference = grouped(f_p, params)
            for name, form in forms.items():
                torch.testing.assert_close(form(f_p, params), reference, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
                for _ in range(args.warmup):
                    form(f_p, params)
            times = {name: [] for name in forms}
            for repeat in range(args.repeats):  # in turns, the order reversed every other round
                for name in (list(forms) if repeat % 2 == 0 else list(reversed(forms))):
                    sync(device)
                    start = time.perf_counter()
                    forms[name](f_p, params)
                    sync(device)
                    times[name].append(time.perf_counter() - start)
        first = times["grouped convolution"]
        results[str(batch)] = {
            name: {
                "median_ms": statistics.median(t) * 1e3,
                "times_s": t,
                "median_ratio_to_grouped": statistics.median(a / b for a, b in zip(t, first)),
            }
            for name, t in times.items()
        }
        cells = "; ".join(f"{name} {r['median_ms']:.1f} ms ({r['median_ratio_to_grouped']:.2f}x)" for name, r in results[str(batch)].items())
        print(f"batch {batch}, N_q 24, 256 x 120 x 120: {cells}", flush=True)

    out = Path(args.out or REPO / "benchmarks" / "results" / f"dynamic_conv_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(device), "batches": results, "settings": vars(args)}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
