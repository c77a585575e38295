"""The predictor: a checkpoint and one's own image in, masks at the image's size out."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from mmnet import Prediction, Predictor
from mmnet.checkpoint import CheckpointError, save_checkpoint
from mmnet.cli import main
from mmnet import distributed
from mmnet.device import DeviceError, choose_device
from mmnet.config import Config, EvalConfig
from mmnet.data.errors import DataError
from mmnet.data.tokenizer import tokenize, word_tokens
from mmnet.data.transforms import Letterbox, to_original
from mmnet.checkpoint import pretrained_directory
from mmnet.predictor import as_image
from mmnet.visualize import PREDICTION
from test_checkpoint import float_tensor_names, overwrite_with_nan
from tiny import build_tiny, tiny_model_config, with_distinct_queries

TEXTS = ["the blue triangle", "large circle left of the red square", "the lowest shape"]


def tiny_predictor(seed: int = 0, **eval_changes) -> Predictor:
    """A random tiny model whose five queries differ (scores, masks), so that mixing them up shows."""
    config = Config(model=tiny_model_config(num_queries=5), eval=EvalConfig(**eval_changes))
    return Predictor(with_distinct_queries(build_tiny(seed=seed, num_queries=5)), config, device="cpu")


def picture(height: int = 45, width: int = 70, seed: int = 3) -> np.ndarray:
    """A non-square RGB picture, so that the letterbox pads and its inverse has work to do."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_predictions_equal_the_model_forward_mapped_back_to_the_original_size():
    predictor = tiny_predictor(batch_size=2)  # three expressions: two chunks of decoding
    image = picture()
    # A threshold inside the range of probabilities, so that the mask is neither empty nor full.
    predictor.threshold = float(np.median(predictor.predict(image, TEXTS[0]).probability))
    results = predictor.predict(image, TEXTS)

    pixels, geometry = Letterbox(predictor.config.model.image_size)(Image.fromarray(image))
    tokens = tokenize(TEXTS, predictor.config.model.context_length)
    with torch.no_grad():
        outputs = predictor.model(pixels[None].expand(len(TEXTS), -1, -1, -1), tokens)
    probability = to_original(outputs.logits[:, 0].sigmoid(), geometry)
    query_masks = to_original(outputs.query_masks.sigmoid(), geometry)

    assert [r.text for r in results] == TEXTS
    assert 0.2 < results[0].mask.mean() < 0.8
    for b, result in enumerate(results):
        assert result.query_scores.std() > 1e-3 and result.query_masks.std(axis=0).mean() > 1e-3  # queries differ
        assert result.probability.shape == (45, 70) and result.mask.dtype == np.bool_
        assert result.query_masks.shape == (5, 45, 70)
        np.testing.assert_allclose(result.probability, probability[b].numpy(), atol=1e-6)
        np.testing.assert_allclose(result.query_masks, query_masks[b].numpy(), atol=1e-6)
        np.testing.assert_array_equal(result.mask, result.probability > predictor.threshold)
        undecided = np.abs(probability[b].numpy() - predictor.threshold) < 1e-5  # rounding may go either way
        assert np.array_equal(result.mask[~undecided], (probability[b].numpy() > predictor.threshold)[~undecided])
        np.testing.assert_allclose(result.query_scores, outputs.query_scores[b].numpy(), atol=2e-5)
        length = int((tokens[b] != 0).sum())
        np.testing.assert_allclose(result.word_attention, outputs.word_attention[b, :, :length].numpy(), atol=2e-5)
        np.testing.assert_allclose(result.word_attention.sum(axis=1), 1.0, atol=1e-5)
        assert len(result.tokens) == length
        assert result.tokens[0] == "[SOS]" and result.tokens[-1] == "[EOS]"
    assert results[0].tokens[1:-1] == ["the", "blue", "triangle"]


def test_several_expressions_encode_the_image_once(monkeypatch):
    predictor = tiny_predictor(batch_size=2)
    calls = []
    encode = predictor.model.encode_image
    monkeypatch.setattr(predictor.model, "encode_image", lambda images: calls.append(images.shape) or encode(images))
    predictor.predict(picture(), TEXTS)
    assert calls == [torch.Size([1, 3, 64, 64])]


def test_one_expression_gives_one_prediction_and_a_list_gives_a_list():
    predictor = tiny_predictor()
    single = predictor.predict(picture(), TEXTS[0])
    listed = predictor.predict(picture(), [TEXTS[0]])
    assert isinstance(single, Prediction) and isinstance(listed, list) and len(listed) == 1
    np.testing.assert_array_equal(single.probability, listed[0].probability)


