"""The `refer` layout read as downloaded: refs pickle, instances.json and COCO images.

    <root>/<dataset>/refs(<split_by>).p    refs: ref_id, ann_id, image_id, split, sentences
    <root>/<dataset>/instances.json        COCO images, annotations (polygons or RLE), categories
    <image_dir>/<file_name>                file_name of the instances.json image (not the ref's)

gRefCOCO (generalized referring expressions) is the same layout with grefs(<split_by>).json (or,
in older copies, the pickle grefs(<split_by>).p) in place of the refs pickle: a ref's ann_id is
one annotation id or a list of them, and [-1] is a ref that refers to nothing (an empty mask).

Parsing instances.json takes seconds and a lot of memory on the real files, so the parsed index
(refs, sentences, image files, one compressed RLE per referred annotation) is written once as
JSON in the cache folder and read from there for as long as both source files keep their size
and modification time. Data-loader workers inherit the index; none of them parses anything.
"""

from __future__ import annotations

import json
import os
import reprlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
from tqdm import tqdm

from mmnet.config import DataConfig
from mmnet.data.errors import DataError, read_bytes
from mmnet.data.masks import decode_rle, segmentation_to_rle
from mmnet.data.pickles import load_plain_pickle
from mmnet.data.tokenizer import word_tokens

# 2: segmentations, field types and expressions are checked as the tokenizer sees them.
# 3: invisible characters (zero-width spaces, joiners) no longer count as words.
# 4: a ref holds a list of annotation ids (gRefCOCO: several, or none for a no-target ref).
CACHE_VERSION = 4
# The order splits are listed in; other names follow alphabetically.
SPLIT_ORDER = ("train", "val", "test", "testA", "testB")


class Sentence(NamedTuple):
    sent_id: int
    ref_id: int
    text: str


class Ref(NamedTuple):
    ref_id: int
    ann_ids: tuple[int, ...]
    """The referred annotations: one in `refer`, one or more in gRefCOCO, none for a no-target ref."""
    image_id: int
    split: str
    sentences: tuple[Sentence, ...]

    @property
    def no_target(self) -> bool:
        """True for a gRefCOCO ref that refers to nothing in its image (ann_id [-1])."""
        return not self.ann_ids


class ImageRecord(NamedTuple):
    image_id: int
    file_name: str
    height: int
    width: int


@dataclass
class ReferFiles:
    """Where the files of one dataset and split-by lie."""

    root: Path
    dataset: str
    split_by: str
    image_dir: Optional[Path] = None
    """None means <root>/images/train2014."""
    cache_dir: Optional[Path] = None
    """None means <root>/<dataset>/cache."""

    def __post_init__(self):
        self.root = Path(self.root)
        self.image_dir = Path(self.image_dir) if self.image_dir is not None else self.root / "images" / "train2014"
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else self.root / self.dataset / "cache"

    @property
    def refs_path(self) -> Path:
        """The first of refs(<split_by>).p, grefs(<split_by>).json and grefs(<split_by>).p that
        exists; the first when none does (so that `require` names it)."""
        candidates = self._refs_candidates()
        return next((path for path in candidates if path.exists()), candidates[0])

    @property
    def generalized(self) -> bool:
        """True when the refs file is gRefCOCO's grefs file."""
        return self.refs_path.name.startswith("grefs(")

    def _refs_candidates(self) -> list[Path]:
        folder = self.root / self.dataset
        return [folder / f"refs({self.split_by}).p", folder / f"grefs({self.split_by}).json", folder / f"grefs({self.split_by}).p"]

    @property
    def instances_path(self) -> Path:
        return self.root / self.dataset / "instances.json"

    @property
    def cache_path(self) -> Path:
        """Named after the refs file, so that grefs(<split_by>).json and grefs(<split_by>).p never
        share a cache; refs(<split_by>).p keeps the name it always had, without its suffix."""
        name = self.refs_path.name if self.generalized else self.refs_path.stem
        return self.cache_dir / f"{self.dataset}.{name}.index.json"

    def require(self) -> None:
        """Raises DataError naming the first source file that is missing."""
        if not self.refs_path.exists():
            folder = self.refs_path.parent
            present = sorted({p.name for pattern in ("refs(*).p", "grefs(*).json", "grefs(*).p") for p in folder.glob(pattern)})
            found = f"; refs files there: {', '.join(present)}" if present else ""
            looked = ", ".join(path.name for path in self._refs_candidates()[1:])
            raise DataError(f"{self.refs_path}: refs pickle not found{found} (nor {looked})")
        if not self.instances_path.exists():
            raise DataError(f"{self.instances_path}: instances.json not found")

    def signature(self) -> dict[str, list[int]]:
        """Size and modification time of the source files; the cache is valid while they are unchanged."""
        stats = {"refs": self.refs_path.stat(), "instances": self.instances_path.stat()}
        return {name: [stat.st_size, stat.st_mtime_ns] for name, stat in stats.items()}


