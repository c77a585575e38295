"""CLIP towers: built as open_clip builds them, equal to open_clip on the same weights, and
loaded from every real file format."""

from __future__ import annotations

import ast
import copy
import logging
import pickle
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import convert_weights_to_lp
from safetensors.torch import save_file

import torch.nn.functional as F

import mmnet
from mmnet.build import build_mmnet
from mmnet.backbones import clip_model_config
from mmnet.modeling.clip import create_clip
from mmnet.weights import WeightsError, read_state_dict
from tiny import tiny_model_config, tokens_for

TEXTS = ["the blue triangle", "a man in a red shirt holding a very long umbrella by the door"]


def reference_clip(backbone: str) -> open_clip.CLIP:
    """A randomly initialised CLIP at its native size (224, 77 tokens), as open_clip builds it."""
    clip = open_clip.create_model(backbone, pretrained=None, force_quick_gelu=True).eval()
    with torch.no_grad():
        for name, p in clip.named_parameters():
            if name.endswith("bn3.weight"):  # open_clip zero-initialises these; pretrained ones are not zero
                p.normal_(1.0, 0.1)
    return clip


def round_like_openai(clip: open_clip.CLIP) -> open_clip.CLIP:
    """Rounds the tensors that OpenAI stores in float16 to float16 precision, keeping float32."""
    half = copy.deepcopy(clip)
    convert_weights_to_lp(half, dtype=torch.float16)
    rounded = {k: v.float() for k, v in half.state_dict().items()}
    clip.load_state_dict(rounded)
    return clip


