"""Generalized referring segmentation: the no-target head, its loss, its flag in every output,
the GRES metrics worked by hand, and single-target models exactly as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmnet import Predictor
from mmnet.checkpoint import load_pretrained, save_pretrained
from mmnet.cli import main
from mmnet.config import Config, EvalConfig
from mmnet.data.transforms import letterbox_geometry
from mmnet.metrics import format_table, generalized, summarize
from mmnet.modeling import MMNetOutput, mmnet_loss
from mmnet.postprocess import segment
from tiny import build_tiny, random_images, tiny_model_config, tokens_for, with_distinct_queries

TEXTS = ["both red squares", "the purple star", "the circle on the left"]


def _predictor(no_target: bool, *, bias: float = 0.0, seed: int = 0) -> Predictor:
    """A tiny predictor; with the head, its last layer set by hand to say "no target" with
    probability sigmoid(bias) whatever it reads. The random model's probabilities are small: its
    threshold is low enough for every mask of ``TEXTS`` on ``_picture()`` to hold pixels."""
    model = with_distinct_queries(build_tiny(seed=seed, num_queries=5, no_target=no_target), seed=2)
    if no_target:
        with torch.no_grad():
            model.no_target_head.mlp[-1].weight.zero_()
            model.no_target_head.mlp[-1].bias.fill_(bias)
    config = Config(model=tiny_model_config(num_queries=5, no_target=no_target), eval=EvalConfig(threshold=1e-6))
    return Predictor(model, config, device="cpu")


def _picture() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(45, 70, 3), dtype=np.uint8)


# --- the model -----------------------------------------------------------------------------------


def test_the_head_exists_only_when_asked_for_and_adds_only_its_own_weights():
    plain, headed = build_tiny(seed=0), build_tiny(seed=0, no_target=True)
    assert plain.no_target_head is None
    plain_state, headed_state = plain.state_dict(), headed.state_dict()
    extra = set(headed_state) - set(plain_state)
    assert extra and all(name.startswith("no_target_head.") for name in extra)
    assert set(plain_state) <= set(headed_state)
    # The head is built last: every other weight is drawn exactly as without it.
    assert all(torch.equal(plain_state[name], headed_state[name]) for name in plain_state)


def test_the_head_gives_one_logit_per_expression_and_changes_no_other_output():
    images, tokens = random_images(3), tokens_for(TEXTS)
    plain, headed = build_tiny(seed=0).eval(), build_tiny(seed=0, no_target=True).eval()
    with torch.no_grad():
        a, b = plain(images, tokens), headed(images, tokens)
    assert a.no_target is None
    assert b.no_target.shape == (3,) and torch.isfinite(b.no_target).all()
    for name in ("logits", "query_masks", "query_scores", "word_attention"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)


def test_the_head_reads_the_image_and_the_expression():
    model = build_tiny(seed=0, no_target=True).eval()
    with torch.no_grad():
        base = model(random_images(1, seed=1), tokens_for(TEXTS[:1])).no_target
        other_image = model(random_images(1, seed=5), tokens_for(TEXTS[:1])).no_target
        other_text = model(random_images(1, seed=1), tokens_for(TEXTS[1:2])).no_target
    # fp32 rounding alone would move them by about 1e-7.
    assert (base - other_image).abs().item() > 1e-5
    assert (base - other_text).abs().item() > 1e-5


def test_loss_adds_the_bce_of_the_no_target_logit_against_an_empty_truth_and_reaches_the_head():
    model = build_tiny(seed=0, no_target=True)
    images, tokens = random_images(2), tokens_for(TEXTS[:2])
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, :, 10:30, 10:30] = 1  # the first has a target, the second none
    outputs = model(images, tokens)
    parts = mmnet_loss(outputs, masks, query_loss="none", query_loss_weight=0.0, score_loss_weight=0.0, no_target_weight=0.5)
    z = outputs.no_target.detach()
    by_hand = 0.5 * -(torch.log(1 - torch.sigmoid(z[0])) + torch.log(torch.sigmoid(z[1]))) / 2
    torch.testing.assert_close(parts["no_target"].detach(), by_hand)
    torch.testing.assert_close(parts["loss"].detach(), (parts["mask"] + parts["no_target"]).detach())
    parts["loss"].backward()
    assert model.no_target_head.mlp[-1].weight.grad.abs().sum() > 0
    # Without the weight, or without the head, there is no such term.
    assert "no_target" not in mmnet_loss(outputs, masks, query_loss="none", query_loss_weight=0.0, score_loss_weight=0.0)
    plain = build_tiny(seed=0)(images, tokens)
    assert "no_target" not in mmnet_loss(plain, masks, query_loss="none", query_loss_weight=0.0, score_loss_weight=0.0, no_target_weight=1.0)


def test_the_no_target_label_comes_from_the_dataset_where_it_says():
    model = build_tiny(seed=0, no_target=True)
    outputs = model(random_images(2), tokens_for(TEXTS[:2]))
    masks = torch.ones(2, 1, 64, 64)  # neither empty: only the labels say which names nothing
    labels = torch.tensor([False, True])
    parts = mmnet_loss(
        outputs, masks, query_loss="none", query_loss_weight=0.0, score_loss_weight=0.0, no_target_weight=1.0, no_target=labels
    )
    z = outputs.no_target.detach()
    by_hand = -(torch.log(1 - torch.sigmoid(z[0])) + torch.log(torch.sigmoid(z[1]))) / 2
    torch.testing.assert_close(parts["no_target"].detach(), by_hand)


def test_training_samples_say_how_many_objects_they_name(generalized_root):
    from mmnet.data.datasets import ReferTrainDataset
    from mmnet.data.refer import ReferIndex

    index = ReferIndex.load(generalized_root, "synthgref", "unc", progress=False)
    dataset = ReferTrainDataset(index, split="train", image_size=64, context_length=17)
    items = [dataset[i] for i in range(len(dataset))]
    assert [item["objects"] for item in items] == [len(ref.ann_ids) for ref in dataset.refs]
    assert {0, 1} <= {item["objects"] for item in items} and max(item["objects"] for item in items) > 1
    assert all((item["mask"].sum() == 0) == (item["objects"] == 0) for item in items)


def test_segment_empties_the_mask_where_the_no_target_probability_passes_its_threshold():
    logits = torch.full((2, 1, 8, 8), 4.0)  # every pixel the object
    outputs = MMNetOutput(
        logits=logits,
        query_masks=logits.repeat(1, 2, 1, 1),
        query_scores=torch.full((2, 2), 0.5),
        word_attention=torch.full((2, 2, 17), 1 / 17),
        no_target=torch.tensor([2.0, -2.0]),  # probabilities 0.881 and 0.119
    )
    geometry = letterbox_geometry(height=8, width=8, size=8)
    first, second = segment(outputs, [geometry] * 2, threshold=0.5, no_target_threshold=0.5)
    assert first.no_target and not first.mask.any() and first.no_target_probability == pytest.approx(0.8808, abs=1e-4)
    assert not second.no_target and second.mask.all() and second.no_target_probability == pytest.approx(0.1192, abs=1e-4)
    # The probability map itself is kept for showing; a higher threshold keeps the first mask.
    assert first.probability.min() > 0.98
    (kept, _) = segment(outputs, [geometry] * 2, threshold=0.5, no_target_threshold=0.9)
    assert not kept.no_target and kept.mask.all()


# --- the predictor, the command, the export ------------------------------------------------------


def test_predictor_flags_no_target_and_empties_the_mask_when_the_head_says_so():
    image = _picture()
    plain = _predictor(False).predict(image, TEXTS)
    absent = _predictor(True, bias=5.0).predict(image, TEXTS)
    present = _predictor(True, bias=-5.0).predict(image, TEXTS)
    for p, a, t in zip(plain, absent, present):
        assert p.no_target_probability is None and not p.no_target
        assert a.no_target and a.no_target_probability == pytest.approx(float(torch.sigmoid(torch.tensor(5.0))), abs=1e-6)
        assert not a.mask.any()
        assert not t.no_target and t.no_target_probability == pytest.approx(float(torch.sigmoid(torch.tensor(-5.0))), abs=1e-6)
        # Where the head lets it through, the mask is the single-target model's, pixel for pixel.
        np.testing.assert_array_equal(t.mask, p.mask)
        np.testing.assert_array_equal(a.probability, p.probability)
    assert all(p.mask.any() for p in plain)  # so that an emptied mask shows


def test_single_target_checkpoint_from_before_the_head_loads_and_predicts_exactly_as_before(tmp_path):
    predictor = _predictor(False)
    before = predictor.predict(_picture(), TEXTS)
    save_pretrained(predictor.model, predictor.config, tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["model"]["no_target"], saved["eval"]["no_target_threshold"], saved["train"]["no_target_weight"]
    config_file.write_text(json.dumps(saved))  # as written before these settings existed
    model, config = load_pretrained(tmp_path / "ckpt")
    assert model.no_target_head is None and config.model.no_target is False
    after = Predictor(model, config, device="cpu").predict(_picture(), TEXTS)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.probability, b.probability)
        np.testing.assert_array_equal(a.query_scores, b.query_scores)
        assert a.no_target_probability is None and not a.no_target


def test_a_checkpoint_with_the_head_round_trips(tmp_path):
    predictor = _predictor(True, bias=0.3)
    save_pretrained(predictor.model, predictor.config, tmp_path / "ckpt")
    loaded = Predictor.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert loaded.model.no_target_head is not None
    a, b = predictor.predict(_picture(), TEXTS[0]), loaded.predict(_picture(), TEXTS[0])
    assert a.no_target_probability == b.no_target_probability


@pytest.mark.parametrize(
    "bias, options, said, empty",
    [
        (5.0, [], "nothing matches (no-target probability 0.99)", True),
        (-5.0, [], "(no-target probability 0.01)", False),
        (5.0, ["--no-target-threshold", "0.999"], "% of the image (no-target probability 0.99)", False),
    ],
)
def test_predict_command_says_nothing_matches(tmp_path, capsys, bias, options, said, empty):
    from PIL import Image

    predictor = _predictor(True, bias=bias)
    save_pretrained(predictor.model, predictor.config, tmp_path / "ckpt")
    Image.fromarray(_picture()).save(tmp_path / "photo.png")
    args = ["predict", "--checkpoint", str(tmp_path / "ckpt"), "--image", str(tmp_path / "photo.png"), "--text", TEXTS[1]]
    assert main([*args, *options, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert said in printed
    mask = np.asarray(Image.open(next((tmp_path / "out").glob("*_mask.png"))))
    assert (mask.max() == 0) == empty


# --- the GRES metrics, by hand -------------------------------------------------------------------


def test_gres_metrics_of_six_expressions_worked_by_hand():
    # (I, U, no target, predicted area):
    #   target,    (6, 8),  predicted 7  -> IoU 0.75, a target found
    #   target,    (0, 5),  predicted 0  -> IoU 0,    nothing predicted: a miss for T-acc
    #   target,    (4, 4),  predicted 4  -> IoU 1
    #   no target, (0, 0),  predicted 0  -> IoU 1,    nothing predicted: right
    #   no target, (0, 3),  predicted 3  -> IoU 0,    something predicted: wrong
    #   no target, (0, 0),  predicted 0  -> IoU 1
    metrics = generalized([6, 0, 4, 0, 0, 0], [8, 5, 4, 0, 3, 0], [False, False, False, True, True, True], [7, 0, 4, 0, 3, 0])
    assert metrics["gIoU"] == pytest.approx(100 * (0.75 + 0 + 1 + 1 + 0 + 1) / 6)  # 62.5
    assert metrics["cIoU"] == pytest.approx(100 * 10 / 20)  # 50
    assert metrics["N-acc"] == pytest.approx(100 * 2 / 3)
    assert metrics["T-acc"] == pytest.approx(100 * 2 / 3)
    assert metrics["no_target_count"] == 3


def test_gres_accuracies_are_none_where_their_kind_is_absent_and_the_table_shows_a_dash():
    only_targets = summarize([1, 2], [2, 2], no_target=[False, False], predicted_areas=[1, 2])
    assert only_targets["N-acc"] is None and only_targets["T-acc"] == 100.0
    only_none = generalized([0], [0], [True], [0])
    assert only_none["T-acc"] is None and only_none["N-acc"] == 100.0 and only_none["gIoU"] == 100.0
    table = format_table({"val": only_targets})
    assert "N-acc" in table.splitlines()[0] and table.splitlines()[1].split()[-3] == "-"
    assert "gIoU" not in format_table({"val": summarize([1], [2])})


def test_gres_metrics_refuse_inconsistent_input():
    with pytest.raises(ValueError, match="differ in length"):
        generalized([1, 0], [2, 0], [False], [1, 0])
    with pytest.raises(ValueError, match="without a target cannot"):
        generalized([1], [2], [True], [2])
    with pytest.raises(ValueError, match="need both"):
        summarize([1], [2], no_target=[False])


def test_predictor_refuses_a_no_target_threshold_outside_0_1():
    from mmnet.config import ConfigError

    predictor = _predictor(True)
    with pytest.raises(ConfigError, match="no_target_threshold must lie between 0 and 1, got 1.5"):
        Predictor(predictor.model, predictor.config, device="cpu", no_target_threshold=1.5)


@pytest.mark.parametrize("bias", [5.0, -5.0])
def test_evaluation_reports_gres_metrics_from_the_dataset_and_the_head(generalized_root, bias):
    from mmnet import distributed
    from mmnet.config import DataConfig
    from mmnet.data.refer import ReferIndex
    from mmnet.evaluate import evaluate, split_loader

    cpu = distributed.Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    config = Config(
        model=tiny_model_config(num_queries=5, no_target=True),
        data=DataConfig(root=str(generalized_root), dataset="synthgref", split_by="unc", num_workers=0),
        eval=EvalConfig(batch_size=8, threshold=1e-6),
    )
    index = ReferIndex.from_config(config.data, progress=False)
    model = _predictor(True, bias=bias).model
    metrics, records = evaluate(
        model=model, loader=split_loader(index, "val", config, cpu), ctx=cpu, threshold=1e-30, precision="fp32", no_target_threshold=0.5
    )
    # The records carry each expression's count of objects, as the index has it.
    objects = {s.sent_id: len(index.ref(s.ref_id).ann_ids) for s in index.sentences("val")}
    assert {r["sent_id"]: r["objects"] for r in records} == objects
    assert 0 < sum(n == 0 for n in objects.values()) < len(objects)  # both kinds, so both accuracies are defined
    assert metrics["no_target_count"] == sum(n == 0 for n in objects.values())
    if bias > 0:  # "nothing" everywhere: every no-target expression right, every other wrong
        assert all(r["predicted_area"] == 0 for r in records)
        assert metrics["N-acc"] == 100.0 and metrics["T-acc"] == 0.0
        assert metrics["gIoU"] == pytest.approx(100 * metrics["no_target_count"] / len(records))
    else:  # at this threshold (1e-30) every mask holds pixels: every no-target expression wrong
        assert all(r["predicted_area"] > 0 for r in records)
        assert metrics["N-acc"] == 0.0 and metrics["T-acc"] == 100.0
    assert metrics["gIoU"] == pytest.approx(metrics["mIoU"]) and metrics["cIoU"] == pytest.approx(metrics["oIoU"])


def test_a_single_target_model_on_a_single_target_set_reports_no_gres_metrics(synth_root):
    from mmnet import distributed
    from mmnet.config import DataConfig
    from mmnet.data.refer import ReferIndex
    from mmnet.evaluate import evaluate, split_loader

    cpu = distributed.Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    config = Config(
        model=tiny_model_config(num_queries=5),
        data=DataConfig(root=str(synth_root), dataset="synthref", split_by="unc", num_workers=0),
        eval=EvalConfig(batch_size=8),
    )
    index = ReferIndex.from_config(config.data, progress=False)
    metrics, records = evaluate(model=_predictor(False).model, loader=split_loader(index, "val", config, cpu), ctx=cpu, threshold=0.35, precision="fp32")
    assert "gIoU" not in metrics and all(r["objects"] == 1 and r["no_target_probability"] is None for r in records)
