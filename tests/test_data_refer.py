import json
import os

import numpy as np
import pytest

import mmnet.data.refer as refer
from mmnet.config import DataConfig
from mmnet.data.errors import DataError
from mmnet.data.refer import ReferIndex


def _load(made, **kwargs):
    return ReferIndex.load(made.root, "refcoco", "unc", progress=False, **kwargs)


def test_polygon_crowd_rle_and_compressed_rle_masks_are_read(handmade):
    index = _load(handmade)
    for ref_id, expected in handmade.masks.items():
        mask = index.mask(ref_id)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected)


def test_splits_are_exact_names(handmade):
    index = _load(handmade)
    assert index.splits == ["train", "val", "testA", "testB"]
    assert [r.ref_id for r in index.refs("testA")] == [2]
    with pytest.raises(DataError, match="no split 'test'; the splits here are train, val, testA, testB"):
        index.refs("test")


def test_sentences_and_image_files_come_from_the_refs_and_instances(handmade):
    index = _load(handmade)
    assert [(s.sent_id, s.ref_id, s.text) for s in index.sentences("testB")] == [
        (103, 3, "the l shape"),
        (104, 3, "red corner"),
        (105, 3, "thing on the left"),
    ]
    # The ref's own file_name ends in its annotation id; the image is the instances.json file.
    assert index.image_path(3) == handmade.root / "images" / "train2014" / "COCO_train2014_000000000003.jpg"
    assert (index.image(2).height, index.image(2).width) == (24, 36)


def test_config_names_the_dataset_and_folders(handmade, tmp_path):
    config = DataConfig(root=str(handmade.root), dataset="refcoco", split_by="unc", image_dir="/elsewhere", cache_dir=str(tmp_path / "c"))
    index = ReferIndex.from_config(config, progress=False)
    assert str(index.image_path(1)) == "/elsewhere/COCO_train2014_000000000001.jpg"
    assert (tmp_path / "c" / "refcoco.refs(unc).index.json").is_file()


def test_index_is_cached_as_json_and_not_parsed_again(handmade, monkeypatch):
    _load(handmade)
    cache = handmade.dataset_dir / "cache" / "refcoco.refs(unc).index.json"
    assert json.loads(cache.read_text())["version"] == refer.CACHE_VERSION

    def parse_again(*args, **kwargs):
        raise AssertionError("the source files were parsed although the cache is valid")

    monkeypatch.setattr(refer, "parse_refer", parse_again)
    np.testing.assert_array_equal(_load(handmade).mask(1), handmade.masks[1])


def test_cache_is_rebuilt_when_a_source_file_changes(handmade):
    _load(handmade)
    handmade.refs[0]["sentences"][0]["sent"] = "the changed words"
    handmade.write()
    cache_time = (handmade.dataset_dir / "cache" / "refcoco.refs(unc).index.json").stat().st_mtime_ns
    os.utime(handmade.dataset_dir / "refs(unc).p", ns=(cache_time + 10**9, cache_time + 10**9))
    assert _load(handmade).sentences("train")[0].text == "the changed words"


def test_missing_refs_pickle_names_it_and_lists_those_present(handmade):
    with pytest.raises(DataError, match=r"refs\(umd\)\.p: refs pickle not found; refs files there: refs\(unc\)\.p") as err:
        ReferIndex.load(handmade.root, "refcoco", "umd", progress=False)
    assert str(handmade.dataset_dir) in str(err.value)


def test_missing_instances_names_it(handmade):
    (handmade.dataset_dir / "instances.json").unlink()
    with pytest.raises(DataError, match="instances.json not found") as err:
        _load(handmade)
    assert str(handmade.dataset_dir / "instances.json") in str(err.value)


def test_truncated_refs_pickle_names_it(handmade):
    path = handmade.dataset_dir / "refs(unc).p"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="not a readable pickle") as err:
        _load(handmade)
    assert str(path) in str(err.value)


def test_refs_pickle_that_would_build_an_object_is_refused_unrun(handmade):
    marker = handmade.root / "ran"
    # A refs list whose first item is os.mkdir(marker), in the opcodes a hostile file would use.
    hostile = b"\x80\x02]q\x00cposix\nmkdir\nq\x01X" + len(str(marker)).to_bytes(4, "little") + str(marker).encode() + b"\x85R\x61."
    (handmade.dataset_dir / "refs(unc).p").write_bytes(hostile)
    with pytest.raises(DataError, match="refused: the pickle asks for posix.mkdir"):
        _load(handmade)
    assert not marker.exists()


def test_ref_whose_annotation_is_absent_names_both_files(handmade):
    handmade.refs[1]["ann_id"] = 999
    handmade.write()
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: ref 2: its annotation 999 is not in instances.json"):
        _load(handmade)


def test_empty_sentence_is_refused(handmade):
    handmade.refs[2]["sentences"][1]["sent"] = "  "
    handmade.write()
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: ref 3: sentence 104 is empty"):
        _load(handmade)


def test_bad_segmentation_names_instances_and_the_annotation(handmade):
    handmade.instances["annotations"][1]["segmentation"]["size"] = [10, 10]
    handmade.write()
    with pytest.raises(DataError, match=r"instances.json: annotation 12 \(of ref 2\): RLE size \[10, 10\] differs"):
        _load(handmade)
