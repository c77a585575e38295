"""Data fixtures: small datasets written in the exact formats users download, and a small synthetic
set; and one CPU for every machine the tests run on."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask


@pytest.fixture(autouse=True)
def cpu_without_native_bf16(monkeypatch):
    """``eval.precision: auto`` computes in bf16 on CPUs with AMX or AVX512-BF16. Tests compare
    the predictor and evaluation with the model's fp32 outputs, so every CPU reports neither;
    tests of the choice itself report what they need."""
    import torch

    real = torch.cpu.get_capabilities()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**real, "amx_bf16": False, "avx512_bf16": False})


@dataclass
class HandmadeRefer:
    """A refcoco-like set: <root>/refcoco/refs(unc).p, instances.json, three images under <root>/images/train2014."""

    root: Path
    refs: list[dict]
    instances: dict
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    """ref_id -> the mask worked out by hand, uint8 H x W."""
    colours: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    """image_id -> the RGB colour every pixel should read as."""

    @property
    def dataset_dir(self) -> Path:
        return self.root / "refcoco"

    def image_path(self, image_id: int) -> Path:
        return self.root / "images" / "train2014" / f"COCO_train2014_{image_id:012d}.jpg"

    def write(self) -> None:
        """(Re)writes both annotation files from ``refs`` and ``instances``, as the real ones are written."""
        self.dataset_dir.mkdir(parents=True, exist_ok=True)
        with (self.dataset_dir / "refs(unc).p").open("wb") as file:
            pickle.dump(self.refs, file, protocol=2)
        (self.dataset_dir / "instances.json").write_text(json.dumps(self.instances))


def _ref(ref_id: int, ann_id: int, image_id: int, split: str, texts: list[str], first_sent_id: int) -> dict:
    sentences = [
        {"tokens": text.split(), "raw": text.upper(), "sent_id": first_sent_id + i, "sent": text} for i, text in enumerate(texts)
    ]
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "split": split,
        "sentences": sentences,
        "sent_ids": [s["sent_id"] for s in sentences],
        "category_id": 1,
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
    }


@pytest.fixture
def handmade(tmp_path: Path) -> HandmadeRefer:
    """Polygon (two parts), crowd uncompressed RLE and compressed RLE annotations on an RGB, a grayscale and a CMYK JPEG."""
    # Image 1, RGB 40 x 30: ref 1 is two polygons, the rectangles x 4..13, y 3..8 and x 20..23, y 20..23
    # (pycocotools fills pixel [x, x+1) when the outline runs along x and x+1).
    rgb = np.zeros((30, 40), np.uint8)
    rgb[3:9, 4:14] = 1
    rgb[20:24, 20:24] = 1
    # Image 2, grayscale 36 x 24: ref 2 is a crowd RLE of rows 2..9 in columns 5..7. Runs go down the
    # columns: 5 columns of 24 and 2 rows of background, 8 foreground, the 14 rows left of the column
    # and 2 of the next background, ...
    gray = np.zeros((24, 36), np.uint8)
    gray[2:10, 5:8] = 1
    crowd_counts = [5 * 24 + 2, 8, 14 + 2, 8, 14 + 2, 8, 24 * 36 - (5 * 24 + 2) - 8 * 3 - 16 * 2]
    # Image 3, CMYK 32 x 20: ref 3 is a compressed RLE of an L shape.
    cmyk = np.zeros((20, 32), np.uint8)
    cmyk[5:15, 10:13] = 1
    cmyk[12:15, 13:20] = 1
    compressed = coco_mask.encode(np.asfortranarray(cmyk))["counts"].decode("ascii")

    images = [(1, 40, 30), (2, 36, 24), (3, 32, 20)]
    instances = {
        "info": {},
        "licenses": [],
        "images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": h, "width": w} for i, w, h in images],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 76.0, "bbox": [4, 3, 20, 21],
             "segmentation": [[4, 3, 14, 3, 14, 9, 4, 9], [20, 20, 24, 20, 24, 24, 20, 24]]},
            {"id": 12, "image_id": 2, "category_id": 1, "iscrowd": 1, "area": 24.0, "bbox": [5, 2, 3, 8],
             "segmentation": {"counts": crowd_counts, "size": [24, 36]}},
            {"id": 13, "image_id": 3, "category_id": 1, "iscrowd": 0, "area": 51.0, "bbox": [10, 5, 10, 10],
             "segmentation": {"counts": compressed, "size": [20, 32]}},
            {"id": 14, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 4.0, "bbox": [30, 1, 2, 2],
             "segmentation": [[30, 1, 32, 1, 32, 3, 30, 3]]},
        ],
        "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}],
    }
    refs = [
        _ref(1, 11, 1, "train", ["the two red boxes", "red blocks"], first_sent_id=100),
        _ref(2, 12, 2, "testA", ["grey crowd"], first_sent_id=102),
        _ref(3, 13, 3, "testB", ["the l shape", "red corner", "thing on the left"], first_sent_id=103),
        _ref(4, 14, 1, "val", ["tiny square top right"], first_sent_id=106),
    ]
    small = np.zeros((30, 40), np.uint8)
    small[1:3, 30:32] = 1
    made = HandmadeRefer(root=tmp_path, refs=refs, instances=instances, masks={1: rgb, 2: gray, 3: cmyk, 4: small})
    made.write()

    image_dir = tmp_path / "images" / "train2014"
    image_dir.mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(made.image_path(1), quality=95)
    Image.new("L", (36, 24), 90).save(made.image_path(2), quality=95)
    Image.new("CMYK", (32, 20), (0, 255, 255, 0)).save(made.image_path(3), quality=95)
    made.colours = {1: (200, 30, 30), 2: (90, 90, 90), 3: (255, 0, 0)}
    return made


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic set (seed 3): <root>/synthref, 6 / 2 / 2 / 2 images of 128 x 96."""
    from mmnet.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, name="synthref", seed=3, images=(6, 2, 2, 2), width=128, height=96, progress=False)
    return root


@pytest.fixture(scope="session")
def generalized_root(tmp_path_factory) -> Path:
    """The generalized set of ``synth_root``'s arguments: <root>/synthgref in gRefCOCO's layout,
    with expressions that name several shapes or none."""
    from mmnet.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("generalized")
    write_synthetic(root, name="synthgref", seed=3, images=(6, 2, 2, 2), width=128, height=96, generalized=True, progress=False)
    return root
