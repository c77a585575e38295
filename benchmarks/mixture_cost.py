"""What the departures from the paper's text cost at inference (docs/model.md): the probability
mixture of Eq. 16, the cosine and temperature of Eq. 9 and the estimator's residual, against
the model exactly as the paper writes it, at the paper's settings (480 x 480, N_q = 24).

The two models differ only after the image encoder, so ``decode`` is timed alone on features
encoded once, the two taking turns, and the median of the per-round differences is reported
as a share of the default model's whole forward pass (timed in the same process).

    python benchmarks/mixture_cost.py                            # ViT-B-16, batch 1, CPU
    python benchmarks/mixture_cost.py --backbones RN50 --batches 1 8

Results: benchmarks/results/mixture_cost_<device>.json, and a line per backbone and batch.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

from mmnet.config import paper_text_overrides

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, build, in_turns, inputs, write_results  # noqa: E402

PAPER_TEXT = [o for o in paper_text_overrides() if o.startswith("model.")]  # the model as the paper writes it
MODELS = {"defaults": ["model.num_queries=24"], "paper's text": ["model.num_queries=24", *PAPER_TEXT]}


def measure(backbone: str, batch: int, device: torch.device, *, warmup: int, repeats: int) -> dict:
    built = {name: build(backbone, overrides, device) for name, overrides in MODELS.items()}
    model, config = built["defaults"]
    images, tokens = inputs(config, batch, device)
    images = images.contiguous(memory_format=torch.channels_last)

    def decoder(model):
        with torch.inference_mode():
            visual = model.eval().encode_image(images)

        def step():
            with torch.inference_mode():
                return model.decode(visual, tokens).logits

        return step

    def forward():
        with torch.inference_mode():
            return model(images, tokens).logits

    (default_times, text_times), _ = in_turns([decoder(m) for m, _ in built.values()], device, warmup=warmup, repeats=repeats)
    (forward_times,), _ = in_turns([forward], device, warmup=1, repeats=max(3, repeats // 3))
    difference = statistics.median(d - t for d, t in zip(default_times, text_times))
    forward_s = statistics.median(forward_times)
    return {
        "backbone": backbone,
        "batch": batch,
        "decode_defaults_s": default_times,
        "decode_paper_text_s": text_times,
        "forward_defaults_s": forward_times,
        "median_paired_difference_s": difference,
        "share_of_forward": difference / forward_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, name="mixture_cost", batches_help="default: 1", warmup=2, repeats=15)
    parser.set_defaults(backbones=["ViT-B-16"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runs = []
    for backbone in args.backbones:
        for batch in args.batches or [1]:
            run = measure(backbone, batch, device, warmup=args.warmup, repeats=args.repeats)
            runs.append(run)
            print(
                f"{backbone}, batch {batch}: decode with the departures {1e3 * run['median_paired_difference_s']:+.1f} ms "
                f"(median of {args.repeats} paired rounds), {100 * run['share_of_forward']:+.2f}% of a "
                f"{1e3 * statistics.median(run['forward_defaults_s']):.0f} ms forward"
            )
    command = ["python", "benchmarks/mixture_cost.py", *(sys.argv[1:] if argv is None else argv)]
    write_results(args.out, "mixture_cost", device, {"command": " ".join(command), "runs": runs})


if __name__ == "__main__":
    main()
