"""Evaluation: one post-processing to the original size, and each image encoded once for all its expressions."""

from __future__ import annotations

import contextlib
from collections import Counter

import numpy as np
import pytest
import torch

from mmnet import Predictor, distributed
from mmnet.config import Config, ConfigError, DataConfig, EvalConfig, TrainConfig
from mmnet.data.datasets import ExpressionBatches, collate_images
from mmnet.data.refer import ReferIndex
from mmnet.data.transforms import letterbox_geometry
from mmnet.device import autocast, resolve_precision
from mmnet.engine import batch_iou
from mmnet.evaluate import evaluate, split_loader
from mmnet.modeling import MMNetOutput
from mmnet.postprocess import probabilities, segment
from tiny import build_tiny, tiny_model_config, with_distinct_queries

CPU = distributed.Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _config(root, batch_size: int) -> Config:
    return Config(
        model=tiny_model_config(num_queries=4),
        data=DataConfig(root=str(root), dataset="synthref", split_by="unc", num_workers=0),
        eval=EvalConfig(batch_size=batch_size, threshold=0.5),
    )


@pytest.mark.parametrize("split", ["val", "testA"])
def test_images_encoded_once_give_the_records_of_one_image_per_expression(synth_root, split, monkeypatch):
    config = _config(synth_root, batch_size=5)
    index = ReferIndex.from_config(config.data, progress=False)
    model = with_distinct_queries(build_tiny(num_queries=4), seed=3).eval()
    # A threshold inside the untrained model's range of probabilities, so that masks are partly right.
    first = next(iter(split_loader(index, split, config, CPU)))
    with torch.no_grad():
        logits = model(first["image"][first["image_index"]], first["tokens"]).logits
    threshold = float(logits.sigmoid().quantile(0.7))
    encoded = []
    encode = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda images: encoded.append(images.shape[0]) or encode(images))

    def run(by_image: bool):
        encoded.clear()
        loader = split_loader(index, split, config, CPU, by_image=by_image)
        metrics, records = evaluate(model=model, loader=loader, ctx=CPU, threshold=threshold, precision="fp32")
        return metrics, records, sum(encoded)

    grouped_metrics, grouped, grouped_encodings = run(True)
    single_metrics, single, single_encodings = run(False)
    per_image = Counter(index.ref(s.ref_id).image_id for s in index.sentences(split))
    assert max(per_image.values()) > 1  # several expressions about an image, so sharing is tested
    assert grouped_encodings == len(per_image) and single_encodings == len(single) == sum(per_image.values())
    assert grouped == single  # intersection, union and IoU of every expression, exactly
    assert any(0 < r["iou"] < 1 for r in grouped)  # predictions that overlap the truth in part
    # The diagnostics are sums over other batches, so they agree to rounding.
    assert grouped_metrics == {**single_metrics, "diagnostics": pytest.approx(single_metrics["diagnostics"], abs=1e-5)}


def test_batches_hold_whole_images_up_to_the_expression_budget():
    # counts 3 + 2 fit 5; 5 fills a batch; 1 + 7 would not fit, and 7 exceeds 5 alone
    assert list(ExpressionBatches(range(5), [3, 2, 5, 1, 7], budget=5)) == [[0, 1], [2], [3], [4]]
    assert len(ExpressionBatches([4, 1], [3, 2, 5, 1, 7], budget=5)) == 2  # the shard's order: [4], [1]


def test_collated_expressions_point_at_their_image():
    def item(image_id, texts):
        return {
            "image": torch.full((3, 4, 4), float(image_id)),
            "geometry": letterbox_geometry(height=4, width=4, size=4),
            "image_id": image_id,
            "expressions": [
                {"tokens": torch.tensor([t]), "mask": torch.zeros(4, 4), "objects": 1, "ref_id": t, "sent_id": 10 * t, "sentence": str(t)}
                for t in texts
            ],
        }

    batch = collate_images([item(7, [1, 2, 3]), item(8, [4])])
    assert batch["image"].shape == (2, 3, 4, 4) and batch["image_id"] == [7, 8]
    assert batch["tokens"].tolist() == [[1], [2], [3], [4]] and batch["image_index"].tolist() == [0, 0, 0, 1]
    assert batch["sent_id"] == [10, 20, 30, 40]


def test_segment_maps_each_expression_to_its_own_image_size():
    logits = torch.tensor([[-2.0, 0.0], [1.0, 3.0]]).expand(2, 1, 2, 2).clone()
    logits[1] = -logits[1]
    outputs = MMNetOutput(logits=logits, query_masks=logits.repeat(1, 3, 1, 1), query_scores=torch.full((2, 3), 1 / 3), word_attention=torch.zeros(2, 3, 5))
    square = letterbox_geometry(height=2, width=2, size=2)  # the canvas itself: values pass unchanged
    wide = letterbox_geometry(height=1, width=2, size=2)
    first, second = segment(outputs, [square, wide], threshold=0.5)
    torch.testing.assert_close(first.probability, logits[0, 0].sigmoid())
    assert first.mask.tolist() == [[False, False], [True, True]]  # sigmoid(0) = 0.5 is not above 0.5
    assert second.probability.shape == (1, 2) and first.query_probabilities is None
    (shown,) = segment(outputs.take(slice(0, 1)), [square], threshold=0.5, queries=True)
    torch.testing.assert_close(shown.query_probabilities, logits[0].sigmoid().expand(3, 2, 2))
    torch.testing.assert_close(probabilities(logits[0], square), logits[0].sigmoid())
    with pytest.raises(ValueError, match="1 geometries for 2 expressions"):
        segment(outputs, [square], threshold=0.5)


