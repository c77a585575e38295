import hashlib
import os
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from mmnet.cli import main
from mmnet.data.pickles import load_plain_pickle
from mmnet.data.refer import ReferIndex
from mmnet.data.scenes import COLOURS, KIND_WORDS, MARGIN_SHARE, SIZE_WORDS, Shape, is_referable
from mmnet.data.synth import generate, write_synthetic

ARGS = dict(name="synthref", seed=3, images=(6, 2, 2, 2), width=128, height=96)  # as the synth_root fixture

# How a reader would resolve the expressions, written independently of the generator.
WORDS = {
    **{c: ("colour", c) for c in COLOURS},
    **{w: ("kind", k) for k, ws in KIND_WORDS.items() for w in ws},
    **{w: ("size", s) for s, ws in SIZE_WORDS.items() for w in ws},
}
EXTREMES = {"on the left": ("cx", -1), "leftmost": ("cx", -1), "on the right": ("cx", 1), "rightmost": ("cx", 1),
            "at the top": ("cy", -1), "topmost": ("cy", -1), "at the bottom": ("cy", 1), "lowest": ("cy", 1)}
RELATIONS = {"left of": ("cx", -1), "right of": ("cx", 1), "above": ("cy", -1), "below": ("cy", 1)}


def _fitting(noun_phrase, shapes):
    conditions = [WORDS[w] for w in noun_phrase.split() if w not in ("the", "shape")]
    return [s for s in shapes if all(getattr(s, attribute) == value for attribute, value in conditions)]


def _resolve(text, shapes):
    """The shapes an expression can mean."""
    for phrase, (axis, sign) in RELATIONS.items():
        if f" {phrase} the " in text:
            head, landmark = text.split(f" {phrase} the ")
            [mark] = _fitting(landmark, shapes)
            return [s for s in _fitting(head, shapes) if s is not mark and sign * (getattr(s, axis) - getattr(mark, axis)) > 0]
    for phrase, (axis, sign) in EXTREMES.items():
        if phrase in text:
            fitting = _fitting(text.replace(phrase, ""), shapes)
            best = max(sign * getattr(s, axis) for s in fitting)
            return [s for s in fitting if sign * getattr(s, axis) == best]
    return _fitting(text, shapes)


@pytest.fixture(scope="module")
def generated():
    return list(generate(**ARGS))


def _inside(shape, x, y):
    """Whether points lie in the shape, from its definition (not from the polygon the generator writes):
    a circle of the shape's radius, a square of half-side 0.75 radius, an equilateral triangle apex
    up inscribed in the circle, a diamond 1.6 radius wide and 2 high."""
    u, v = (x - shape.cx) / shape.radius, (y - shape.cy) / shape.radius
    if shape.kind == "circle":
        return u**2 + v**2 <= 1
    if shape.kind == "square":
        return (np.abs(u) <= 0.75) & (np.abs(v) <= 0.75)
    if shape.kind == "triangle":
        return (v <= 0.5) & (np.sqrt(3) * np.abs(u) <= v + 1)
    return np.abs(u) / 0.8 + np.abs(v) <= 1


def _referred(synth_root, generated):
    """(ref, the shape it refers to, the mask its image was painted from) for every ref read back."""
    shapes = [(shape, mask) for item in generated for shape, mask in zip(item.shapes, item.masks)]
    index = ReferIndex.load(synth_root, "synthref", "unc", progress=False)
    refs = [ref for split in index.splits for ref in index.refs(split)]
    assert len(refs) == sum(len(item.expressions) for item in generated)
    # Annotation ids count the shapes in order.
    return index, [(ref, *shapes[ref.ann_ids[0] - 1]) for ref in refs]


def test_every_mask_read_back_is_the_mask_its_image_was_painted_from(synth_root, generated):
    # Pixel for pixel: the generator paints each shape on exactly the pixels pycocotools decodes from
    # its polygon, so this pins the writing and reading of both segmentation forms, not the drawing.
    index, referred = _referred(synth_root, generated)
    for ref, _, painted in referred:
        np.testing.assert_array_equal(index.mask(ref.ref_id), painted)
    instances = json.loads((synth_root / "synthref" / "instances.json").read_text())
    forms = {type(a["segmentation"]).__name__ for a in instances["annotations"] if a["id"] in {i for r, _, _ in referred for i in r.ann_ids}}
    assert forms == {"list", "dict"}


