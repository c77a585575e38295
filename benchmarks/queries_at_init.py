"""Whether the queries, their masks and their scores differ at initialisation, for the paper's text
and for each setting that departs from it (docs/model.md).

Builds the model of ``--config`` (random weights) once per variant with the same seed, runs it
on the synthetic set's val images and expressions, and prints the query diagnostic
(mmnet/diagnostics.py) averaged over them. Nothing is trained.

    python benchmarks/queries_at_init.py                    # configs/demo.yaml, 3 seeds
    python benchmarks/queries_at_init.py --config configs/refcoco_vit-b-16.yaml --expressions 8

Results: benchmarks/results/queries_at_init.json, and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from mmnet.config import paper_text_overrides

REPO = Path(__file__).resolve().parent.parent
PAPER_TEXT = [o for o in paper_text_overrides() if o.startswith("model.")]  # the model as the paper writes it
VARIANTS = {
    "paper's text": PAPER_TEXT,
    "defaults": [],
    "defaults, PyTorch init": ["model.init=pytorch"],
    "defaults, plain Eq. 9": ["model.word_logit_scale=null"],
    "defaults, Eq. 9 scale 5": ["model.word_logit_scale=5"],
    "defaults, Eq. 9 scale 30": ["model.word_logit_scale=30"],
    "defaults, no estimator residual": ["model.estimator_residual=false"],
}


def measure(config_path: str, overrides: list[str], seed: int, batch: dict) -> dict:
    from mmnet.build import build_mmnet
    from mmnet.config import load_config
    from mmnet.diagnostics import QueryDiagnostics

    config = load_config(config_path, ["model.clip_weights=null", *overrides]).model
    torch.manual_seed(seed)
    model = build_mmnet(config, load_clip_weights=False).eval()
    diagnostics = QueryDiagnostics()
    with torch.inference_mode():
        outputs = model(batch["image"], batch["tokens"])
    diagnostics.update(outputs=outputs, tokens=batch["tokens"])
    return diagnostics.summary()


def val_batch(config_path: str, count: int) -> dict:
    """The first ``count`` expressions of a freshly written synthetic val split, letterboxed as
    the model wants."""
    from mmnet.config import load_config
    from mmnet.data.datasets import ReferEvalDataset, collate_eval
    from mmnet.data.refer import ReferIndex
    from mmnet.data.synth import write_synthetic

    config = load_config(config_path)
    with tempfile.TemporaryDirectory(prefix="mmnet_queries_") as root:
        write_synthetic(root, name="synthref", seed=0, images=[1, count, 1, 1], progress=False)
        config.data.root, config.data.dataset, config.data.split_by = root, "synthref", "unc"
        index = ReferIndex.from_config(config.data, progress=False)
        dataset = ReferEvalDataset(index, split="val", image_size=config.model.image_size, context_length=config.model.context_length)
        return collate_eval([dataset[i] for i in range(min(count, len(dataset)))])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--expressions", type=int, default=64, help="synthetic val expressions to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "queries_at_init.json"))
    args = parser.parse_args(argv)
    batch = val_batch(args.config, args.expressions)
    rows = {}
    for name, overrides in VARIANTS.items():
        per_seed = [measure(args.config, overrides, seed, batch) for seed in args.seeds]
        rows[name] = {
            "overrides": overrides,
            "per_seed": per_seed,
            "mean": {key: statistics.fmean(s[key] for s in per_seed) for key in per_seed[0] if per_seed[0][key] is not None},
        }
    from mmnet.diagnostics import DIAGNOSTIC_NAMES, LABELS

    header = f"{'variant':<34}" + "".join(f"{LABELS[n]:>15}" for n in DIAGNOSTIC_NAMES)
    lines = [header] + [
        f"{name:<34}" + "".join(f"{row['mean'].get(n, float('nan')):>15.4f}" for n in DIAGNOSTIC_NAMES) for name, row in rows.items()
    ]
    print(f"{len(batch['tokens'])} val expressions, seeds {args.seeds}, {args.config}")
    print("\n".join(lines))
    command = ["python", "benchmarks/queries_at_init.py", *(sys.argv[1:] if argv is None else argv)]
    Path(args.json).write_text(json.dumps({"command": " ".join(command), "expressions": len(batch["tokens"]), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