class ReferIndex:
    """Refs, sentences, image files and masks of one dataset and split-by, all splits."""

    def __init__(self, files: ReferFiles, payload: dict[str, list]):
        self.files = files
        self._images = {row[0]: ImageRecord(*row) for row in payload["images"]}
        self._masks = dict(payload["masks"])
        self._refs: dict[int, Ref] = {}
        self._splits: dict[str, list[int]] = {}
        for ref_id, ann_ids, image_id, split, sentences in payload["refs"]:
            ann_ids = tuple(ann_ids)  # empty for no target
            if any(ann_id not in self._masks for ann_id in ann_ids) or image_id not in self._images:
                raise ValueError(f"ref {ref_id} has no mask or image in the payload")
            sentences = tuple(Sentence(sent_id, ref_id, text) for sent_id, text in sentences)
            self._refs[ref_id] = Ref(ref_id, ann_ids, image_id, split, sentences)
            self._splits.setdefault(split, []).append(ref_id)

    @classmethod
    def load(
        cls,
        root: str | Path,
        dataset: str,
        split_by: str,
        *,
        image_dir: Optional[str | Path] = None,
        cache_dir: Optional[str | Path] = None,
        progress: bool = True,
    ) -> "ReferIndex":
        """Reads the index from the cache, or parses the source files and writes the cache.

        Raises DataError naming the file at the first problem with the source files.
        """
        files = ReferFiles(root, dataset, split_by, image_dir=image_dir, cache_dir=cache_dir)
        files.require()
        signature = files.signature()
        cached = _read_cache(files.cache_path, signature)
        if cached is not None:
            try:
                return cls(files, cached)
            except (KeyError, TypeError, ValueError):
                pass  # a cache that does not hold together is stale, like an outdated one
        payload, problems = parse_refer(files, progress=progress)
        if problems:
            raise DataError(
                f"{len(problems)} problem(s) in {dataset} ({split_by}), the first: {problems[0]}. "
                f"`mmnet data check --root {root} --dataset {dataset} --split-by {split_by}` lists them all"
            )
        _write_cache(files.cache_path, {"version": CACHE_VERSION, "sources": signature, **payload})
        return cls(files, payload)

    @classmethod
    def from_config(cls, config: DataConfig, *, progress: bool = True) -> "ReferIndex":
        return cls.load(
            config.root,
            config.dataset,
            config.split_by,
            image_dir=config.image_dir,
            cache_dir=config.cache_dir,
            progress=progress,
        )

    @property
    def generalized(self) -> bool:
        """True for gRefCOCO: refs may name several objects, or none."""
        return self.files.generalized

    @property
    def splits(self) -> list[str]:
        known = [split for split in SPLIT_ORDER if split in self._splits]
        return known + sorted(set(self._splits) - set(known))

    def refs(self, split: str) -> list[Ref]:
        """The refs of one split, by exact name (``test`` is not ``testA``)."""
        if split not in self._splits:
            raise DataError(f"{self.files.refs_path}: no split '{split}'; the splits here are {', '.join(self.splits)}")
        return [self._refs[ref_id] for ref_id in self._splits[split]]

    def sentences(self, split: str) -> list[Sentence]:
        return [sentence for ref in self.refs(split) for sentence in ref.sentences]

    def ref(self, ref_id: int) -> Ref:
        return self._refs[ref_id]

    def image(self, image_id: int) -> ImageRecord:
        return self._images[image_id]

    def image_path(self, image_id: int) -> Path:
        return self.files.image_dir / self._images[image_id].file_name

    def mask(self, ref_id: int) -> np.ndarray:
        """The referred objects' mask at the original image size: uint8 H x W in {0, 1}, the union
        of the referred annotations' masks; all zeros for a no-target ref."""
        ref = self._refs[ref_id]
        image = self._images[ref.image_id]
        mask = np.zeros((image.height, image.width), np.uint8)
        for ann_id in ref.ann_ids:
            mask |= decode_rle(self._masks[ann_id], height=image.height, width=image.width)
        return mask


