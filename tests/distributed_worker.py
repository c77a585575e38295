"""Run by tests/test_training.py under torchrun: trains, then writes this rank's weights and its
view of the gathered evaluation."""

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from mmnet import distributed
from mmnet.config import load_config
from mmnet.evaluate import evaluate_checkpoint
from mmnet.train import train

config_path, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
rank = int(os.environ["RANK"])
with distributed.session("cpu"):
    result = train(load_config(config_path), device="cpu")
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
    evaluation = evaluate_checkpoint(result.output_dir / "last", ["val", "testA"], device="cpu")
(out / f"eval_rank{rank}.json").write_text(json.dumps(evaluation))
