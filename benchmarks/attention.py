"""Attention at MMNet's shapes, written out (softmax(Q K^T / sqrt(d)) V with the weights in
memory) against torch's scaled_dot_product_attention, which every attention of the model calls:
with the kernel torch picks and with its math kernel. The three are timed in turns in one process
and checked to agree.

Shapes at 480 x 480 (30 x 30 = 900 positions at stride 16), batch B:
  ViT-B-16 tower self-attention:   12 heads of 64 over 901 tokens
  decoder self-attention:          8 heads of 64 over 900 positions
  decoder cross-attention:         900 positions onto the N_q = 24 queries (Eq. 13)
  estimator (Eq. 15):              8 heads of 64 over 24 queries

    python benchmarks/attention.py
    python benchmarks/attention.py --device cuda --batches 1 8 32

Results: benchmarks/results/attention_<cpu|cuda>.json, and a table on stdout.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare_forms, microbenchmark_arguments, write_results  # noqa: E402

# name: (heads, queries, keys, head width)
SHAPES = {
    "ViT-B-16 tower self-attention": (12, 901, 901, 64),
    "decoder self-attention": (8, 900, 900, 64),
    "decoder cross-attention": (8, 900, 24, 64),
    "estimator (Eq. 15)": (8, 24, 24, 64),
}


def written_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    return weights @ v


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def sdpa_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v)


def main(argv: list[str] | None = None) -> None:
    args = microbenchmark_arguments(__doc__, name="attention", warmup=3, repeats=15).parse_args(argv)
    device = torch.device(args.device)
    forms = {"written out": written_out, "scaled_dot_product_attention": sdpa, "its math kernel": sdpa_math}

    torch.manual_seed(0)
    results = {}
    for shape_name, (heads, queries, keys, width) in SHAPES.items():
        for batch in args.batches:
            q = torch.randn(batch, heads, queries, width, device=device)
            k, v = (torch.randn(batch, heads, keys, width, device=device) for _ in range(2))
            entry = compare_forms(forms, (q, k, v), device, warmup=args.warmup, repeats=args.repeats)
            results[f"{shape_name}, batch {batch}"] = entry
            cells = "; ".join(f"{name} {r['median_ms']:.2f} ms ({r['median_ratio_to_first']:.2f}x)" for name, r in entry.items())
            print(f"{shape_name}, batch {batch}: {cells}", flush=True)
    write_results(args.out, "attention", device, {"shapes": results, "settings": vars(args)})


if __name__ == "__main__":
    main()