def parse_refer(files: ReferFiles, *, progress: bool = True) -> tuple[dict[str, list], list[str]]:
    """Parses the source files into the cached payload; returns it with every problem found.

    Unreadable files raise DataError; faults in single refs or records are returned as messages
    (each naming its file and the id) and leave that ref or record out of the payload.
    """
    generalized = files.generalized
    refs = _read_refs(files.refs_path)
    instances = _read_instances(files.instances_path)
    problems: list[str] = []
    images = _records_by_id(instances["images"], IMAGE_FIELDS, "image", files.instances_path, problems)
    anns = _records_by_id(instances["annotations"], ANNOTATION_FIELDS, "annotation", files.instances_path, problems)

    payload: dict[str, list] = {"refs": [], "images": [], "masks": []}
    used_images: set[int] = set()
    masks: dict[int, str] = {}
    seen_refs: set[int] = set()
    seen_sents: set[int] = set()
    for position, ref in enumerate(tqdm(refs, desc=f"indexing {files.refs_path.name}", unit="ref", disable=not progress)):
        label = _label(ref, "ref_id", position)
        fault = _ref_fault(ref, images, anns, seen_refs, seen_sents, generalized=generalized)
        if fault is not None:
            problems.append(f"{files.refs_path}: ref {label}: {fault}")
            continue
        ann_ids, image = _ann_ids(ref["ann_id"], generalized=generalized), images[ref["image_id"]]
        try:
            for ann_id in ann_ids:
                if ann_id not in masks:
                    masks[ann_id] = segmentation_to_rle(anns[ann_id]["segmentation"], height=image["height"], width=image["width"])
        except ValueError as err:
            problems.append(f"{files.instances_path}: annotation {ann_id} (of ref {label}): {err}")
            continue
        sentences = [[s["sent_id"], s["sent"]] for s in ref["sentences"]]
        payload["refs"].append([ref["ref_id"], list(ann_ids), ref["image_id"], ref["split"], sentences])
        used_images.add(ref["image_id"])

    payload["images"] = [[i, images[i]["file_name"], images[i]["height"], images[i]["width"]] for i in sorted(used_images)]
    payload["masks"] = [[ann_id, counts] for ann_id, counts in sorted(masks.items())]
    return payload, problems


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The fields read from each record: a test of the value and what the value should be.
_ID = (_is_id, "an integer")
_SIDE = (lambda v: _is_id(v) and v > 0, "a positive integer")
_NAME = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
IMAGE_FIELDS = {"id": _ID, "file_name": _NAME, "height": _SIDE, "width": _SIDE}
ANNOTATION_FIELDS = {
    "id": _ID,
    "image_id": _ID,
    "segmentation": (lambda v: isinstance(v, (list, dict)), "a list of polygons or an RLE dict"),
}
REF_FIELDS = {
    "ref_id": _ID,
    "ann_id": _ID,
    "image_id": _ID,
    "split": _NAME,
    "sentences": (lambda v: isinstance(v, list) and v != [], "a non-empty list"),
}
# gRefCOCO: one annotation id or a list of them; the list is checked by _ann_id_list_fault.
GREF_FIELDS = {**REF_FIELDS, "ann_id": (lambda v: _is_id(v) or isinstance(v, list), "an integer or a list of integers")}
SENTENCE_FIELDS = {"sent_id": _ID, "sent": (lambda v: isinstance(v, str), "a string")}


def _field_fault(record: Any, fields: dict) -> Optional[str]:
    """What is wrong with a record's fields, or None."""
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not a dict"
    missing = [key for key in fields if key not in record]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key, (valid, should_be) in fields.items():
        if not valid(record[key]):
            return f"{key} {reprlib.repr(record[key])} is not {should_be}"
    return None


def _label(record: Any, key: str, position: int) -> str:
    """A record's id where it has a usable one, else its position in its list."""
    if isinstance(record, dict) and _is_id(record.get(key)):
        return str(record[key])
    return f"#{position}"


# gRefCOCO's ann_id of a ref that refers to nothing, alone or as [-1].
NO_TARGET = -1


def _ann_ids(value: int | list[int], *, generalized: bool) -> tuple[int, ...]:
    """The annotation ids of a ref's checked ann_id, each once (a repeat changes no union); none for
    gRefCOCO's no-target ref."""
    ids = (value,) if _is_id(value) else tuple(dict.fromkeys(value))
    return () if generalized and ids == (NO_TARGET,) else ids


