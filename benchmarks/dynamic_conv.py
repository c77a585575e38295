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

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare_forms, microbenchmark_arguments, write_results  # noqa: E402


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

    args = microbenchmark_arguments(__doc__, name="dynamic_conv", warmup=2, repeats=9).parse_args(argv)
    device = torch.device(args.device)
    forms = {"grouped convolution": grouped, "one convolution per query": per_query, "shifted copies and bmm (ONNX)": _dynamic_conv_by_patches}

    torch.manual_seed(0)
    results = {}
    for batch in args.batches:
        f_p = torch.randn(batch, 256, 120, 120, device=device)
        params = torch.relu(torch.randn(batch, 24, 9 * 256 + 1, device=device)) / 48
        results[str(batch)] = compare_forms(forms, (f_p, params), device, warmup=args.warmup, repeats=args.repeats)
        cells = "; ".join(f"{name} {r['median_ms']:.1f} ms ({r['median_ratio_to_first']:.2f}x)" for name, r in results[str(batch)].items())
        print(f"batch {batch}, N_q 24, 256 x 120 x 120: {cells}", flush=True)
    write_results(args.out, "dynamic_conv", device, {"batches": results, "settings": vars(args)})


if __name__ == "__main__":
    main()
