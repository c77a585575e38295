"""Golden values: a tiny seeded MMNet's outputs and loss, against values stored in
tests/golden/tiny_outputs.json, so that a change to any number the model computes is seen.

A deliberate change of the model (new defaults, another initialisation) changes them; write
them again, and say why in the commit, with

    python tests/test_golden.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import build_tiny, random_images, tokens_for, with_distinct_queries  # noqa: E402

from mmnet.config import Config  # noqa: E402
from mmnet.engine import loss_function  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_outputs.json"
BACKBONES = ("RN-tiny", "ViT-tiny")
TEXTS = ["the blue triangle", "a cat left of the dog"]
SAMPLES = 16  # values read at evenly spaced positions of a large output
WHOLE = 256  # outputs up to this size are stored whole


def _summary(tensor: torch.Tensor) -> dict:
    """Shape, values (all of a small tensor, SAMPLES of a large one), and two checksums: the sum
    of absolute values, and a sum weighted by fixed random signs-and-sizes, which moves when any
    element does (a plain sum cannot, for scores and attention that sum to 1)."""
    flat = tensor.detach().double().flatten()
    weights = torch.rand(flat.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    positions = torch.arange(flat.numel()) if flat.numel() <= WHOLE else torch.linspace(0, flat.numel() - 1, SAMPLES).round().long()
    return {
        "shape": list(tensor.shape),
        "abs_sum": flat.abs().sum().item(),
        "weighted_sum": (flat * weights).sum().item(),
        "values": flat[positions].tolist(),
    }


def compute(backbone: str) -> dict:
    model = with_distinct_queries(build_tiny(backbone, seed=0, num_queries=4), seed=1).eval()
    images, tokens = random_images(2, seed=3), tokens_for(TEXTS)
    with torch.no_grad():
        outputs = model(images, tokens)
    masks = torch.zeros(2, 1, images.shape[-1], images.shape[-1])
    masks[0, :, 8:40, 16:48] = 1
    masks[1, :, 30:60, 2:20] = 1
    with torch.no_grad():
        parts = loss_function(Config(), has_estimator=True)(outputs, masks)
    return {
        # The single-target model has no no-target output: its golden values stay those it had before the head existed.
        **{name: _summary(value) for name, value in zip(outputs._fields, outputs) if value is not None},
        "loss": {name: value.item() for name, value in parts.items()},
    }


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_seeded_tiny_model_gives_the_stored_numbers(backbone):
    stored = json.loads(GOLDEN.read_text())[backbone]
    now = compute(backbone)
    assert now.keys() == stored.keys()
    for name, expected in stored.items():
        if name == "loss":
            assert now[name] == pytest.approx(expected, rel=1e-4, abs=1e-5), name
            continue
        assert now[name]["shape"] == expected["shape"], name
        # Tolerances for another CPU's or thread count's order of sums (one thread moves the
        # ViT's scores by up to 1.8e-4 relative), far below any change of the model; scores and
        # attention weights (at most 1) get an absolute tolerance below their smallest values.
        tolerance = 1e-7 if name in ("query_scores", "word_attention") else 1e-4
        assert now[name]["values"] == pytest.approx(expected["values"], rel=1e-3, abs=tolerance), name
        for checksum in ("abs_sum", "weighted_sum"):
            assert now[name][checksum] == pytest.approx(expected[checksum], rel=1e-4, abs=1e-3), name


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({backbone: compute(backbone) for backbone in BACKBONES}, indent=1) + "\n")
    print(f"written: {GOLDEN}")