def _ann_id_list_fault(value: int | list) -> Optional[str]:
    """What is wrong with a gRefCOCO ann_id (an integer or a list), or None."""
    if _is_id(value):
        return None
    if not value:
        return f"ann_id [] names no annotation (a ref that refers to nothing has [{NO_TARGET}])"
    for item in value:
        if not _is_id(item):
            return f"ann_id {reprlib.repr(value)} holds {reprlib.repr(item)}, not an integer"
    if NO_TARGET in value and any(item != NO_TARGET for item in value):
        return f"ann_id {reprlib.repr(value)} mixes {NO_TARGET} (no target) with annotation ids"
    return None


def _ref_fault(
    ref: Any, images: dict, anns: dict, seen_refs: set[int], seen_sents: set[int], *, generalized: bool = False
) -> Optional[str]:
    """What is wrong with one ref, or None; records its ids as seen."""
    fault = _field_fault(ref, GREF_FIELDS if generalized else REF_FIELDS)
    if fault is not None:
        return fault
    if ref["ref_id"] in seen_refs:
        return "ref_id used twice"
    seen_refs.add(ref["ref_id"])
    fault = _ann_id_list_fault(ref["ann_id"]) if generalized else None
    if fault is not None:
        return fault
    ann_ids = _ann_ids(ref["ann_id"], generalized=generalized)
    for ann_id in ann_ids:
        if ann_id not in anns:
            return f"its annotation {ann_id} is not in instances.json, or is faulty there"
    if ref["image_id"] not in images:
        return f"its image {ref['image_id']} is not in instances.json, or is faulty there"
    for ann_id in ann_ids:
        if anns[ann_id]["image_id"] != ref["image_id"]:
            return f"its annotation {ann_id} belongs to image {anns[ann_id]['image_id']}, not {ref['image_id']}"
    for position, sentence in enumerate(ref["sentences"]):
        fault = _field_fault(sentence, SENTENCE_FIELDS)
        if fault is not None:
            return f"sentence {_label(sentence, 'sent_id', position)} {fault}"
        if not word_tokens(sentence["sent"]):
            # The tokenizer's own test: text such as "&nbsp;" or "\ufeff" is not blank but has no words.
            return f"sentence {sentence['sent_id']} is empty: {sentence['sent']!r} has no words to tokenise"
        if sentence["sent_id"] in seen_sents:
            return f"sent_id {sentence['sent_id']} used twice"
        seen_sents.add(sentence["sent_id"])
    return None


def _read_refs(path: Path) -> list:
    """The refs: a grefs .json as JSON, any .p by the unpickler that imports nothing."""
    if path.suffix == ".json":
        try:
            refs = json.loads(read_bytes(path, what="grefs file"))
        except (ValueError, RecursionError) as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
    else:
        refs = load_plain_pickle(path)
    if not isinstance(refs, list):
        raise DataError(f"{path}: expected a list of refs, found a {type(refs).__name__}")
    return refs


def _read_instances(path: Path) -> dict:
    try:
        instances = json.loads(read_bytes(path, what="instances.json"))
    except (ValueError, RecursionError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(instances, dict) or not all(isinstance(instances.get(k), list) for k in ("images", "annotations")):
        raise DataError(f"{path}: expected a COCO file with 'images' and 'annotations' lists")
    return instances


def _records_by_id(records: list, fields: dict, kind: str, path: Path, problems: list[str]) -> dict[int, dict]:
    """Records of instances.json by id; each faulty or repeated record is a problem and left out."""
    by_id: dict[int, dict] = {}
    for position, record in enumerate(records):
        fault = _field_fault(record, fields)
        if fault is None and record["id"] in by_id:
            fault = "id used twice"
        if fault is None:
            by_id[record["id"]] = record
        else:
            problems.append(f"{path}: {kind} {_label(record, 'id', position)}: {fault}")
    return by_id


def _read_cache(path: Path, signature: dict) -> Optional[dict]:
    try:
        with path.open("rb") as file:
            cached = json.load(file)
    except (OSError, ValueError):
        return None
    if not isinstance(cached, dict) or cached.get("version") != CACHE_VERSION or cached.get("sources") != signature:
        return None
    return cached


def _write_cache(path: Path, cached: dict) -> None:
    # Written beside its final name and renamed, so a concurrent reader never sees half a file.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(cached, separators=(",", ":")))
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        warnings.warn(f"could not write the index cache {path} ({err}); the source files will be parsed again next time")