def write_openai_archive(clip: open_clip.CLIP, path: Path) -> None:
    """A TorchScript archive laid out like OpenAI's RN50.pt / ViT-B-16.pt: the traced CLIP, its
    weights under the same names, the float16 ones in float16, and the three integer buffers."""
    model = copy.deepcopy(clip).eval()
    for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(model, name):
            delattr(model, name)  # open_clip keeps these as plain ints; OpenAI's archives hold tensors
        model.register_buffer(name, torch.tensor(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about shape checks and its own deprecation
        traced = torch.jit.trace(model, (torch.randn(1, 3, 224, 224), tokens_for(["a"], 77)), check_trace=False)
    half = copy.deepcopy(clip)
    convert_weights_to_lp(half, dtype=torch.float16)
    half_names = {k for k, v in half.state_dict().items() if v.dtype == torch.float16}
    with torch.no_grad():
        for name, p in traced.named_parameters():
            if name in half_names:
                p.data = p.data.half()
    traced.save(str(path))


def mmnet_on(weights: Path, backbone: str, **changes):
    return build_mmnet(tiny_model_config(backbone, clip_weights=str(weights), **changes)).eval()


@pytest.mark.parametrize("backbone", ["RN-tiny", "ViT-tiny"])
def test_global_features_equal_open_clip_encoders_at_native_size(tmp_path, backbone):
    clip = reference_clip(backbone)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    model = mmnet_on(tmp_path / "clip.pt", backbone, image_size=224)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        _, _, z, z_bar = model.image_encoder.clip_features(images)
        if backbone.startswith("ViT"):  # z is the patch grid; the three scales are made from it
            z = model.image_encoder.patch_features(images)[0]
        _, f_tg, _ = model.text_encoder(tokens_for(TEXTS, 17))
        torch.testing.assert_close(z_bar, clip.encode_image(images), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(f_tg, clip.encode_text(tokens_for(TEXTS, 77)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(z, open_clip_dense_tokens(clip, images), rtol=1e-4, atol=1e-5)


def open_clip_dense_tokens(clip: open_clip.CLIP, images: torch.Tensor) -> torch.Tensor:
    """z as open_clip's own modules compute it: B x C x g x g, every grid token (not the global one)."""
    visual = clip.visual
    if hasattr(visual, "attnpool"):
        x4 = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))
        pool = visual.attnpool
        x = x4.flatten(2).permute(2, 0, 1)
        x = torch.cat([x.mean(dim=0, keepdim=True), x]) + pool.positional_embedding[:, None, :]
        out, _ = F.multi_head_attention_forward(
            x, x, x, x.shape[-1], pool.num_heads,
            in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True,
            q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
            need_weights=False,
        )
        grid = out[1:].permute(1, 2, 0)
        side = x4.shape[-1]
    else:
        visual.output_tokens = True
        _, tokens = visual(images)  # patch tokens after ln_post, class token excluded
        visual.output_tokens = False
        grid = (tokens @ visual.proj).transpose(1, 2)
        side = images.shape[-1] // visual.patch_size[0]
    return grid.reshape(images.shape[0], -1, side, side)


@pytest.mark.parametrize("backbone", ["RN-tiny", "ViT-tiny"])
def test_openai_archive_open_clip_state_dict_and_safetensors_load_identical_weights(tmp_path, backbone):
    clip = round_like_openai(reference_clip(backbone))
    write_openai_archive(clip, tmp_path / "openai.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, tmp_path / "open_clip.pt")
    save_file(clip.state_dict(), str(tmp_path / "open_clip.safetensors"))

    archive, kind = read_state_dict(tmp_path / "openai.pt")
    assert kind == "torchscript"
    assert archive["visual.conv1.weight"].dtype == torch.float16  # the archive really is half precision
    assert "input_resolution" in archive

    loaded = [mmnet_on(tmp_path / name, backbone) for name in ("openai.pt", "open_clip.pt", "open_clip.safetensors")]
    towers = [
        {k: v for k, v in m.state_dict().items() if k.startswith(("image_encoder.tower.", "text_encoder."))} for m in loaded
    ]
    assert len(towers[0]) > 20
    for other in towers[1:]:
        assert towers[0].keys() == other.keys()
        for key in towers[0]:
            assert torch.equal(towers[0][key], other[key]), key
    # The weights really came from the file (not a fresh random init).
    assert torch.equal(towers[0]["text_encoder.token_embedding.weight"], clip.token_embedding.weight)


def bicubic_grid(table: torch.Tensor, side: int) -> torch.Tensor:
    """The grid rows of a (1 + g*g) x C table, resized bicubic to side x side, row-major."""
    old = round((table.shape[0] - 1) ** 0.5)
    grid = table[1:].reshape(old, old, -1).permute(2, 0, 1)[None]
    return F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(side * side, -1)


def test_position_embeddings_are_resized_to_the_working_grid_and_length(tmp_path):
    clip = reference_clip("RN-tiny")
    table = clip.visual.attnpool.positional_embedding.detach()  # 1 + 7 * 7 rows at 224
    with torch.no_grad():  # a ramp along x only: a transposed grid would turn it into a ramp along y
        ramp = torch.arange(7.0).repeat(7)[:, None] * torch.ones(1, table.shape[1])
        clip.visual.attnpool.positional_embedding[1:] = ramp
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    model = mmnet_on(tmp_path / "clip.pt", "RN-tiny", image_size=448, context_length=22)
    resized = model.image_encoder.tower.attnpool.positional_embedding
    assert resized.shape == (1 + 14 * 14, table.shape[1])
    assert torch.equal(resized[0], clip.visual.attnpool.positional_embedding[0])
    torch.testing.assert_close(resized[1:], bicubic_grid(clip.visual.attnpool.positional_embedding.detach(), 14))
    rows = resized[1:, 0].reshape(14, 14)
    assert torch.all(rows[:, 1:] >= rows[:, :-1] - 1e-5) and torch.allclose(rows[0], rows[-1])
    assert torch.equal(model.text_encoder.positional_embedding, clip.positional_embedding[:22])


def test_vit_position_embeddings_follow_the_patch_grid(tmp_path):
    clip = reference_clip("ViT-tiny")
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    model = mmnet_on(tmp_path / "clip.pt", "ViT-tiny", image_size=96)
    table = model.image_encoder.tower.positional_embedding
    assert table.shape[0] == 1 + 6 * 6
    torch.testing.assert_close(table[1:], bicubic_grid(clip.visual.positional_embedding.detach(), 6))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 96), tokens_for(["a"]))
    assert out.logits.shape == (1, 1, 24, 24)


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match=f"weights file not found: {tmp_path / 'RN50.pt'}"):
        mmnet_on(tmp_path / "RN50.pt", "RN-tiny")
    (tmp_path / "weights").mkdir()
    with pytest.raises(WeightsError, match=f"{tmp_path / 'weights'} is a directory"):
        mmnet_on(tmp_path / "weights", "RN-tiny")


def test_position_table_that_is_not_a_grid(tmp_path):
    state = reference_clip("RN-tiny").state_dict()
    state["visual.attnpool.positional_embedding"] = torch.zeros(1 + 7 * 7 + 3, state["visual.attnpool.positional_embedding"].shape[1])
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(WeightsError, match=r"odd.pt: visual.attnpool.positional_embedding has 53 rows, not one global token and a square grid"):
        mmnet_on(tmp_path / "odd.pt", "RN-tiny", image_size=128)


def test_open_clip_tags_pair_with_their_activation():
    # Checked before anything is downloaded: OpenAI's RN50 used QuickGELU, LAION's ViT-B-16 did not.
    with pytest.raises(WeightsError, match="'openai' weights of RN50 were trained with QuickGELU; set model.quick_gelu=true"):
        build_mmnet(tiny_model_config("RN50", clip_weights="openai", quick_gelu=False, image_size=224))
    with pytest.raises(WeightsError, match="trained without QuickGELU; set model.quick_gelu=false"):
        build_mmnet(tiny_model_config("ViT-B-16", clip_weights="laion2b_s34b_b88k", quick_gelu=True, image_size=224))


@pytest.mark.parametrize("name", ["clip.pt", "clip.bin", "clip.safetensors"])
def test_corrupt_weights_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(WeightsError, match=f"{path}: not a readable weight file"):
        mmnet_on(path, "RN-tiny")


def test_truncated_weights_file(tmp_path):
    torch.save(reference_clip("RN-tiny").state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.pt: not a readable weight file"):
        mmnet_on(tmp_path / "cut.pt", "RN-tiny")


class _Payload:
    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "code ran"))