def test_every_mask_read_back_covers_its_shape(synth_root, generated):
    # Against pixel centres inside the shape's own geometry: equal on every pixel more than one pixel
    # from the outline, and on all but a few percent of the pixels within one pixel of it (pycocotools
    # rounds outlines its own way). A rasteriser that mirrored shapes, or moved them by half a pixel
    # (about a fifth of the pixels near outlines wrong), fails here and passes the test above.
    index, referred = _referred(synth_root, generated)
    near_outline = wrong_near_outline = 0
    for ref, shape, _ in referred:
        image = index.image(ref.image_id)
        ys, xs = np.mgrid[: image.height, : image.width] + 0.5
        inside = _inside(shape, xs, ys)
        near = np.logical_or.reduce([_inside(shape, xs + dx, ys + dy) != inside for dx in (-1, 0, 1) for dy in (-1, 0, 1)])
        wrong = index.mask(ref.ref_id).astype(bool) != inside
        assert not np.any(wrong & ~near), ref
        near_outline += near.sum()
        wrong_near_outline += (wrong & near).sum()
    assert wrong_near_outline < 0.05 * near_outline


def test_shapes_are_painted_flat_exactly_on_their_masks(synth_root, generated):
    for item in generated[:4]:
        covered = np.zeros(item.pixels.shape[:2], bool)
        for shape, mask in zip(item.shapes, item.masks):
            inside = item.pixels[mask.astype(bool)]
            assert (inside == inside[0]).all() and np.abs(inside[0].astype(int) - COLOURS[shape.colour]).max() <= 12
            covered |= mask.astype(bool)
        background = item.pixels[~covered]
        assert (background == background[0]).all() and len(set(background[0])) == 1
        stored = np.asarray(Image.open(synth_root / "images" / "train2014" / item.file_name)).astype(int)
        assert np.abs(stored - item.pixels).mean() < 3


def test_every_expression_means_its_shape_and_no_other(generated):
    for item in generated:
        for k, texts in item.expressions.items():
            for text in texts:
                assert _resolve(text, item.shapes) == [item.shapes[k]], text


def test_no_single_word_finds_a_referred_shape(generated):
    for item in generated:
        for k in item.expressions:
            target = item.shapes[k]
            words = (target.colour, KIND_WORDS[target.kind][0], SIZE_WORDS[target.size][0])
            assert all(len(_fitting(word, item.shapes)) >= 2 for word in words), (item.file_name, target)
            # The shape sharing the colour and the one sharing the kind are two shapes, not one twin.
            same_colour = {i for i, s in enumerate(item.shapes) if i != k and s.colour == target.colour}
            same_kind = {i for i, s in enumerate(item.shapes) if i != k and s.kind == target.kind}
            assert same_colour and same_kind and len(same_colour | same_kind) >= 2, (item.file_name, target)


def test_a_twin_or_a_size_of_its_own_leaves_a_shape_unreferred():
    target = Shape("circle", "red", "small", 20, 20, 8)
    red_square = Shape("square", "red", "small", 60, 20, 8)
    blue_circle = Shape("circle", "blue", "small", 100, 20, 8)
    twin = replace(target, cx=60)
    assert is_referable(target, [target, red_square, blue_circle])
    # A twin shares colour and kind at once; the two distractors must be different shapes.
    assert not is_referable(target, [target, twin, replace(blue_circle, kind="square")])
    # "small" alone would find it.
    assert not is_referable(target, [target, replace(red_square, size="big"), replace(blue_circle, size="big")])


def test_expressions_use_colour_kind_size_position_and_relation_words(generated):
    texts = [t for item in generated for ts in item.expressions.values() for t in ts]
    words = set(" ".join(texts).split())
    assert words & set(COLOURS) and words & {w for ws in KIND_WORDS.values() for w in ws}
    assert words & {w for ws in SIZE_WORDS.values() for w in ws}
    assert any(p in t for t in texts for p in EXTREMES)
    assert any(f" {p} the " in t for t in texts for p in RELATIONS)
    assert all(3 <= len(item.shapes) <= 6 for item in generated)


