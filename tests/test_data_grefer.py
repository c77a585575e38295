import copy
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import mmnet.data.refer as refer
from conftest import _ref
from mmnet.cli import main
from mmnet.data.errors import DataError
from mmnet.data.refer import ReferFiles, ReferIndex
from test_data_pickles import _MakesDirectory


@dataclass
class HandmadeGrefs:
    """A gRefCOCO-like set on the hand-made images: <root>/grefcoco/grefs(unc).json (or the pickle
    grefs(unc).p) and instances.json; the images are the handmade fixture's."""

    root: Path
    refs: list[dict]
    instances: dict
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    """ref_id -> the mask worked out by hand, uint8 H x W."""

    @property
    def dataset_dir(self) -> Path:
        return self.root / "grefcoco"

    def path(self, form: str) -> Path:
        return self.dataset_dir / f"grefs(unc).{form}"

    def write(self, form: str = "json") -> Path:
        """(Re)writes instances.json and the refs in one form, "json" or "p" (pickle protocol 2),
        removing the other form; returns the refs file's path."""
        self.dataset_dir.mkdir(parents=True, exist_ok=True)
        (self.dataset_dir / "instances.json").write_text(json.dumps(self.instances))
        for other in ("json", "p"):
            self.path(other).unlink(missing_ok=True)
        if form == "json":
            self.path(form).write_text(json.dumps(self.refs))
        else:
            with self.path(form).open("wb") as file:
                pickle.dump(self.refs, file, protocol=2)
        return self.path(form)


def _gref(ref_id, ann_id, category_id, image_id, split, texts, first_sent_id):
    """A ref as gRefCOCO writes it: ann_id and category_id are lists (or one id), and no_target is set."""
    ref = _ref(ref_id, 0, image_id, split, texts, first_sent_id)
    return {**ref, "ann_id": ann_id, "category_id": category_id, "no_target": ann_id in (-1, [-1])}


@pytest.fixture
def grefs(handmade) -> HandmadeGrefs:
    """Refs to one object (ann_id an int, or a list of one), to two overlapping ones, and to none ([-1], or -1)."""
    instances = copy.deepcopy(handmade.instances)
    # Annotation 15 on image 1 covers x 10..17, y 6..11 and overlaps annotation 11 (x 4..13, y 3..8).
    instances["annotations"].append(
        {"id": 15, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 48.0, "bbox": [10, 6, 8, 6],
         "segmentation": [[10, 6, 18, 6, 18, 12, 10, 12]]}
    )
    second = np.zeros((30, 40), np.uint8)
    second[6:12, 10:18] = 1
    both = handmade.masks[1].copy()
    both[6:12, 10:18] = 1
    refs = [
        _gref(1, 11, 1, 1, "train", ["the two red boxes"], first_sent_id=200),
        _gref(2, [11, 15], [1, 1], 1, "train", ["both red things", "all the red"], first_sent_id=201),
        _gref(3, [-1], [-1], 2, "val", ["the dog"], first_sent_id=203),
        _gref(4, [13], [1], 3, "testA", ["the l shape"], first_sent_id=204),
        _gref(5, [12], [1], 2, "testB", ["grey crowd"], first_sent_id=205),
        _gref(6, -1, -1, 3, "testB", ["a blue cat", "the cat"], first_sent_id=206),
    ]
    masks = {1: handmade.masks[1], 2: both, 3: np.zeros((24, 36), np.uint8), 4: handmade.masks[3], 5: handmade.masks[2],
             6: np.zeros((20, 32), np.uint8)}
    made = HandmadeGrefs(root=handmade.root, refs=refs, instances=instances, masks=masks)
    made.write("json")
    return made


def _load(made, **kwargs):
    return ReferIndex.load(made.root, "grefcoco", "unc", progress=False, **kwargs)


def _contents(index):
    return {split: (index.refs(split), index.sentences(split)) for split in index.splits}