def test_a_path_a_pil_image_and_an_array_give_the_same_result(tmp_path):
    predictor = tiny_predictor()
    image = picture()
    Image.fromarray(image).save(tmp_path / "photo.png")
    by_array = predictor.predict(image, TEXTS[0]).probability
    by_pil = predictor.predict(Image.fromarray(image), TEXTS[0]).probability
    by_path = predictor.predict(tmp_path / "photo.png", TEXTS[0]).probability
    np.testing.assert_array_equal(by_array, by_pil)
    np.testing.assert_array_equal(by_array, by_path)
    gray = image[..., 0]
    np.testing.assert_array_equal(
        predictor.predict(gray, TEXTS[0]).probability, predictor.predict(np.repeat(gray[..., None], 3, axis=2), TEXTS[0]).probability
    )


def test_save_and_load_round_trip_gives_identical_outputs(tmp_path):
    predictor = tiny_predictor(seed=7)
    before = predictor.predict(picture(), TEXTS)
    predictor.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Predictor.from_pretrained(tmp_path / "saved", device="cpu")
    after = loaded.predict(picture(), TEXTS)
    assert loaded.config == predictor.config
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.probability, b.probability)
        np.testing.assert_array_equal(a.query_scores, b.query_scores)
    other = tiny_predictor(seed=8).predict(picture(), TEXTS[0]).probability
    assert not np.array_equal(other, before[0].probability)  # the weights, not the config, made the outputs


def test_a_training_runs_folder_loads_its_best_checkpoint(tmp_path):
    predictor = tiny_predictor(seed=2)
    save_checkpoint(tmp_path / "run" / "last", model=build_tiny(seed=9, num_queries=5), config=predictor.config)
    save_checkpoint(tmp_path / "run" / "best", model=predictor.model, config=predictor.config)
    assert pretrained_directory(tmp_path / "run") == tmp_path / "run" / "best"
    loaded = Predictor.from_pretrained(tmp_path / "run", device="cpu")
    np.testing.assert_array_equal(loaded.predict(picture(), TEXTS[0]).probability, predictor.predict(picture(), TEXTS[0]).probability)


def test_a_hub_id_is_fetched_with_only_the_two_files(tmp_path, monkeypatch):
    import huggingface_hub

    tiny_predictor().save_pretrained(tmp_path / "cache")
    asked = {}

    def fake_download(repo_id, allow_patterns, **options):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns, **options)
        return str(tmp_path / "cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    Predictor.from_pretrained("someone/mmnet-tiny", device="cpu", revision="v1")
    assert asked == {"repo_id": "someone/mmnet-tiny", "allow_patterns": ["model.safetensors", "config.json"], "revision": "v1"}


def test_a_hub_id_that_cannot_be_fetched_is_a_clear_error(monkeypatch):
    import huggingface_hub

    def offline(repo_id, allow_patterns, **options):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match=r"no local directory someone/mmnet-tiny, and as a Hub repository id it could not be fetched.*no network"):
        Predictor.from_pretrained("someone/mmnet-tiny")


def test_missing_and_mismatched_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nowhere"):
        Predictor.from_pretrained(tmp_path / "nowhere")
    predictor = tiny_predictor()
    predictor.save_pretrained(tmp_path / "ckpt")
    # config.json says five queries; weights of a four-query model do not fit it
    save_checkpoint(tmp_path / "other", model=build_tiny(num_queries=4), config=predictor.config)
    with pytest.raises(CheckpointError, match=r"other/model.safetensors does not fit this model"):
        Predictor.from_pretrained(tmp_path / "other")


def test_weights_damaged_to_nan_are_refused_naming_the_file_the_tensor_and_how_many(tmp_path):
    tiny_predictor().save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    damaged = float_tensor_names(path)[:2]
    overwrite_with_nan(path, damaged)
    names = "|".join(re.escape(name) for name in damaged)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: NaN or infinite values in 2 tensors \(e.g. ({names})\)"):
        Predictor.from_pretrained(tmp_path / "ckpt", device="cpu")


