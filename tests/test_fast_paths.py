"""The fast paths give the plain paths' outputs: the batched dynamic convolution, channels_last
weights, and the opt-in torch.compile of every part."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmnet import Predictor
from mmnet.cli import main
from mmnet.config import Config, EvalConfig
from mmnet.modeling import MMNet, mmnet_loss
from mmnet.modeling.mask_decoder import _dynamic_conv_by_patches
from mmnet.modeling.mmnet import PARTS, MMNetOutput
from tiny import TINY_IMAGE_SIZE, build_tiny, random_images, tiny_model_config, tokens_for, with_distinct_queries

BACKBONES = ["RN-tiny", "ViT-tiny"]
TEXTS = ["the blue triangle", "sandwich by fork", "big red circle left of the green square"]


def test_the_batched_dynamic_convolution_equals_one_convolution_per_query_and_the_onnx_patch_form():
    projector = build_tiny().projector.eval()
    f_s = torch.randn(3, 32, 4, 4)
    queries = torch.randn(3, 5, 32)
    batched = projector(f_s, queries)

    f_p = projector.pixel(f_s)
    params = torch.relu(projector.kernel(queries))  # Eq. 14
    channels = f_p.shape[1]
    looped = torch.stack(
        [
            torch.cat(
                [
                    F.conv2d(f_p[b : b + 1], params[b, n, :-1].reshape(1, channels, 3, 3), params[b, n, -1:], padding=1)
                    for n in range(queries.shape[1])
                ],
                dim=1,
            )[0]
            for b in range(f_s.shape[0])
        ]
    )
    patches = _dynamic_conv_by_patches(f_p, params)  # what the ONNX export runs
    assert batched.shape == looped.shape == patches.shape == (3, 5, 16, 16)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patches, looped, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_built_model_holds_its_convolutions_in_channels_last_with_unchanged_outputs(backbone):
    model = with_distinct_queries(build_tiny(backbone, num_queries=5)).eval()
    convolutions = [(name, p) for name, p in model.named_parameters() if p.ndim == 4]
    assert convolutions, "the tower has convolutions"
    assert [name for name, p in convolutions if not p.is_contiguous(memory_format=torch.channels_last)] == []

    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    assert all(p.is_contiguous() for p in plain.parameters())
    images, tokens = random_images(3), tokens_for(TEXTS)
    with torch.no_grad():
        fast, reference = model(images, tokens), plain(images, tokens)
    for key in MMNetOutput._fields:
        torch.testing.assert_close(getattr(fast, key), getattr(reference, key), atol=1e-4, rtol=1e-4)
    # contiguous images, as the predictor and evaluation feed them, still run the ResNet stages
    # in channels_last: the stem's weight sets the layout and the stages keep it
    if backbone.startswith("RN"):
        assert images.is_contiguous()
        stages = []
        tower = model.image_encoder.tower
        hooks = [stage.register_forward_hook(lambda m, i, out: stages.append(out)) for stage in (tower.layer1, tower.layer2, tower.layer3)]
        with torch.no_grad():
            model.encode_image(images)
        for hook in hooks:
            hook.remove()
        assert len(stages) == 3
        assert all(out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous() for out in stages)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch and leaves no compiled code behind for the next."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _recording_backend(graphs: list):
    """A torch.compile backend that keeps each captured graph and runs it as it is."""

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    return backend


@pytest.mark.parametrize("backbone", BACKBONES)
def test_compile_compiles_every_part_and_keeps_the_outputs_of_forward_encode_and_decode(backbone):
    # With the no-target head, so that every part of PARTS exists and is compiled.
    model = with_distinct_queries(build_tiny(backbone, num_queries=5, no_target=True)).eval()
    images, tokens = random_images(3), tokens_for(TEXTS)
    with torch.no_grad():
        reference = model(images, tokens)
        reference_one_image = model.decode(model.encode_image(images[:1]), tokens)

    graphs = []
    model.compile(backend=_recording_backend(graphs))
    parts = [name for names in PARTS.values() for name in names]
    assert [name for name in parts if getattr(model, name)._compiled_call_impl is None] == []
    with torch.no_grad():
        compiled = model(images, tokens)
        compiled_one_image = model.decode(model.encode_image(images[:1]), tokens)
    assert len(graphs) >= len(parts)  # dynamo traced each part (a part may break into several graphs)
    for key in MMNetOutput._fields:
        torch.testing.assert_close(getattr(compiled, key), getattr(reference, key), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(getattr(compiled_one_image, key), getattr(reference_one_image, key), atol=1e-4, rtol=1e-4)


def test_a_model_without_an_estimator_compiles_the_parts_it_has():
    model = build_tiny(num_queries=1).eval()
    assert model.estimator is None
    model.compile(backend=_recording_backend([]))
    assert model.projector._compiled_call_impl is not None


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="inductor needs a C++ compiler on a CPU")
def test_compiled_with_inductor_the_model_gives_the_eager_outputs():
    """The real compiler (C++ code on a CPU), not a stand-in: slow to start, so one small case."""
    model = with_distinct_queries(build_tiny("ViT-tiny", num_queries=5)).eval()
    images, tokens = random_images(2), tokens_for(TEXTS[:2])
    with torch.inference_mode():
        reference = model(images, tokens)
        model.compile()
        compiled = model(images, tokens)
    for key in MMNetOutput._fields:
        torch.testing.assert_close(getattr(compiled, key), getattr(reference, key), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("setting,argument,compiled", [(False, None, False), (True, None, True), (True, False, False), (False, True, True)])
def test_the_predictor_compiles_when_its_argument_or_else_eval_compile_says_so(monkeypatch, setting, argument, compiled):
    calls = []
    monkeypatch.setattr(MMNet, "compile", lambda self, *args, **kwargs: calls.append(self))
    model = build_tiny()
    Predictor(model, Config(model=tiny_model_config(), eval=EvalConfig(compile=setting)), device="cpu", compile=argument)
    assert calls == ([model] if compiled else [])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_attention_runs_through_scaled_dot_product_attention(monkeypatch, backbone):
    """The towers' nn.MultiheadAttention layers, the decoder, the estimator and the ResNet
    attention pool: one fused SDPA call each. (Eq. 9's word attention is not among them: its
    weights A are an output of the model.)"""
    from mmnet.modeling.blocks import Attention

    model = with_distinct_queries(build_tiny(backbone, num_queries=5)).train()  # no inference-only fast path
    calls = {"sdpa": 0, "attention": 0}
    fused = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls["sdpa"] += 1
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    for module in model.modules():
        if isinstance(module, (torch.nn.MultiheadAttention, Attention)):
            module.register_forward_hook(lambda *_: calls.__setitem__("attention", calls["attention"] + 1))
    pools = 1 if backbone.startswith("RN") else 0
    model(random_images(3), tokens_for(TEXTS))
    assert calls["attention"] > 0
    assert calls["sdpa"] == calls["attention"] + pools


@pytest.mark.parametrize("flag,compiled", [([], True), (["--no-compile"], False), (["--compile"], True)])
def test_predict_command_compiles_as_eval_compile_says_unless_told_otherwise(monkeypatch, tmp_path, flag, compiled):
    Predictor(build_tiny(), Config(model=tiny_model_config(), eval=EvalConfig(compile=True)), device="cpu", compile=False).save_pretrained(tmp_path / "ckpt")
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    calls = []
    monkeypatch.setattr(MMNet, "compile", lambda self, *args, **kwargs: calls.append(self))
    main(["predict", "--checkpoint", str(tmp_path / "ckpt"), "--image", str(tmp_path / "photo.png"), "--text", "the cat",
          "--out", str(tmp_path / "out"), "--device", "cpu", *flag])
    assert len(calls) == int(compiled)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_under_bf16_autocast_the_model_runs_and_stays_near_fp32(backbone):
    """bf16 is the GPU path; CPU autocast runs the same ops in bf16. It cannot meet fp32
    tolerance (8 bits of mantissa), so this pins that the model runs under it, that the masks
    come out in bf16 and their mixture (Eq. 16, kept in fp32) near the fp32 one, and that the
    training loss gives finite gradients for every parameter."""
    model = with_distinct_queries(build_tiny(backbone, num_queries=5)).eval()
    images, tokens = random_images(2), tokens_for(TEXTS[:2])
    with torch.inference_mode():
        reference = model(images, tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images, tokens)
    assert low.query_masks.dtype == torch.bfloat16 and low.logits.dtype == torch.float32
    torch.testing.assert_close(low.logits.float().sigmoid(), reference.logits.sigmoid(), atol=0.05, rtol=0)
    # The scores are not compared: the queries' perturbed weights make the softmaxes of Eq. 9
    # and 15 sharp, and bf16 rounding moves a sharp softmax far. They must still be a softmax.
    torch.testing.assert_close(low.query_scores.float().sum(dim=1), torch.ones(2), atol=1e-2, rtol=0)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images, tokens)
    truth = torch.zeros(2, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    truth[:, 8:40, 16:48] = 1
    loss = mmnet_loss(outputs, truth, query_loss="best", query_loss_weight=1.0, score_loss_weight=0.1, dice_weight=1.0)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