def test_json_and_pickle_read_to_the_same_index(grefs):
    from_json = _load(grefs)
    assert from_json.files.refs_path == grefs.path("json")
    grefs.write("p")
    from_pickle = _load(grefs)
    assert from_pickle.files.refs_path == grefs.path("p")
    assert from_json.generalized and from_pickle.generalized
    assert from_json.splits == from_pickle.splits == ["train", "val", "testA", "testB"]
    assert _contents(from_json) == _contents(from_pickle)
    assert [(s.sent_id, s.ref_id, s.text) for s in from_pickle.sentences("train")] == [
        (200, 1, "the two red boxes"), (201, 2, "both red things"), (202, 2, "all the red")
    ]
    for ref_id in grefs.masks:
        np.testing.assert_array_equal(from_json.mask(ref_id), from_pickle.mask(ref_id))


@pytest.mark.parametrize("form", ["json", "p"])
def test_one_several_and_no_referred_objects(grefs, form):
    grefs.write(form)
    index = _load(grefs)
    assert [index.ref(i).ann_ids for i in range(1, 7)] == [(11,), (11, 15), (), (13,), (12,), ()]
    assert [index.ref(i).no_target for i in range(1, 7)] == [False, False, True, False, False, True]
    for ref_id, expected in grefs.masks.items():
        mask = index.mask(ref_id)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected)
    # The union is neither part alone, and the overlap is 1, not 2.
    assert index.mask(2).sum() > index.mask(1).sum()
    assert index.mask(2)[7, 12] == 1


@pytest.mark.parametrize("form", ["json", "p"])
@pytest.mark.parametrize(
    "ref_id, ann_id, message",
    [
        (2, [11, 999], "ref 2: its annotation 999 is not in instances.json"),
        (3, [-1, 12], r"ref 3: ann_id [-1, 12] mixes -1 (no target) with annotation ids"),
        (3, [], "ref 3: ann_id [] names no annotation"),
        (5, [12, 13], "ref 5: its annotation 13 belongs to image 3, not 2"),
        (2, [11, "15"], "ref 2: ann_id [11, '15'] holds '15', not an integer"),
        (4, 13.0, "ref 4: ann_id 13.0 is not an integer or a list of integers"),
    ],
)
def test_faulty_ann_id_names_the_file_and_the_ref(grefs, form, ref_id, ann_id, message):
    grefs.refs[ref_id - 1]["ann_id"] = ann_id
    path = grefs.write(form)
    with pytest.raises(DataError, match=re.escape(f"{path}: {message}")):
        _load(grefs)


@pytest.mark.parametrize("form", ["json", "p"])
def test_an_annotation_named_twice_counts_once(grefs, form):
    grefs.refs[1]["ann_id"] = [11, 15, 11]
    grefs.write(form)
    once = _load(grefs)
    assert once.ref(2).ann_ids == (11, 15)
    grefs.refs[1]["ann_id"] = [11, 15]
    grefs.write(form)
    np.testing.assert_array_equal(once.mask(2), _load(grefs).mask(2))


def test_check_lists_every_faulty_ref_and_counts_the_rest(grefs, capsys):
    grefs.refs[1]["ann_id"] = [-1, 15]
    grefs.refs[4]["ann_id"] = [404]
    path = grefs.write("json")
    assert main(["data", "check", "--root", str(grefs.root), "--dataset", "grefcoco", "--split-by", "unc", "--workers", "2"]) == 2
    out = capsys.readouterr().out
    assert f"{path}: ref 2: ann_id [-1, 15] mixes -1 (no target) with annotation ids" in out
    assert f"{path}: ref 5: its annotation 404 is not in instances.json" in out
    assert "2 problem(s) with refs and annotations" in out