def test_a_checkpoint_with_the_obsolete_estimator_score_bias_loads_with_equal_outputs(tmp_path):
    from safetensors.torch import load_file, save_file

    predictor = tiny_predictor()
    predictor.save_pretrained(tmp_path / "ckpt")
    weights = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert "estimator.score.bias" not in weights
    weights["estimator.score.bias"] = torch.tensor([0.7])  # as earlier versions saved it
    save_file(weights, str(tmp_path / "ckpt" / "model.safetensors"), metadata={"format": "pt"})
    loaded = Predictor.from_pretrained(tmp_path / "ckpt", device="cpu")
    image = picture()
    np.testing.assert_array_equal(loaded.predict(image, TEXTS[0]).probability, predictor.predict(image, TEXTS[0]).probability)
    # any other key the model lacks is still refused
    weights["decoder.extra"] = torch.zeros(1)
    save_file(weights, str(tmp_path / "ckpt" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"does not fit this model.*decoder.extra"):
        Predictor.from_pretrained(tmp_path / "ckpt", device="cpu")


def test_a_checkpoint_from_before_the_departures_loads_as_the_paper_text_model(tmp_path):
    import json

    from mmnet.checkpoint import EARLIER_MODEL, EARLIER_TRAIN

    paper_text = {"mask_sum": "logit", "word_logit_scale": None, "estimator_residual": False, "init": "pytorch"}
    assert EARLIER_MODEL == paper_text
    assert EARLIER_TRAIN == {"query_loss": "none", "dice_weight": 0.0, "target_resize": "nearest"}
    model = with_distinct_queries(build_tiny(num_queries=5, **paper_text))
    config = Config(model=tiny_model_config(num_queries=5, **paper_text))
    save_checkpoint(tmp_path / "old", model=model, config=config)
    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in paper_text:
        del saved["model"][key]  # as checkpoints were written before these settings existed
    for key in EARLIER_TRAIN:
        del saved["train"][key]
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    loaded = Predictor.from_pretrained(tmp_path / "old", device="cpu")
    assert {key: getattr(loaded.config.model, key) for key in paper_text} == paper_text
    assert {key: getattr(loaded.config.train, key) for key in EARLIER_TRAIN} == EARLIER_TRAIN
    image = picture()
    expected = Predictor(model, config, device="cpu").predict(image, TEXTS[0]).probability
    np.testing.assert_array_equal(loaded.predict(image, TEXTS[0]).probability, expected)


def test_bad_images_and_expressions_are_clear_errors(tmp_path):
    predictor = tiny_predictor()
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"broken.jpg: cannot be read as an image"):
        predictor.predict(tmp_path / "broken.jpg", TEXTS[0])
    with pytest.raises(DataError, match=r"missing.png: image not found"):
        predictor.predict(tmp_path / "missing.png", TEXTS[0])
    with pytest.raises(DataError, match=r"expression '  ' is empty"):
        predictor.predict(picture(), ["the cat", "  "])
    with pytest.raises(DataError, match=r"no expression given"):
        predictor.predict(picture(), [])
    with pytest.raises(DataError, match=r"must be uint8 .* got float32"):
        predictor.predict(picture().astype(np.float32), TEXTS[0])
    with pytest.raises(DataError, match=r"is a directory, not an image file"):
        predictor.predict(tmp_path, TEXTS[0])


def test_a_config_json_that_is_not_a_config_is_refused_naming_it(tmp_path):
    tiny_predictor().save_pretrained(tmp_path / "ckpt")
    config = tmp_path / "ckpt" / "config.json"
    config.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config.json: must be a JSON object"):
        Predictor.from_pretrained(tmp_path / "ckpt")
    config.write_text('{"model": {"backbone": "nope"}}')
    with pytest.raises(CheckpointError, match=r"config.json: unknown model.backbone 'nope'"):
        Predictor.from_pretrained(tmp_path / "ckpt")


def test_a_gpu_asked_for_where_there_is_none_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"device cuda was asked for, but torch sees no GPU"):
        Predictor(build_tiny(num_queries=5), Config(model=tiny_model_config(num_queries=5)), device="cuda")
    with pytest.raises(DeviceError, match=r"device cuda:1 was asked for"):  # training and evaluation choose the same way
        distributed.init("cuda:1")
    with pytest.raises(DeviceError, match=r"unknown device 'gpu'"):
        choose_device("gpu")
    assert choose_device(None) == torch.device("cpu")