def test_files_are_in_the_refer_layout(synth_root):
    refs = load_plain_pickle(synth_root / "synthref" / "refs(unc).p")
    assert {r["split"] for r in refs} == {"train", "val", "testA", "testB"}
    instances = json.loads((synth_root / "synthref" / "instances.json").read_text())
    files = {image["id"]: image["file_name"] for image in instances["images"]}
    for ref in refs:
        assert set(ref) >= {"ref_id", "ann_id", "image_id", "split", "sentences", "sent_ids", "category_id", "file_name"}
        assert ref["file_name"] == files[ref["image_id"]].replace(".jpg", f"_{ref['ann_id']}.jpg")
        assert not (synth_root / "images" / "train2014" / ref["file_name"]).exists()
        assert (synth_root / "images" / "train2014" / files[ref["image_id"]]).is_file()
        assert all(s["tokens"] == s["sent"].split() for s in ref["sentences"])


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file() and "cache" not in p.parts)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_writes_the_same_bytes(synth_root, tmp_path):
    write_synthetic(tmp_path / "again", **ARGS, progress=False)
    assert _digest(tmp_path / "again") == _digest(synth_root)
    write_synthetic(tmp_path / "other", **{**ARGS, "seed": 4}, progress=False)
    assert _digest(tmp_path / "other")["synthref/instances.json"] != _digest(synth_root)["synthref/instances.json"]


def test_worker_processes_write_the_same_bytes(synth_root, tmp_path):
    write_synthetic(tmp_path / "workers", **ARGS, progress=False, workers=2)
    assert _digest(tmp_path / "workers") == _digest(synth_root)
    generalized = {**ARGS, "name": "synthgref", "generalized": True, "progress": False}
    write_synthetic(tmp_path / "one", **generalized)
    write_synthetic(tmp_path / "two", **generalized, workers=3)
    assert _digest(tmp_path / "two") == _digest(tmp_path / "one")


def _process_id(_) -> int:
    return os.getpid()


def test_the_images_are_drawn_in_the_worker_processes():
    from mmnet.data.synth import _in_order

    assert set(_in_order(_process_id, list(range(8)), 1)) == {os.getpid()}
    elsewhere = set(_in_order(_process_id, list(range(8)), 2))
    assert os.getpid() not in elsewhere and 1 <= len(elsewhere) <= 2


def test_synth_command_refuses_fewer_than_one_worker(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth", "--out", str(tmp_path), "--images", "3", "1", "1", "1", "--workers", "0"])
    assert "--workers: must be at least 1, got 0" in capsys.readouterr().err


def test_the_box_of_a_mask_is_its_first_and_last_row_and_column():
    from mmnet.data.synth import _bbox

    mask = np.zeros((6, 9), np.uint8)
    mask[2:5, 3] = 1
    mask[4, 3:8] = 1
    assert _bbox(mask) == [3.0, 2.0, 5.0, 3.0]  # x 3..7, y 2..4


def test_synth_command_writes_and_counts(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--images", "3", "1", "1", "1", "--size", "96", "72"]) == 0
    out = capsys.readouterr().out
    index = ReferIndex.load(tmp_path, "synthref", "unc", progress=False)
    train = index.refs("train")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["train"] == [str(len(train)), str(sum(len(r.sentences) for r in train)), "3"]
    assert "data.dataset=synthref" in out


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ""])
def test_synth_command_refuses_a_name_that_is_not_a_folder_name(tmp_path, capsys, name):
    out = tmp_path / "out"
    assert main(["data", "synth", "--out", str(out), "--name", name, "--images", "1", "0", "0", "0"]) == 2
    assert "must be a plain folder name" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*.jpg")) and not any(tmp_path.rglob("*.json"))