def test_weights_file_that_would_run_code_is_refused_unexecuted(tmp_path):
    payload = _Payload()
    payload.target = str(tmp_path / "pwned")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"visual.conv1.weight": payload}, f, protocol=2)
    with pytest.raises(WeightsError, match="evil.pt: refused, the file would construct"):
        mmnet_on(tmp_path / "evil.pt", "RN-tiny")
    assert not (tmp_path / "pwned").exists()


def test_weights_of_another_architecture(tmp_path):
    torch.save(reference_clip("ViT-tiny").state_dict(), tmp_path / "vit.pt")
    with pytest.raises(WeightsError, match=r"vit.pt: these weights do not fit backbone RN-tiny: the file holds a ViT with 16-pixel patches"):
        mmnet_on(tmp_path / "vit.pt", "RN-tiny")


def test_weights_of_the_same_kind_but_another_size(tmp_path):
    clip = open_clip.create_model("RN-tiny", pretrained=None, force_quick_gelu=True)
    state = clip.state_dict()
    state["visual.conv1.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match=r"of another shape \(e.g. visual.conv1.weight: file \(8, 3, 3, 3\), model \(4, 3, 3, 3\)\)"):
        mmnet_on(tmp_path / "other.pt", "RN-tiny")


def test_openai_weights_need_quick_gelu(tmp_path):
    write_openai_archive(reference_clip("RN-tiny"), tmp_path / "RN.pt")
    with pytest.raises(WeightsError, match="trained with QuickGELU; set model.quick_gelu=true"):
        mmnet_on(tmp_path / "RN.pt", "RN-tiny", quick_gelu=False)


def test_unknown_tag():
    with pytest.raises(WeightsError, match="'no-such-tag' is neither a file nor an open_clip pretrained tag of RN-tiny"):
        build_mmnet(tiny_model_config("RN-tiny", clip_weights="no-such-tag"))


@pytest.mark.parametrize("backbone", ["RN-tiny", "ViT-tiny"])
def test_create_clip_builds_what_open_clip_create_model_builds(backbone):
    torch.manual_seed(0)
    ours = create_clip(clip_model_config(backbone), image_size=96, context_length=22, quick_gelu=True)
    torch.manual_seed(0)
    theirs = open_clip.create_model(
        backbone, pretrained=None, force_quick_gelu=True, force_image_size=96, force_context_length=22
    )
    assert str(ours) == str(theirs)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert ours_state.keys() == theirs_state.keys()
    for key in ours_state:
        assert torch.equal(ours_state[key], theirs_state[key]), key


@pytest.mark.parametrize("backbone, size", [("RN50", 480), ("RN101", 480), ("ViT-B-16", 480), ("ViT-L-14", 476)])
def test_paper_backbones_have_open_clips_shapes_at_the_working_size(backbone, size):
    with torch.device("meta"):
        ours = create_clip(clip_model_config(backbone), image_size=size, context_length=17, quick_gelu=True)
        theirs = open_clip.create_model(
            backbone, force_quick_gelu=True, force_image_size=size, force_context_length=17, device=torch.device("meta")
        )
    assert str(ours) == str(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.visual.conv1.weight.is_meta


def test_building_random_towers_warns_of_nothing(caplog, capfd):
    with caplog.at_level(logging.DEBUG):
        build_mmnet(tiny_model_config("RN-tiny"))
        build_mmnet(tiny_model_config("ViT-tiny"))
    assert caplog.records == []
    out, err = capfd.readouterr()
    assert "pretrained" not in out + err


def test_modeling_reads_neither_files_nor_configs():
    """modeling/ builds modules; weight files are mmnet.weights', settings mmnet.config's, and
    model configs by name (files of open_clip's and ours) mmnet.backbones'."""
    for path in sorted((Path(mmnet.__file__).parent / "modeling").glob("*.py")):
        source = path.read_text()
        assert "add_model_config" not in source and "Path(" not in source and "open(" not in source, path.name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                package = "mmnet.modeling".rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(part for part in (package, node.module) if part)
                modules = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for module in modules:
                assert module not in ("mmnet.weights", "mmnet.config", "mmnet.backbones"), f"{path.name} imports {module}"