def test_check_counts_no_target_and_multi_object_refs(grefs, capsys):
    assert main(["data", "check", "--root", str(grefs.root), "--dataset", "grefcoco", "--split-by", "unc", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["split"] == ["refs", "sentences", "images", "no-target", "multi-object"]
    # refs, sentences, images, no-target, multi-object
    assert [rows[s] for s in ("train", "val", "testA", "testB", "total")] == [
        ["2", "3", "1", "0", "1"], ["1", "1", "1", "1", "0"], ["1", "1", "1", "0", "0"], ["2", "3", "2", "1", "0"],
        ["6", "8", "5", "2", "1"],
    ]
    assert "no problems found" in out


@pytest.mark.parametrize("hostile", ["reduce", "instance"])
def test_grefs_pickle_that_asks_for_a_global_is_refused_unrun(grefs, hostile):
    marker = grefs.root / "ran"
    # os.mkdir(marker) by __reduce__, or a plain class instance (rebuilt through copyreg).
    item = _MakesDirectory(str(marker)) if hostile == "reduce" else ReferFiles(grefs.root, "grefcoco", "unc")
    grefs.path("json").unlink()
    grefs.path("p").write_bytes(pickle.dumps([item], protocol=2))
    with pytest.raises(DataError, match=r"grefs\(unc\)\.p: refused: the pickle asks for ") as err:
        _load(grefs)
    assert str(grefs.path("p")) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [(b'[{"ref_id": 1,', "not valid JSON"), (b'{"refs": []}', "expected a list of refs, found a dict"), (b"\xff[]", "not valid JSON")],
)
def test_grefs_json_that_is_not_a_list_of_refs_names_it(grefs, content, message):
    grefs.path("json").write_bytes(content)
    with pytest.raises(DataError, match=re.escape(f"{grefs.path('json')}: {message}")):
        _load(grefs)


def test_cache_is_written_and_reused_and_never_shared_by_json_and_pickle(grefs, monkeypatch):
    parsed = []
    parse = refer.parse_refer
    monkeypatch.setattr(refer, "parse_refer", lambda files, **kwargs: parsed.append(files.refs_path.name) or parse(files, **kwargs))
    cache_dir = grefs.dataset_dir / "cache"
    _load(grefs)
    _load(grefs)
    assert parsed == ["grefs(unc).json"]
    json_cache = cache_dir / "grefcoco.grefs(unc).json.index.json"
    assert json.loads(json_cache.read_text())["version"] == refer.CACHE_VERSION == 4

    # The pickle, holding other words, is parsed into its own cache; the JSON's is left as it was.
    before = json_cache.read_bytes()
    grefs.refs[0]["sentences"][0]["sent"] = "words of the pickle"
    grefs.write("p")
    assert _load(grefs).sentences("train")[0].text == "words of the pickle"
    assert _load(grefs).sentences("train")[0].text == "words of the pickle"
    assert parsed == ["grefs(unc).json", "grefs(unc).p"]
    assert sorted(p.name for p in cache_dir.iterdir()) == ["grefcoco.grefs(unc).json.index.json", "grefcoco.grefs(unc).p.index.json"]
    assert json_cache.read_bytes() == before


def test_refs_file_is_found_in_order_and_a_missing_one_lists_those_present(grefs, handmade):
    files = ReferFiles(grefs.root, "grefcoco", "unc")
    assert files.refs_path == grefs.path("json") and files.generalized
    # With both forms the JSON is read; plain refer's refs pickle comes before either.
    grefs.path("p").write_bytes(pickle.dumps(grefs.refs, protocol=2))
    assert files.refs_path == grefs.path("json")
    grefs.path("json").unlink()
    assert files.refs_path == grefs.path("p") and files.generalized
    (grefs.dataset_dir / "refs(unc).p").write_bytes(pickle.dumps(handmade.refs, protocol=2))
    assert files.refs_path == grefs.dataset_dir / "refs(unc).p" and not files.generalized
    with pytest.raises(
        DataError,
        match=re.escape("refs(umd).p: refs pickle not found; refs files there: grefs(unc).p, refs(unc).p (nor grefs(umd).json, grefs(umd).p)"),
    ):
        ReferIndex.load(grefs.root, "grefcoco", "umd", progress=False)


def test_plain_refer_reads_as_before(handmade):
    index = ReferIndex.load(handmade.root, "refcoco", "unc", progress=False)
    assert not index.generalized
    assert [index.ref(i).ann_ids for i in range(1, 5)] == [(11,), (12,), (13,), (14,)]
    assert not any(index.ref(i).no_target for i in range(1, 5))
    assert (handmade.dataset_dir / "cache" / "refcoco.refs(unc).index.json").is_file()


@pytest.mark.parametrize(
    "ann_id, message",
    [([11], r"ref 1: ann_id \[11\] is not an integer"), (-1, "ref 1: its annotation -1 is not in instances.json")],
)
def test_plain_refer_takes_one_annotation_id_and_no_no_target(handmade, ann_id, message):
    handmade.refs[0]["ann_id"] = ann_id
    handmade.write()
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: " + message):
        ReferIndex.load(handmade.root, "refcoco", "unc", progress=False)
