"""ONNX export: the graph runs in onnxruntime at any batch size and gives PyTorch's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmnet.cli import main
from mmnet.config import Config
from mmnet.export import OUTPUTS, output_names
from mmnet.checkpoint import save_pretrained
from mmnet.export import export_onnx
from test_checkpoint import float_tensor_names, overwrite_with_nan
from tiny import build_tiny, random_images, tiny_model_config, tokens_for, with_distinct_queries

ort = pytest.importorskip("onnxruntime")

TEXTS = ["the blue triangle", "a cat", "the large square left of the red circle"]


@pytest.mark.parametrize("backbone, no_target", [("RN-tiny", False), ("ViT-tiny", False), ("RN-tiny", True)])
def test_exported_model_matches_pytorch_at_batch_sizes_it_was_not_traced_with(tmp_path, capsys, backbone, no_target):
    model = with_distinct_queries(build_tiny(backbone, seed=4, num_queries=5, no_target=no_target), seed=2).eval()
    save_pretrained(model, Config(model=tiny_model_config(backbone, num_queries=5, no_target=no_target)), tmp_path / "ckpt")
    out = tmp_path / "mmnet.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--format", "onnx", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images", "tokens"]
    names = list(OUTPUTS) if no_target else [name for name in OUTPUTS if name != "no_target"]
    assert [o.name for o in session.get_outputs()] == names == output_names(model)
    for batch in (1, 3):  # traced with 2
        images, tokens = random_images(batch, seed=batch), tokens_for(TEXTS[:batch])
        with torch.no_grad():
            expected = model(images, tokens)
        assert expected.query_scores.std(dim=1).min() > 1e-3  # queries that differ, so a mix-up shows
        got = session.run(None, {"images": images.numpy(), "tokens": tokens.numpy()})
        assert len(got) == len(names)
        for name, value, reference in zip(names, got, expected):
            assert value.shape == tuple(reference.shape)
            assert np.abs(value - reference.numpy()).max() < 1e-4, name


def test_export_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_export_refuses_damaged_weights_and_writes_nothing(tmp_path, capsys):
    save_pretrained(build_tiny(seed=5), Config(model=tiny_model_config()), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    damaged = float_tensor_names(path)[-1:]
    overwrite_with_nan(path, damaged)
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert f"{path}: NaN or infinite values in 1 tensor (e.g. {damaged[0]})" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_export_leaves_the_callers_model_as_it_was(tmp_path):
    model = build_tiny(seed=5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
