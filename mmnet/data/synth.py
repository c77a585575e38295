"""`mmnet data synth`: a synthetic referring dataset written in the `refer` layout, deterministic by seed.

    <out>/<name>/refs(unc).p      protocol-2 pickle (Python 2 reads it too), splits train, val, testA, testB
    <out>/<name>/instances.json   COCO images, annotations (polygons; every fourth one as uncompressed RLE), categories
    <out>/images/train2014/<name>_<12-digit image id>.jpg

Image files carry the dataset name, so they never overwrite COCO's own files in the same folder.
The scenes and expressions are described in `mmnet.data.scenes`.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from mmnet.data.errors import DataError
from mmnet.data.masks import uncompressed_rle
from mmnet.data.scenes import KIND_WORDS, Shape, choose_expressions, describe, is_referable, render, sample_scene

SPLITS = ("train", "val", "testA", "testB")
CATEGORY_IDS = {kind: i + 1 for i, kind in enumerate(KIND_WORDS)}
# Real instances.json files use RLE for crowd regions only; writing some shapes as RLE keeps both
# decoding paths in use.
RLE_EVERY = 4


@dataclass
class SyntheticImage:
    image_id: int
    split: str
    file_name: str
    pixels: np.ndarray
    """uint8 H x W x 3."""
    shapes: list[Shape]
    masks: list[np.ndarray]
    """Each shape's uint8 H x W mask, as drawn."""
    expressions: dict[int, list[str]]
    """Index of each referred shape -> its expressions."""


def generate(*, name: str, seed: int, images: Sequence[int], width: int, height: int) -> Iterator[SyntheticImage]:
    """The images of the four splits in order; image i of a split depends only on (seed, split, i)."""
    image_id = 0
    for split_index, (split, count) in enumerate(zip(SPLITS, images)):
        for i in range(count):
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
            image_id += 1
            yield SyntheticImage(image_id, split, f"{name}_{image_id:012d}.jpg", pixels, shapes, masks, expressions)


def write_synthetic(
    out: str | Path,
    *,
    name: str = "synthref",
    seed: int = 0,
    images: Sequence[int] = (400, 50, 50, 50),
    width: int = 320,
    height: int = 240,
    progress: bool = True,
) -> Path:
    """Writes the dataset under ``out`` (the data.root of a config); returns the dataset folder."""
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
    sent_id = 0
    items = generate(name=name, seed=seed, images=images, width=width, height=height)
    for item in tqdm(items, total=sum(images), desc=f"writing {name}", unit="image", disable=not progress):
        Image.fromarray(item.pixels).save(image_dir / item.file_name, quality=95)
        instances["images"].append({"id": item.image_id, "file_name": item.file_name, "height": height, "width": width})
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
            if k not in item.expressions:
                continue
            sentences = []
            for text in item.expressions[k]:
                sent_id += 1
                sentences.append({"tokens": text.split(), "raw": text[0].upper() + text[1:], "sent_id": sent_id, "sent": text})
            refs.append(
                {
                    "ref_id": len(refs) + 1,
                    "ann_id": ann_id,
                    "image_id": item.image_id,
                    "split": item.split,
                    "sentences": sentences,
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "category_id": CATEGORY_IDS[shape.kind],
                    # As in the real files: the image name with the annotation id, not a file on disk.
                    "file_name": f"{Path(item.file_name).stem}_{ann_id}.jpg",
                }
            )
    (dataset_dir / "instances.json").write_text(json.dumps(instances))
    with (dataset_dir / "refs(unc).p").open("wb") as file:
        pickle.dump(refs, file, protocol=2)
    return dataset_dir


def _bbox(mask: np.ndarray) -> list[float]:
    """COCO box [x, y, width, height] of the mask's pixels."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
