"""`mmnet data synth`: a synthetic referring dataset written in the `refer` layout, deterministic by seed.

    <out>/<name>/refs(unc).p      protocol-2 pickle (Python 2 reads it too), splits train, val, testA, testB
    <out>/<name>/instances.json   COCO images, annotations (polygons; every fourth one as uncompressed RLE), categories
    <out>/images/train2014/<name>_<12-digit image id>.jpg

Image files carry the dataset name, so they never overwrite COCO's own files in the same folder.
The scenes and expressions are described in `mmnet.data.scenes`.

A generalized set (`generalized=True`, gRefCOCO's layout) writes grefs(unc).json, a JSON list of
refs whose ann_id and category_id are lists ([-1] for a ref to nothing, with no_target true), in
place of refs(unc).p. Its images, instances.json and single-target refs (same ids, same sentences)
are the plain set's of the same seed, byte for byte; to them it adds, after all of them, refs to
two or three shapes and refs to nothing, drawn from a second random stream per image so that the
plain set's draws stay as they are. Of all expressions, about GENERALIZED_SHARES of each kind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from mmnet.data.errors import DataError
from mmnet.data.masks import uncompressed_rle
from mmnet.data.scenes import (
    KIND_WORDS,
    Shape,
    choose_expressions,
    describe,
    describe_absent,
    describe_groups,
    is_referable,
    render,
    sample_scene,
)

SPLITS = ("train", "val", "testA", "testB")
CATEGORY_IDS = {kind: i + 1 for i, kind in enumerate(KIND_WORDS)}
# Real instances.json files use RLE for crowd regions only; writing some shapes as RLE keeps both
# decoding paths in use.
RLE_EVERY = 4
# The share of all expressions in a generalized set that refer to several shapes, and to none.
GENERALIZED_SHARES = {"multi": 0.1, "none": 0.1}
# Images a worker draws at a time when several processes draw them.
IMAGES_PER_TASK = 32


@dataclass
class SyntheticImage:
    image_id: int
    split: str
    file_name: str
    pixels: Optional[np.ndarray]
    """uint8 H x W x 3; None once the writer has saved them."""
    shapes: list[Shape]
    masks: list[np.ndarray]
    """Each shape's uint8 H x W mask, as drawn."""
    expressions: dict[int, list[str]]
    """Index of each referred shape -> its expressions."""
    groups: dict[tuple[int, ...], list[str]] = field(default_factory=dict)
    """Generalized sets only: indices of two or three shapes -> expressions that fit exactly them."""
    absent: list[str] = field(default_factory=list)
    """Generalized sets only: expressions that fit no shape."""


def generate(
    *, name: str, seed: int, images: Sequence[int], width: int, height: int, generalized: bool = False
) -> Iterator[SyntheticImage]:
    """The images of the four splits in order; image i of a split depends only on (seed, split, i).

    With ``generalized``, each image also gets group and no-target expressions (``groups``,
    ``absent``), drawn from a second stream so that all else is as without.
    """
    return map(_draw, _tasks(name=name, seed=seed, images=images, width=width, height=height, generalized=generalized))


def _tasks(*, name: str, seed: int, images: Sequence[int], width: int, height: int, generalized: bool) -> list[tuple]:
    """``_draw``'s argument for each image, in order."""
    tasks, image_id = [], 0
    for split_index, count in enumerate(images):
        for i in range(count):
            image_id += 1
            tasks.append((name, seed, split_index, i, image_id, width, height, generalized))
    return tasks


def _in_order(function: Callable, tasks: list, workers: int) -> Iterator:
    """``map(function, tasks)``, in ``workers`` processes when more than one."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(function, tasks)
        return
    # spawn, not fork: the parent may hold torch's threads, which a forked child would inherit.
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap(function, tasks, chunksize=min(IMAGES_PER_TASK, max(1, len(tasks) // (4 * workers))))


def _draw_and_save(task: tuple, *, image_dir: Path) -> SyntheticImage:
    """``_draw``, with the image saved as ``image_dir/<file_name>`` and its pixels dropped."""
    item = _draw(task)
    Image.fromarray(item.pixels).save(image_dir / item.file_name, quality=95)
    item.pixels = None
    return item


def _draw(task: tuple) -> SyntheticImage:
    """Image i of split ``split_index``, numbered ``image_id``."""
    name, seed, split_index, i, image_id, width, height, generalized = task
    rng = np.random.default_rng([seed, split_index, i])
    expressions: dict[int, list[str]] = {}
    while not expressions:
        shapes = sample_scene(rng, width=width, height=height)
        for k, shape in enumerate(shapes):
            if is_referable(shape, shapes):
                described = describe(shape, shapes, rng, short_side=min(width, height))
                if chosen := choose_expressions(described, rng):
                    expressions[k] = chosen
    pixels, masks = render(shapes, rng, width=width, height=height)
    item = SyntheticImage(image_id, SPLITS[split_index], f"{name}_{image_id:012d}.jpg", pixels, shapes, masks, expressions)
    if generalized:
        _add_generalized(item, np.random.default_rng([seed, split_index, i, 1]), short_side=min(width, height))
    return item


def _add_generalized(item: SyntheticImage, rng: np.random.Generator, *, short_side: int) -> None:
    """Draws the image's group and no-target expressions, as many of each kind, on average, as make
    its share of GENERALIZED_SHARES beside the image's single-target expressions."""
    singles = sum(len(texts) for texts in item.expressions.values())
    scale = singles / (1 - sum(GENERALIZED_SHARES.values()))
    groups = describe_groups(item.shapes, rng, short_side=short_side)
    owner = {text: group for group, texts in groups.items() for text in texts}
    for text in choose_expressions(groups, rng, most=_rounded(scale * GENERALIZED_SHARES["multi"], rng)):
        item.groups.setdefault(owner[text], []).append(text)
    absent = describe_absent(item.shapes, rng)
    item.absent = choose_expressions(absent, rng, most=_rounded(scale * GENERALIZED_SHARES["none"], rng))


