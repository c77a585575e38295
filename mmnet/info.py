"""Parameters per part and FLOPs of one forward pass at the configured size (``mmnet info``)."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mmnet.config import ModelConfig
from mmnet.data.tokenizer import EOS, SOS
from mmnet.modeling.mmnet import PARTS, MMNet


def dummy_inputs(config: ModelConfig, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image batch and expressions of the full configured length."""
    images = torch.randn(batch, 3, config.image_size, config.image_size)
    tokens = torch.randint(1, 49000, (batch, config.context_length))
    tokens[:, 0], tokens[:, -1] = SOS, EOS
    return images, tokens


def model_figures(model: MMNet, config: ModelConfig) -> dict:
    """Parameters and forward FLOPs (two per multiply-add; matrix products, convolutions and
    attention) of each part, for one image and one expression of the full length."""
    model.eval()
    device = next(model.parameters()).device
    images, tokens = (t.to(device) for t in dummy_inputs(config))
    counter = FlopCounterMode(display=False)
    # The fused attention kernels have no FLOP formula; the math one is counted as its products.
    # Gradients stay on so that nn.MultiheadAttention takes scaled_dot_product_attention too.
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(images, tokens)
    by_module = counter.get_flop_counts()
    root = type(model).__name__
    parts = {}
    for part, attributes in PARTS.items():
        modules = [getattr(model, a) for a in attributes if getattr(model, a) is not None]
        flops = sum(sum(by_module.get(f"{root}.{a}", {}).values()) for a in attributes)
        parts[part] = {"parameters": sum(p.numel() for m in modules for p in m.parameters()), "gflops": flops / 1e9}
    total = {"parameters": sum(p.numel() for p in model.parameters()), "gflops": counter.get_total_flops() / 1e9}
    return {
        "backbone": config.backbone,
        "image_size": config.image_size,
        "context_length": config.context_length,
        "num_queries": config.num_queries,
        "parts": parts,
        "total": total,
    }


def format_figures(figures: dict) -> str:
    lines = [
        f"MMNet {figures['backbone']}, {figures['image_size']} x {figures['image_size']}, "
        f"L = {figures['context_length']}, N_q = {figures['num_queries']}",
        f"{'part':<16}{'parameters (M)':>16}{'GFLOPs':>10}",
    ]
    for name, row in [*figures["parts"].items(), ("total", figures["total"])]:
        lines.append(f"{name:<16}{row['parameters'] / 1e6:>16.2f}{row['gflops']:>10.2f}")
    return "\n".join(lines)