def test_training_iou_reads_the_prediction_through_the_same_post_processing():
    # 2 x 2 logits over an 8 x 8 canvas, read bilinearly at the canvas's pixel centres: along
    # each axis the source position is clamp((i - 1.5) / 4, 0, 1), so 1 - s is 1, 1, 7/8, 5/8,
    # 3/8, 1/8, 0, 0, and sample 0's logit is 8 (1 - s_x)(1 - s_y) - 4, above 0 where the
    # product exceeds 1/2: 15 pixels, all inside the true 4 x 4 corner. IoU 15/16 (at the
    # logits' own 2 x 2 it would be 1).
    logits = torch.tensor([[[[4.0, -4.0], [-4.0, -4.0]]], [[[4.0, 4.0], [4.0, 4.0]]]])
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, :4, :4] = 1
    assert batch_iou(logits, masks, 0.5).tolist() == pytest.approx([15 / 16, 16 / 64])


def test_evaluation_precision_is_its_own_setting_not_trainings(monkeypatch):
    with pytest.raises(ConfigError, match=r"eval.precision"):
        EvalConfig(precision="fp16").validate()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})  # a CPU without native bf16
    cpu = torch.device("cpu")
    assert isinstance(autocast(cpu, "auto"), contextlib.nullcontext) and isinstance(autocast(cpu, "fp32"), contextlib.nullcontext)
    model = with_distinct_queries(build_tiny(num_queries=4), seed=3)
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)

    def predicted(**sections):
        config = Config(model=tiny_model_config(num_queries=4), **sections)
        return Predictor(model, config, device="cpu").predict(image, "the blue triangle").probability

    full = predicted(train=TrainConfig(bf16=True))  # auto on this CPU: fp32, whatever training used
    assert np.array_equal(full, predicted(eval=EvalConfig(precision="fp32")))
    low = predicted(eval=EvalConfig(precision="bf16"), train=TrainConfig(bf16=False))
    assert not np.array_equal(low, full) and np.abs(low - full).max() < 0.05


def test_evaluation_and_validation_run_at_the_evaluation_precision(synth_root, tmp_path, monkeypatch):
    from mmnet import evaluate as evaluate_module
    from mmnet.evaluate import evaluate_checkpoint
    from mmnet.train import train

    asked = []
    real = evaluate_module.autocast
    monkeypatch.setattr(evaluate_module, "autocast", lambda device, precision: asked.append(precision) or real(device, precision))
    config = _config(synth_root, batch_size=4)
    config.train = TrainConfig(epochs=1, batch_size=2, output_dir=str(tmp_path / "run"), tensorboard=False, bf16=True)
    config.eval.precision = "fp32"
    train(config, device="cpu")  # validation after the epoch
    assert asked and set(asked) == {"fp32"}
    asked.clear()
    evaluate_checkpoint(tmp_path / "run" / "best", ["val"], device="cpu", overrides=("eval.precision=bf16",))
    assert asked and set(asked) == {"bf16"}


def test_no_expression_is_decoded_with_more_than_the_batch_size(synth_root, monkeypatch):
    config = _config(synth_root, batch_size=2)
    index = ReferIndex.from_config(config.data, progress=False)
    model = build_tiny(num_queries=4).eval()
    decoded = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda visual, tokens: decoded.append(tokens.shape[0]) or decode(visual, tokens))
    loader = split_loader(index, "val", config, CPU)
    assert max(len(batch["tokens"]) for batch in loader) > 2  # an image with more expressions than the batch size
    _, records = evaluate(model=model, loader=loader, ctx=CPU, threshold=0.5, precision="fp32", batch_size=2)
    assert max(decoded) == 2 and sum(decoded) == len(records) == len(index.sentences("val"))


def test_a_process_with_no_images_of_the_split_reads_nothing(synth_root):
    config = _config(synth_root, batch_size=4)
    index = ReferIndex.from_config(config.data, progress=False)
    images = len({index.ref(s.ref_id).image_id for s in index.sentences("val")})
    spare = distributed.Context(rank=images, world_size=images + 1, local_rank=0, device=torch.device("cpu"))
    assert list(split_loader(index, "val", config, spare)) == []
    assert sum(len(b["tokens"]) for r in range(images) for b in split_loader(index, "val", config, spare.__class__(rank=r, world_size=images + 1, local_rank=0, device=spare.device))) == len(index.sentences("val"))


@pytest.mark.parametrize(
    "capabilities, expected",
    [({"amx_bf16": True}, "bf16"), ({"avx512_bf16": True}, "bf16"), ({"avx2": True, "avx512_f": True}, "fp32"), ({}, "fp32")],
)
def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_it_natively(monkeypatch, capabilities, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") == expected
    assert resolve_precision(cpu, "fp32") == "fp32" and resolve_precision(cpu, "bf16") == "bf16"
    assert isinstance(autocast(cpu, "auto"), contextlib.nullcontext) == (expected == "fp32")
