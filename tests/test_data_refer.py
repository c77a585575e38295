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


def test_google_split_names_are_read_as_they_are(handmade):
    # RefCOCO's google refs have train, val and test (no testA or testB).
    for ref, split in zip(handmade.refs, ("test", "train", "val", "test")):
        ref["split"] = split
    handmade.write()
    index = _load(handmade)
    assert index.splits == ["train", "val", "test"]
    assert [r.ref_id for r in index.refs("test")] == [1, 4]


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


# Two refs on the hand-made images as Python 2's pickle.dump(refs, file) writes them (protocol 0):
# byte strings holding UTF-8 (S'caf\xc3\xa9'), unicode (V...), longs (L1L), ints, bools (I01, in a
# key the reader does not use) and memo references (g8) to repeated keys.
PYTHON2_PROTOCOL0_REFS = rb"""(lp0
(dp1
S'image_id'
p2
L1L
sS'split'
p3
S'train'
p4
sS'sentences'
p5
(lp6
(dp7
S'tokens'
p8
(lp9
S'caf\xc3\xa9'
p10
aS'left'
p11
asS'raw'
p12
VCaf\u00e9 left
p13
sS'sent_id'
p14
L100L
sS'sent'
p15
S'caf\xc3\xa9 left'
p16
sa(dp17
g8
(lp18
S'red'
p19
ag11
asg12
VRed left
p20
sg14
L101L
sg15
S'red left'
p21
sasS'ann_id'
p22
I11
sS'ref_id'
p23
L1L
sS'category_id'
p24
I1
sS'sent_ids'
p25
(lp26
L100L
aL101L
asS'seen'
p27
I01
sa(dp28
g2
L1L
sg3
S'val'
p29
sg5
(lp30
(dp31
g8
(lp32
S'tiny'
p33
asg12
VTiny
p34
sg14
L0L
sg15
S'tiny'
p35
sasg22
I14
sg23
L4L
sg27
I00
sa.
"""


def test_python2_protocol0_refs_file_is_read(handmade):
    (handmade.dataset_dir / "refs(unc).p").write_bytes(PYTHON2_PROTOCOL0_REFS)
    index = _load(handmade)
    assert index.splits == ["train", "val"]
    assert [(s.sent_id, s.ref_id, s.text) for s in index.sentences("train")] == [(100, 1, "café left"), (101, 1, "red left")]
    assert [(s.sent_id, s.ref_id, s.text) for s in index.sentences("val")] == [(0, 4, "tiny")]
    assert all(type(value) is int for ref in (index.ref(1), index.ref(4)) for value in (ref.ref_id, *ref.ann_ids, ref.image_id))
    np.testing.assert_array_equal(index.mask(1), handmade.masks[1])
    np.testing.assert_array_equal(index.mask(4), handmade.masks[4])


@pytest.mark.parametrize("counts", ["", "0", "1", "0000", "o", "1:"])
def test_malformed_compressed_rle_names_instances_and_the_annotation(handmade, counts):
    # "", "0" and "1" would leave most pixels undecoded (pycocotools fills them from uninitialised
    # memory); "0000" is fewer pixels than the image; "o" stops inside a run; "1:" runs past the end.
    handmade.instances["annotations"][2]["segmentation"]["counts"] = counts
    handmade.write()
    with pytest.raises(DataError, match=r"instances.json: annotation 13 \(of ref 3\): ") as err:
        _load(handmade)
    assert str(handmade.dataset_dir / "instances.json") in str(err.value)


def test_unreadable_instances_names_it(handmade):
    path = handmade.dataset_dir / "instances.json"
    path.unlink()
    path.mkdir()
    with pytest.raises(DataError, match="instances.json cannot be read \\(IsADirectoryError") as err:
        _load(handmade)
    assert str(path) in str(err.value)


def test_refs_pickle_with_a_corrupt_length_names_it(handmade):
    # Protocol 4 opening a frame of 2**64 - 1 bytes: OverflowError inside the unpickler.
    path = handmade.dataset_dir / "refs(unc).p"
    path.write_bytes(b"\x80\x04\x95" + b"\xff" * 8 + b".")
    with pytest.raises(DataError, match=r"not a readable pickle \(OverflowError") as err:
        _load(handmade)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda made: made.refs[1].update(ref_id=[2]), r"refs\(unc\)\.p: ref #1: ref_id \[2\] is not an integer"),
        (lambda made: made.refs[1].update(split=None), r"refs\(unc\)\.p: ref 2: split None is not a non-empty string"),
        (lambda made: made.refs[2]["sentences"][1].update(sent_id={"id": 104}),
         r"refs\(unc\)\.p: ref 3: sentence #1 sent_id \{'id': 104\} is not an integer"),
        (lambda made: made.refs[2]["sentences"][1].update(sent=None), r"refs\(unc\)\.p: ref 3: sentence 104 sent None is not a string"),
        (lambda made: made.instances["images"][0].update(height="30"), r"instances.json: image 1: height '30' is not a positive integer"),
        (lambda made: made.instances["images"][1].update(id=[2]), r"instances.json: image #1: id \[2\] is not an integer"),
        (lambda made: made.instances["annotations"][0].update(image_id="1"),
         r"instances.json: annotation 11: image_id '1' is not an integer"),
    ],
)
def test_fields_of_the_wrong_type_name_the_file_and_the_id(handmade, change, message):
    change(handmade)
    handmade.write()
    with pytest.raises(DataError, match=message):
        _load(handmade)


@pytest.mark.parametrize("records, message", [("images", "image 2: id used twice"), ("annotations", "annotation 12: id used twice")])
def test_repeated_ids_in_instances_are_reported(handmade, records, message):
    handmade.instances[records].append(dict(handmade.instances[records][1]))
    handmade.write()
    with pytest.raises(DataError, match=f"instances.json: {message}"):
        _load(handmade)


@pytest.mark.parametrize("text", ["&nbsp;", "\ufeff", "\x00", "\u00a0 \t"])
def test_sentence_the_tokenizer_finds_no_words_in_is_empty(handmade, text):
    # Not blank to str.strip() ("&nbsp;", "\ufeff", "\x00"), but CLIP's cleaning leaves no word.
    handmade.refs[2]["sentences"][1]["sent"] = text
    handmade.write()
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: ref 3: sentence 104 is empty: .* has no words to tokenise"):
        _load(handmade)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda cached: cached.pop("masks"),
        lambda cached: cached["images"].pop(),
        lambda cached: cached["refs"][0].pop(),
        lambda cached: cached.update(refs={"not": "rows"}),
    ],
)
def test_cache_that_does_not_hold_together_is_rebuilt(handmade, spoil):
    _load(handmade)
    cache = handmade.dataset_dir / "cache" / "refcoco.refs(unc).index.json"
    cached = json.loads(cache.read_text())
    spoil(cached)
    cache.write_text(json.dumps(cached))
    index = _load(handmade)
    for ref_id, expected in handmade.masks.items():
        np.testing.assert_array_equal(index.mask(ref_id), expected)
    assert json.loads(cache.read_text())["masks"]
