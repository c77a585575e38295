"""The one config type: YAML with a base file, key=value overrides, clear errors; configs/ builds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import open_clip
import pytest
import torch

import mmnet
from mmnet.build import build_mmnet
from mmnet.config import Config, ConfigError, ModelConfig, config_to_dict, load_config, save_config
from mmnet.info import model_figures
from tiny import tiny_model_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_overrides_are_typed_and_reach_nested_settings():
    config = load_config(None, ["model.num_queries=8", "model.multi_mask=false", "train.lr=1e-4", "data.root=/tmp/x"])
    assert config.model.num_queries == 8
    assert config.model.multi_mask is False
    assert config.train.lr == pytest.approx(1e-4)
    assert config.data.root == "/tmp/x"
    assert config.model.clip_weights is None
    assert load_config(None, ["model.clip_weights=w.pt"]).model.clip_weights == "w.pt"


def test_a_file_extends_its_base_and_round_trips(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  hidden_dim: 256\n  num_queries: 16\ntrain:\n  epochs: 7\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel:\n  num_queries: 8\n")
    config = load_config(tmp_path / "child.yaml", ["train.epochs=9"])
    assert (config.model.hidden_dim, config.model.num_queries, config.train.epochs) == (256, 8, 9)
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_querys=8", r"unknown setting 'model.num_querys'; known here: backbone"),
        ("model.num_queries=many", r"'model.num_queries' must be of type int, got 'many'"),
        ("model.multi_mask=3", r"'model.multi_mask' must be of type bool, got 3"),
        ("train.lr=fast", r"'train.lr' must be of type float"),
        ("model.num_queries=0", r"model.num_queries must be at least 1"),
        ("model.num_heads=0", r"model.num_heads must be at least 1"),
        ("model.image_size=-32", r"model.image_size must be at least 1"),
        ("model.decoder_layers=0", r"model.decoder_layers must be at least 1"),
        ("model.hidden_dim=100", r"multiple of model.num_heads"),
        ("train.epochs=0", r"train.epochs must be at least 1"),
        ("train.lr=0", r"train.lr must be above 0"),
        ("train.grad_clip=-1", r"train.grad_clip must not be negative"),
        ("eval.threshold=1.5", r"eval.threshold must lie between 0 and 1"),
        ("data.num_workers=-1", r"data.num_workers must not be negative"),
        ("model.mask_sum=mean", r"model.mask_sum must be one of probability, logit; got 'mean'"),
        ("model.init=xavier", r"model.init must be one of he, pytorch; got 'xavier'"),
        ("model.word_logit_scale=0", r"model.word_logit_scale must be above 0 or null"),
        ("train.query_loss=worst", r"train.query_loss must be one of none, all, best; got 'worst'"),
        ("train.dice_weight=-1", r"train.dice_weight must not be negative"),
        ("train.target_resize=bilinear", r"train.target_resize must be one of area, nearest; got 'bilinear'"),
        ("eval.no_target_threshold=0", r"eval.no_target_threshold must lie between 0 and 1"),
        ("train.no_target_weight=-1", r"train.no_target_weight must not be negative"),
        ("modelnum_queries", r"not of the form section.key=value"),
        ("optimizer.lr=1", r"unknown setting 'optimizer'"),
    ],
)
def test_bad_settings_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_no_target_head_without_its_loss_is_refused():
    with pytest.raises(ConfigError, match="model.no_target needs train.no_target_weight above 0"):
        load_config(None, ["model.no_target=true", "train.no_target_weight=0"])
    assert load_config(None, ["model.no_target=false", "train.no_target_weight=0"]).train.no_target_weight == 0


def test_bad_files_are_refused_with_their_path(tmp_path):
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'none.yaml'}"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("model:\n  backbon: RN50\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown setting 'model.backbon'"):
        load_config(tmp_path / "typo.yaml")


def test_unknown_backbone_is_refused_by_validate_with_the_ones_there_are():
    with pytest.raises(ConfigError, match="unknown model.backbone 'RN51'; the paper's are RN50, RN101, ViT-B-16, ViT-L-14, the small ones RN-tiny, ViT-tiny"):
        ModelConfig(backbone="RN51").validate()
    with pytest.raises(ConfigError, match="unknown model.backbone 'ViT-B/16'"):
        load_config(None, ["model.backbone=ViT-B/16"])


@pytest.mark.parametrize(
    "backbone, fits, refused, message",
    [
        ("RN50", 480, 464, r"model.image_size=464 must be a multiple of 32 for RN50"),
        ("RN-tiny", 64, 80, r"model.image_size=80 must be a multiple of 32 for RN-tiny"),
        ("ViT-B-16", 480, 464, r"model.image_size=464 must be a multiple of 32 for ViT-B-16 \(patch 16.*ViT-L-14 uses 476"),
        ("ViT-L-14", 476, 480, r"model.image_size=480 must be a multiple of 28 for ViT-L-14 \(patch 14.*ViT-L-14 uses 476"),
        ("ViT-tiny", 64, 80, r"must be a multiple of 32 for ViT-tiny"),
    ],
)
def test_image_size_must_fit_the_towers_grid(backbone, fits, refused, message):
    ModelConfig(backbone=backbone, image_size=fits).validate()
    with pytest.raises(ConfigError, match=message):
        ModelConfig(backbone=backbone, image_size=refused).validate()


@pytest.mark.parametrize(
    "backbone, message",
    [
        ("ViT-B-16-SigLIP", r"MMNet's text encoder needs CLIP's own text transformer"),  # a custom text tower
        ("ViT-H-14-worldwide", r"MMNet's text encoder needs CLIP's own text transformer"),  # another tokenizer
        ("ViT-L-14-CLIPA", r"MMNet's text encoder needs CLIP's own text transformer"),
        ("convnext_base", r"has a timm image tower"),
    ],
)
def test_backbones_whose_towers_mmnet_cannot_use_are_refused(backbone, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(backbone=backbone, image_size=448).validate()


def test_vits_pooled_otherwise_than_by_their_class_token_are_refused(tmp_path):
    model_config = json.loads((Path(mmnet.__file__).parent / "clip_configs" / "ViT-tiny.json").read_text())
    model_config["vision_cfg"]["pool_type"] = "avg"
    (tmp_path / "ViT-tiny-avg-pooled.json").write_text(json.dumps(model_config))
    open_clip.add_model_config(tmp_path / "ViT-tiny-avg-pooled.json")
    with pytest.raises(ConfigError, match="model.backbone=ViT-tiny-avg-pooled: only ViTs pooled by their class token"):
        ModelConfig(backbone="ViT-tiny-avg-pooled", image_size=64).validate()


def test_configs_cover_every_dataset_and_backbone_of_table_1():
    pairs = {(c.data.dataset, c.model.backbone) for c in map(load_config, CONFIGS) if c.train.epochs == 100}
    for dataset in ("refcoco", "refcoco+", "refcocog"):
        for backbone in ("ViT-B-16", "ViT-L-14"):
            assert (dataset, backbone) in pairs


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_builds_at_the_paper_settings(path):
    config = load_config(path)
    assert isinstance(config, Config)
    # G-Ref's and gRefCOCO's expressions are longer than RefCOCO's.
    assert config.model.context_length == (22 if config.data.dataset in ("refcocog", "grefcoco") else 17)
    assert config.model.no_target == (config.data.dataset in ("grefcoco", "synthgref"))
    if not path.stem.startswith("demo"):  # Section 4.1
        m, t = config.model, config.train
        assert m.image_size == (476 if m.backbone == "ViT-L-14" else 480)
        assert (m.hidden_dim, m.num_heads, m.ffn_dim, m.decoder_layers, m.num_queries) == (512, 8, 2048, 3, 24)
        assert (t.lr, t.batch_size, t.lr_power) == (1e-5, 64, 0.9)
        assert t.epochs in (50, 100)
        assert config.eval.threshold == 0.35
    with torch.device("meta"):  # shapes without memory or time
        model = build_mmnet(config.model, load_clip_weights=False)
        out = model(torch.empty(2, 3, config.model.image_size, config.model.image_size), torch.zeros(2, config.model.context_length, dtype=torch.long))
    side = 4 * config.model.image_size // (14 if "14" in config.model.backbone else 16)
    assert out.logits.shape == (2, 1, side, side)
    assert out.query_masks.shape == (2, config.model.num_queries, side, side)


def test_the_paper_text_config_is_the_ablation_setting_with_every_departure_undone():
    configs = {p.stem: load_config(p) for p in CONFIGS}
    text, ablation = configs["refcocoplus_rn50_ablation_paper_text"], configs["refcocoplus_rn50_ablation"]
    m, t = text.model, text.train
    assert (m.mask_sum, m.word_logit_scale, m.estimator_residual, m.init) == ("logit", None, False, "pytorch")
    assert (t.query_loss, t.dice_weight, t.target_resize) == ("none", 0.0, "nearest")
    assert dataclasses.replace(m, mask_sum="probability", word_logit_scale=10.0, estimator_residual=True, init="he") == ablation.model
    assert dataclasses.replace(t, query_loss="best", target_resize="area", output_dir=ablation.train.output_dir) == ablation.train


def test_info_counts_parts_that_add_up():
    config = tiny_model_config()
    model = build_mmnet(config)
    figures = model_figures(model, config)
    parts = figures["parts"]
    assert sum(p["parameters"] for p in parts.values()) == figures["total"]["parameters"]
    assert sum(p["gflops"] for p in parts.values()) == pytest.approx(figures["total"]["gflops"])
    # The decoder worked out by hand, 2 FLOPs per multiply-add, N = 16 visual tokens, Nq = 4
    # queries, C = 32, F = 64, per layer: self-attention (4 projections of N x C x C, QK^T and AV
    # of N x N x C), cross-attention (projections of N, Nq, Nq, N rows, QK^T and AV of
    # N x Nq x C), the MLP (N x C x F twice).
    n, q, c, f = (config.image_size // 16) ** 2, config.num_queries, config.hidden_dim, config.ffn_dim
    self_attention = 4 * n * c * c + 2 * n * n * c
    cross_attention = (2 * n + 2 * q) * c * c + 2 * n * q * c
    mlp = 2 * n * c * f
    expected = config.decoder_layers * 2 * (self_attention + cross_attention + mlp)
    assert parts["decoder"]["gflops"] * 1e9 == pytest.approx(expected)


def test_the_paper_text_settings_are_one_list_the_ablation_config_and_overrides_agree_on():
    from mmnet.config import PAPER_TEXT, paper_text_overrides

    overridden = load_config(None, paper_text_overrides())
    written = load_config(next(c for c in CONFIGS if c.name == "refcocoplus_rn50_ablation_paper_text.yaml"))
    for config in (overridden, written):
        for section, values in PAPER_TEXT.items():
            assert {key: getattr(getattr(config, section), key) for key in values} == values
    assert config_to_dict(Config().model) != config_to_dict(overridden.model)  # the defaults do depart