def _rounded(mean: float, rng: np.random.Generator) -> int:
    """mean rounded down or up at random, mean on average."""
    return int(mean + rng.random())


def write_synthetic(
    out: str | Path,
    *,
    name: str = "synthref",
    seed: int = 0,
    images: Sequence[int] = (400, 50, 50, 50),
    width: int = 320,
    height: int = 240,
    generalized: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Writes the dataset under ``out`` (the data.root of a config); returns the dataset folder.

    With ``generalized``, grefs(unc).json in gRefCOCO's layout in place of refs(unc).p. Each
    layout removes the other's refs file left by an earlier set of the same name, which a reader
    would otherwise find. With ``workers`` > 1, that many processes draw the images, and the
    files are the same, byte for byte. They start by ``spawn``, which imports the calling script
    again: a script that asks for them keeps its work under ``if __name__ == "__main__":``.
    """
    # The name becomes a folder under out and the prefix of image files beside COCO's.
    if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise DataError(f"dataset name {name!r} must be a plain folder name, without / or \\")
    out = Path(out)
    dataset_dir, image_dir = out / name, out / "images" / "train2014"
    dataset_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    instances: dict = {
        "info": {"description": f"synthetic referring shapes, seed {seed}"},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": kind, "supercategory": "shape"} for kind, i in CATEGORY_IDS.items()],
    }
    refs: list[dict] = []
    # Group and no-target refs: (image, split, file name, ann ids, category ids, expressions),
    # numbered after all single-target refs.
    extra: list[tuple[int, str, str, list[int], list[int], list[str]]] = []
    sentences = _Sentences()
    tasks = _tasks(name=name, seed=seed, images=images, width=width, height=height, generalized=generalized)
    drawn = _in_order(functools.partial(_draw_and_save, image_dir=image_dir), tasks, workers)
    # closing: an error below stops the worker processes at once, not when the generator is collected.
    with contextlib.closing(drawn):
        for item in tqdm(drawn, total=len(tasks), desc=f"writing {name}", unit="image", disable=not progress):
            instances["images"].append({"id": item.image_id, "file_name": item.file_name, "height": height, "width": width})
            first_ann_id = len(instances["annotations"]) + 1
            # One string object per split, as when drawn here: refs(unc).p then pickles the same bytes
            # whether the images came from this process or from workers.
            image = (item.image_id, sys.intern(item.split), item.file_name)
            for k, (shape, mask) in enumerate(zip(item.shapes, item.masks)):
                ann_id = len(instances["annotations"]) + 1
                instances["annotations"].append(
                    {
                        "id": ann_id,
                        "image_id": item.image_id,
                        "category_id": CATEGORY_IDS[shape.kind],
                        "segmentation": uncompressed_rle(mask) if ann_id % RLE_EVERY == 0 else [shape.polygon()],
                        "area": int(mask.sum()),
                        "bbox": _bbox(mask),
                        "iscrowd": 0,
                    }
                )
                if k in item.expressions:
                    refs.append(_ref(len(refs) + 1, *image, ann_id, CATEGORY_IDS[shape.kind], sentences.make(item.expressions[k])))
            for group, texts in item.groups.items():
                extra.append((*image, [first_ann_id + k for k in group], [CATEGORY_IDS[item.shapes[k].kind] for k in group], texts))
            extra += [(*image, [-1], [-1], [text]) for text in item.absent]
    (dataset_dir / "instances.json").write_text(json.dumps(instances))
    plain, grefs = dataset_dir / "refs(unc).p", dataset_dir / "grefs(unc).json"
    if not generalized:
        grefs.unlink(missing_ok=True)
        with plain.open("wb") as file:
            pickle.dump(refs, file, protocol=2)
        return dataset_dir
    for ref in refs:
        ref.update(ann_id=[ref["ann_id"]], category_id=[ref["category_id"]], no_target=False)
    for image_id, split, file_name, ann_ids, category_ids, texts in extra:
        ref = _ref(len(refs) + 1, image_id, split, file_name, ann_ids[0], category_ids, sentences.make(texts))
        refs.append({**ref, "ann_id": ann_ids, "no_target": ann_ids == [-1]})
    plain.unlink(missing_ok=True)
    grefs.write_text(json.dumps(refs))
    return dataset_dir


class _Sentences:
    """Numbers sentences from 1 in the order they are made."""

    def __init__(self):
        self.last_id = 0

    def make(self, texts: list[str]) -> list[dict]:
        made = []
        for text in texts:
            self.last_id += 1
            made.append({"tokens": text.split(), "raw": text[0].upper() + text[1:], "sent_id": self.last_id, "sent": text})
        return made


def _ref(ref_id: int, image_id: int, split: str, file_name: str, ann_id: int, category_id, sentences: list[dict]) -> dict:
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "split": split,
        "sentences": sentences,
        "sent_ids": [s["sent_id"] for s in sentences],
        "category_id": category_id,
        # As in the real files: the image name with the (first) annotation id, not a file on disk.
        "file_name": f"{Path(file_name).stem}_{ann_id}.jpg",
    }


def _bbox(mask: np.ndarray) -> list[float]:
    """COCO box [x, y, width, height] of the mask's pixels."""
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]
