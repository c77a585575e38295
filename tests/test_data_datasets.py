import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.utils.data import DataLoader

from mmnet.data.datasets import ReferEvalDataset, ReferTrainDataset, collate_eval
from mmnet.data.errors import DataError
from mmnet.data.masks import segmentation_to_rle, uncompressed_rle
from mmnet.data.refer import ReferFiles, ReferIndex
from mmnet.data.tokenizer import tokenize
from mmnet.data.transforms import Letterbox, letterbox_geometry

SIZE = 32


def _index(made):
    return ReferIndex.load(made.root, "refcoco", "unc", progress=False)


def _colour(image, row, col):
    """The 0..255 RGB colour of one pixel of a normalised image."""
    mean, std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
    return (image[:, row, col] * std + mean) * 255


def test_training_item_is_letterboxed_image_tokens_and_mask(handmade):
    dataset = ReferTrainDataset(_index(handmade), split="train", image_size=SIZE, context_length=17)
    item = dataset[0]
    assert len(dataset) == 1
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["tokens"].shape == (17,) and item["tokens"].dtype == torch.long
    # 40 x 30 into 32: 32 x 24 with 4 padding rows above and below.
    geometry = letterbox_geometry(height=30, width=40, size=SIZE)
    torch.testing.assert_close(item["mask"], Letterbox(SIZE).mask(handmade.masks[1], geometry))
    assert item["mask"][:, :4].max() == 0 and item["mask"][:, 28:].max() == 0
    assert item["image"][:, :4].abs().max() == 0
    torch.testing.assert_close(_colour(item["image"], 16, 16), torch.tensor([200.0, 30.0, 30.0]), atol=4, rtol=0)


def test_training_sentence_depends_on_seed_epoch_and_index_only(handmade):
    index = _index(handmade)
    texts = [s.text for s in index.ref(1).sentences]

    def drawn(seed):
        dataset = ReferTrainDataset(index, split="train", image_size=SIZE, context_length=17, seed=seed)
        picks = []
        for epoch in range(12):
            dataset.set_epoch(epoch)
            tokens = dataset[0]["tokens"]
            picks.append(next(t for t in texts if torch.equal(tokenize(t, 17)[0], tokens)))
        return picks

    first = drawn(seed=0)
    assert drawn(seed=0) == first
    assert set(first) == set(texts)
    assert drawn(seed=1) != first


def test_evaluation_has_one_item_per_sentence_with_the_original_mask(handmade):
    dataset = ReferEvalDataset(_index(handmade), split="testB", image_size=SIZE, context_length=17)
    assert len(dataset) == 3
    item = dataset[1]
    assert (item["ref_id"], item["sent_id"], item["image_id"], item["sentence"]) == (3, 104, 3, "red corner")
    assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (20, 32)
    assert torch.equal(item["mask"], torch.from_numpy(handmade.masks[3]))
    assert item["geometry"] == letterbox_geometry(height=20, width=32, size=SIZE)
    assert torch.equal(item["tokens"], tokenize("red corner", 17)[0])


@pytest.mark.parametrize("split, image_id", [("testA", 2), ("testB", 3)])
def test_grayscale_and_cmyk_images_arrive_as_rgb(handmade, split, image_id):
    item = ReferEvalDataset(_index(handmade), split=split, image_size=SIZE, context_length=17)[0]
    centre = SIZE // 2
    torch.testing.assert_close(_colour(item["image"], centre, centre), torch.tensor(handmade.colours[image_id], dtype=torch.float32), atol=4, rtol=0)


def test_evaluation_batches_stack_images_and_keep_masks_as_lists(handmade):
    index = _index(handmade)
    dataset = ReferEvalDataset(index, split="testB", image_size=SIZE, context_length=17)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_eval)))
    assert batch["image"].shape == (3, 3, SIZE, SIZE) and batch["tokens"].shape == (3, 17)
    assert [m.shape for m in batch["mask"]] == [(20, 32)] * 3
    assert batch["sent_id"] == [103, 104, 105] and len(batch["geometry"]) == 3


def test_missing_image_names_the_file_when_read(handmade):
    handmade.image_path(2).unlink()
    dataset = ReferEvalDataset(_index(handmade), split="testA", image_size=SIZE, context_length=17)
    with pytest.raises(DataError, match="image not found") as err:
        dataset[0]
    assert str(handmade.image_path(2)) in str(err.value)


def test_text_blind_control_replaces_every_expression_with_an_empty_one(handmade):
    index = _index(handmade)
    empty = tokenize("", 17, allow_empty=True)[0]
    assert empty.tolist()[:3] == [49406, 49407, 0]
    blind_eval = ReferEvalDataset(index, split="val", image_size=SIZE, context_length=17, text_blind=True)
    seeing_eval = ReferEvalDataset(index, split="val", image_size=SIZE, context_length=17)
    for i in range(len(blind_eval)):
        assert torch.equal(blind_eval[i]["tokens"], empty)
        assert not torch.equal(seeing_eval[i]["tokens"], empty)
        assert torch.equal(blind_eval[i]["mask"], seeing_eval[i]["mask"])
    blind_train = ReferTrainDataset(index, split="train", image_size=SIZE, context_length=17, text_blind=True)
    assert torch.equal(blind_train[0]["tokens"], empty)


def test_expression_the_tokenizer_refuses_is_named_by_file_ref_and_sentence(handmade):
    # The index refuses such sentences when it is built; one read from elsewhere still names its source.
    files = ReferFiles(handmade.root, "refcoco", "unc")
    payload = {
        "refs": [[7, [11], 1, "val", [[70, "&nbsp;"]]]],
        "images": [[1, "COCO_train2014_000000000001.jpg", 30, 40]],
        "masks": [[11, segmentation_to_rle(uncompressed_rle(handmade.masks[1]), height=30, width=40)]],
    }
    index = ReferIndex(files, payload)
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: ref 7, sentence 70: expression '&nbsp;' is empty") as err:
        ReferEvalDataset(index, split="val", image_size=SIZE, context_length=17)[0]
    assert str(files.refs_path) in str(err.value)