def test_synth_command_refuses_a_tiny_image(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--size", "16", "16"]) == 2
    assert "--size must be at least 32 x 32" in capsys.readouterr().err


# A generalized set of about 200 small images.
GENERALIZED = dict(name="synthref", seed=7, images=(140, 20, 20, 20), width=96, height=72)
# How a reader would resolve plural expressions, written independently of the generator.
PLURALS = {w + ("es" if w.endswith("x") else "s"): ("kind", k) for k, ws in KIND_WORDS.items() for w in ws}
COUNTS = {"both": 2, "two": 2, "three": 3}
SIDES = {"on the left": ("cx", -1), "on the right": ("cx", 1), "at the top": ("cy", -1), "at the bottom": ("cy", 1)}


@pytest.fixture(scope="module")
def generalized(tmp_path_factory):
    """(root, the set's items, its grefs read as JSON) of the set of about 200 images."""
    root = write_synthetic(tmp_path_factory.mktemp("generalized"), **GENERALIZED, generalized=True, progress=False).parent
    items = list(generate(**GENERALIZED, generalized=True))
    return root, items, json.loads((root / "synthref" / "grefs(unc).json").read_text())


@pytest.fixture(scope="module")
def small_generalized(tmp_path_factory):
    """The generalized set of the synth_root fixture's arguments."""
    return write_synthetic(tmp_path_factory.mktemp("small_generalized"), **ARGS, generalized=True, progress=False).parent


def _kind(ref):
    return "none" if ref["ann_id"] == [-1] else "multi" if len(ref["ann_id"]) > 1 else "single"


def _resolve_group(text, shapes, short_side):
    """Indices of the shapes a plural expression means: those its words fit, or of them the ones at
    the named side, up to the first gap of more than the margin between neighbouring centres."""
    side = next((phrase for phrase in SIDES if text.endswith(" " + phrase)), None)
    words = (text[: -len(side)] if side else text).split()
    conditions = [{**WORDS, **PLURALS}[w] for w in words if w not in ("the", "all", "shapes", *COUNTS)]
    fitting = [k for k, s in enumerate(shapes) if all(getattr(s, attribute) == value for attribute, value in conditions)]
    if side:
        axis, sign = SIDES[side]
        fitting.sort(key=lambda k: -sign * getattr(shapes[k], axis))
        gaps = [sign * (getattr(shapes[a], axis) - getattr(shapes[b], axis)) for a, b in zip(fitting, fitting[1:])]
        cut = next(n + 1 for n, gap in enumerate(gaps) if gap > MARGIN_SHARE * short_side)
        # Each shape at that side lies beyond each other shape the words fit by the margin.
        assert min(gaps[cut - 1 :] or [0]) >= 0 and gaps[cut - 1] > MARGIN_SHARE * short_side
        fitting = fitting[:cut]
    counted = [COUNTS[w] for w in words if w in COUNTS]
    assert counted in ([], [len(fitting)]), text
    return sorted(fitting)


def test_generalized_set_is_the_plain_set_on_the_same_images_plus_group_and_no_target_refs(synth_root, small_generalized):
    plain, root = synth_root, small_generalized
    grefs = json.loads((root / "synthref" / "grefs(unc).json").read_text())
    digests, plain_digests = _digest(root), _digest(plain)
    assert {k: v for k, v in digests.items() if k != "synthref/grefs(unc).json"} == {
        k: v for k, v in plain_digests.items() if k != "synthref/refs(unc).p"
    }
    assert "synthref/refs(unc).p" not in digests and "synthref/grefs(unc).json" not in plain_digests
    refs = load_plain_pickle(plain / "synthref" / "refs(unc).p")
    # The plain refs come first, with the same ids, ann ids and sentences; the others after them.
    for ref, gref in zip(refs, grefs):
        assert gref == {**ref, "ann_id": [ref["ann_id"]], "category_id": [ref["category_id"]], "no_target": False}
    assert {_kind(r) for r in grefs[len(refs) :]} == {"multi", "none"}


def test_generalized_set_is_deterministic_by_seed(small_generalized, tmp_path):
    root = small_generalized
    again = write_synthetic(tmp_path / "again", **ARGS, generalized=True, progress=False).parent
    assert _digest(again) == _digest(root)
    other = write_synthetic(tmp_path / "other", **{**ARGS, "seed": 4}, generalized=True, progress=False).parent
    assert _digest(other)["synthref/grefs(unc).json"] != _digest(root)["synthref/grefs(unc).json"]


def test_about_a_tenth_of_the_expressions_are_multi_target_and_a_tenth_no_target(generalized):
    _, _, grefs = generalized
    counts = {"single": 0, "multi": 0, "none": 0}
    for ref in grefs:
        counts[_kind(ref)] += len(ref["sentences"])
    total = sum(counts.values())
    assert 0.07 <= counts["multi"] / total <= 0.13 and 0.07 <= counts["none"] / total <= 0.13, counts


def _head_and_landmark(text):
    """The noun phrase an expression names, without its position, and its landmark (or None)."""
    for phrase in RELATIONS:
        if f" {phrase} the " in text:
            head, landmark = text.split(f" {phrase} the ")
            return head.removeprefix("the "), landmark
    for phrase in EXTREMES:
        text = text.replace(phrase, "")
    return text.removeprefix("the ").strip(), None


def test_each_group_expression_fits_exactly_its_shapes_and_each_no_target_expression_none(generalized):
    from collections import Counter

    forms = Counter()
    _, items, grefs = generalized
    by_image = {item.image_id: item for item in items}
    first_ann_id = {}
    for item in items:
        first_ann_id[item.image_id] = sum(len(i.shapes) for i in items if i.image_id < item.image_id) + 1
    short_side = min(GENERALIZED["width"], GENERALIZED["height"])
    sides = 0
    for ref in grefs:
        item = by_image[ref["image_id"]]
        texts = [s["sent"] for s in ref["sentences"]]
        if _kind(ref) == "multi":
            group = [ann_id - first_ann_id[item.image_id] for ann_id in ref["ann_id"]]
            assert 2 <= len(group) <= 3 and all(0 <= k < len(item.shapes) for k in group)
            for text in texts:
                assert _resolve_group(text, item.shapes, short_side) == group, (item.file_name, text)
                sides += any(text.endswith(phrase) for phrase in SIDES)
        elif _kind(ref) == "none":
            [text] = texts
            head, landmark = _head_and_landmark(text)
            forms[(landmark is not None, head != text.removeprefix("the ").strip() and landmark is None)] += 1
            assert _fitting(head, item.shapes) == [], (item.file_name, text)
            # A near miss: each word on its own finds a shape; a landmark is one shape.
            assert all(_fitting(w, item.shapes) for w in head.split() if w != "the"), (item.file_name, text)
            assert landmark is None or len(_fitting(landmark, item.shapes)) == 1, (item.file_name, text)
    assert sides > 0
    # No-target expressions come in every form single-target ones do: attributes alone, with a
    # position, with a relation.
    assert all(forms[form] > 0 for form in ((False, False), (False, True), (True, False))), forms


def test_grefs_holds_lists_of_ids_and_minus_one_for_no_target(generalized, tmp_path):
    root, _, grefs = generalized
    instances = json.loads((root / "synthref" / "instances.json").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    files = {image["id"]: image["file_name"] for image in instances["images"]}
    for ref in grefs:
        assert set(ref) == {"ref_id", "ann_id", "image_id", "split", "sentences", "sent_ids", "category_id", "file_name", "no_target"}
        assert ref["no_target"] == (ref["ann_id"] == [-1])
        if ref["no_target"]:
            assert ref["category_id"] == [-1]
        else:
            assert all(anns[i]["image_id"] == ref["image_id"] for i in ref["ann_id"])
            assert ref["category_id"] == [anns[i]["category_id"] for i in ref["ann_id"]]
        assert ref["file_name"] == files[ref["image_id"]].replace(".jpg", f"_{ref['ann_id'][0]}.jpg")
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
    assert [r["ref_id"] for r in grefs] == list(range(1, len(grefs) + 1))
    sent_ids = [i for r in grefs for i in r["sent_ids"]]
    assert sent_ids == list(range(1, len(sent_ids) + 1))
    # Each layout removes the other's refs file, which a reader would otherwise read.
    small = {**GENERALIZED, "images": (2, 1, 1, 1)}
    write_synthetic(tmp_path, **small, progress=False)
    write_synthetic(tmp_path, **small, generalized=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "synthref").glob("*refs*")) == ["grefs(unc).json"]
    write_synthetic(tmp_path, **small, progress=False)
    assert sorted(p.name for p in (tmp_path / "synthref").glob("*refs*")) == ["refs(unc).p"]


def test_reader_reads_the_generalized_set_with_union_masks(generalized):
    root, items, grefs = generalized
    masks = [mask for item in items for mask in item.masks]  # by annotation id - 1
    index = ReferIndex.load(root, "synthref", "unc", progress=False)
    refs = [ref for split in index.splits for ref in index.refs(split)]
    assert len(refs) == len(grefs)
    kinds = set()
    for ref in refs:
        if ref.no_target:
            kinds.add("none")
            assert not index.mask(ref.ref_id).any()
        elif len(ref.ann_ids) > 1:
            kinds.add("multi")
            union = np.logical_or.reduce([masks[i - 1] for i in ref.ann_ids]).astype(np.uint8)
            np.testing.assert_array_equal(index.mask(ref.ref_id), union)
    assert kinds == {"none", "multi"}


def test_synth_command_writes_a_generalized_set(tmp_path, capsys):
    argv = ["data", "synth", "--out", str(tmp_path), "--images", "3", "1", "1", "1", "--size", "96", "72", "--generalized"]
    assert main(argv) == 0
    assert "data.dataset=synthref" in capsys.readouterr().out
    assert (tmp_path / "synthref" / "grefs(unc).json").is_file() and not (tmp_path / "synthref" / "refs(unc).p").exists()