def test_predict_command_writes_a_mask_and_an_overlay_per_expression(tmp_path, capsys):
    predictor = tiny_predictor()
    predictor.save_pretrained(tmp_path / "ckpt")
    Image.fromarray(picture()).save(tmp_path / "photo.png")
    argv = ["predict", "--checkpoint", str(tmp_path / "ckpt"), "--image", str(tmp_path / "photo.png"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    threshold = float(np.median(predictor.predict(picture(), TEXTS[1]).probability))
    assert main(argv + ["--text", TEXTS[0], "--text", TEXTS[1], "--threshold", repr(threshold)]) == 0
    printed = capsys.readouterr().out
    assert '"the blue triangle":' in printed and "best query" in printed
    mask = np.asarray(Image.open(tmp_path / "out" / "01_the-blue-triangle_mask.png"))
    expected = predictor.predict(picture(), TEXTS[0]).probability > threshold
    np.testing.assert_array_equal(mask, expected.astype(np.uint8) * 255)
    overlay = np.asarray(Image.open(tmp_path / "out" / "02_large-circle-left-of-the-red-square_overlay.png"))
    assert overlay.shape == (45, 70, 3)
    # The red outline is the border of the mask written beside it, at the same threshold.
    mask2 = np.asarray(Image.open(tmp_path / "out" / "02_large-circle-left-of-the-red-square_mask.png")) > 0
    inside = mask2 & np.roll(mask2, 1, 0) & np.roll(mask2, -1, 0) & np.roll(mask2, 1, 1) & np.roll(mask2, -1, 1)
    red = np.all(overlay == PREDICTION, axis=-1)
    assert 0 < mask2.mean() < 1 and red.any()
    np.testing.assert_array_equal(red, mask2 & ~inside)

    argv_file = [a if a != str(tmp_path / "out") else str(tmp_path / "photo.png") for a in argv]  # a file for the folder
    assert main(argv_file + ["--text", TEXTS[0]]) == 2
    assert "photo.png: cannot be made a folder for the predictions" in capsys.readouterr().err


def test_predict_command_reports_a_missing_image_and_exits_2(tmp_path, capsys):
    tiny_predictor().save_pretrained(tmp_path / "ckpt")
    argv = ["predict", "--checkpoint", str(tmp_path / "ckpt"), "--image", str(tmp_path / "nope.jpg"), "--text", "a cat"]
    assert main(argv) == 2
    assert "nope.jpg: image not found" in capsys.readouterr().err


def test_predict_command_refuses_damaged_weights_and_exits_2(tmp_path, capsys):
    tiny_predictor().save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    damaged = float_tensor_names(path)[:1]
    overwrite_with_nan(path, damaged)
    Image.fromarray(picture()).save(tmp_path / "photo.png")
    argv = ["predict", "--checkpoint", str(tmp_path / "ckpt"), "--image", str(tmp_path / "photo.png"), "--text", "a cat", "--out", str(tmp_path / "out")]
    assert main(argv + ["--device", "cpu"]) == 2
    assert f"{path}: NaN or infinite values in 1 tensor (e.g. {damaged[0]})" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_16_bit_grey_image_is_predicted_as_the_grey_a_person_sees(tmp_path):
    predictor = tiny_predictor()
    levels = picture()[..., 0]
    Image.fromarray(levels.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 0..255 as 0..65535
    with Image.open(tmp_path / "deep.png") as stored:
        assert stored.mode == "I;16"
        by_pil = predictor.predict(stored, TEXTS[0]).probability
    expected = predictor.predict(levels, TEXTS[0]).probability
    np.testing.assert_array_equal(predictor.predict(tmp_path / "deep.png", TEXTS[0]).probability, expected)
    np.testing.assert_array_equal(by_pil, expected)


def test_uint16_and_unit_float_arrays_are_scaled_and_other_arrays_refused():
    image = picture()
    np.testing.assert_array_equal(np.asarray(as_image(image.astype(np.uint16) * 257)), image)
    np.testing.assert_array_equal(np.asarray(as_image(image / 255)), image)
    np.testing.assert_array_equal(np.asarray(as_image(image[..., 0].astype(np.uint16) * 257)), np.repeat(image[..., :1], 3, axis=2))
    with pytest.raises(DataError, match=re.escape("got int64 (45, 70, 3)")):
        as_image(image.astype(np.int64))
    with pytest.raises(DataError, match=re.escape("got float64 (45, 70, 3) with values from")):
        as_image(image / 254)


def test_a_prediction_says_whether_its_expression_was_cut():
    predictor = tiny_predictor()
    length = predictor.config.model.context_length
    fits, cut = " ".join(["zebra"] * (length - 2)), " ".join(["zebra"] * (length - 1))
    assert word_tokens(fits) == length - 2 and word_tokens(cut) == length - 1
    results = predictor.predict(picture(), [TEXTS[0], fits, cut])
    assert [r.truncated for r in results] == [False, False, True]
    assert len(results[2].tokens) == length


def test_predict_command_says_when_an_expression_was_cut(tmp_path, capsys):
    tiny_predictor().save_pretrained(tmp_path / "ckpt")
    Image.fromarray(picture()).save(tmp_path / "photo.png")
    long = " ".join(["zebra"] * 500)
    argv = ["predict", "--checkpoint", str(tmp_path / "ckpt"), "--image", str(tmp_path / "photo.png"), "--out", str(tmp_path / "out")]
    assert main(argv + ["--text", TEXTS[0], "--text", long, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    said = [n for n, line in enumerate(lines) if "cut at the context length" in line]
    assert said == [2] and lines[1].startswith('"zebra zebra')
    assert f"has {word_tokens(long) + 2} tokens with [SOS] and [EOS], the model read the first 17" in lines[2]
