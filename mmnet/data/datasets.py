"""Training and evaluation samples of a referring dataset, read through a ReferIndex."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mmnet.data.images import load_image
from mmnet.data.errors import DataError
from mmnet.data.refer import ReferIndex, Sentence
from mmnet.data.tokenizer import tokenize
from mmnet.data.transforms import Geometry, Letterbox


class _ReferSamples(Dataset):
    def __init__(self, index: ReferIndex, *, split: str, image_size: int, context_length: int, text_blind: bool = False):
        self.index = index
        self.split = split
        self.letterbox = Letterbox(image_size)
        self.context_length = context_length
        self.text_blind = text_blind

    def _tokens(self, sentence: Sentence) -> torch.Tensor:
        """L tokens of the sentence, or of an empty expression for the text-blind control."""
        if self.text_blind:
            return tokenize("", self.context_length, allow_empty=True)[0]
        try:
            return tokenize(sentence.text, self.context_length)[0]
        except DataError as err:
            raise DataError(f"{self.index.files.refs_path}: ref {sentence.ref_id}, sentence {sentence.sent_id}: {err}") from None

    def _image(self, image_id: int) -> tuple[torch.Tensor, Geometry]:
        record = self.index.image(image_id)
        image = load_image(self.index.image_path(image_id), size=(record.width, record.height))
        return self.letterbox(image)


class ReferTrainDataset(_ReferSamples):
    """One item per ref; each time a sentence of it drawn from an RNG seeded by (seed, epoch, index).

    The draw depends on nothing else (not the worker, not the order), so a run resumed at an
    epoch sees the same samples. Call ``set_epoch`` before each epoch's DataLoader iterator is
    made (workers copy the dataset when they start, so persistent workers keep the old epoch).
    """

    def __init__(
        self, index: ReferIndex, *, split: str, image_size: int, context_length: int, seed: int = 0, text_blind: bool = False
    ):
        """
        Args:
            index: the dataset's ReferIndex.
            split: exact split name, e.g. ``train``.
            image_size: S, the side of the letterboxed input (the model's image_size).
            context_length: L, tokens per expression (the model's context_length).
            seed: the run's seed.
            text_blind: replace every expression with an empty one (a control that shows what
                the images alone give away).
        """
        super().__init__(index, split=split, image_size=image_size, context_length=context_length, text_blind=text_blind)
        self.refs = index.refs(split)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Returns image: float 3 x S x S, tokens: int64 L, mask: float 1 x S x S in {0, 1} (padding 0),
        objects: how many objects the expression names (0 for a gRefCOCO ref to nothing)."""
        ref = self.refs[i]
        choice = np.random.default_rng([self.seed, self.epoch, i]).integers(len(ref.sentences))
        image, geometry = self._image(ref.image_id)
        return {
            "image": image,
            "tokens": self._tokens(ref.sentences[choice]),
            "mask": self.letterbox.mask(self.index.mask(ref.ref_id), geometry),
            "objects": len(ref.ann_ids),
        }


class _ReferExpressions(_ReferSamples):
    def __init__(self, index: ReferIndex, *, split: str, image_size: int, context_length: int, text_blind: bool = False):
        super().__init__(index, split=split, image_size=image_size, context_length=context_length, text_blind=text_blind)
        self.sentences = index.sentences(split)

    def _expression(self, sentence: Sentence) -> dict[str, Any]:
        ref = self.index.ref(sentence.ref_id)
        return {
            "tokens": self._tokens(sentence),
            "mask": torch.from_numpy(self.index.mask(ref.ref_id)),
            "objects": len(ref.ann_ids),
            "ref_id": ref.ref_id,
            "sent_id": sentence.sent_id,
            "sentence": sentence.text,
        }


class ReferEvalDataset(_ReferExpressions):
    """One item per sentence, with the mask at the original image size; batch with `collate_eval`."""

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Returns image: float 3 x S x S, tokens: int64 L, mask: uint8 H x W (original size),
        geometry: the letterbox Geometry, and objects (how many objects the expression refers
        to: 0 for none, several in gRefCOCO), ref_id, sent_id, image_id, sentence."""
        expression = self._expression(self.sentences[i])
        image_id = self.index.ref(expression["ref_id"]).image_id
        image, geometry = self._image(image_id)
        return {"image": image, "geometry": geometry, "image_id": image_id, **expression}


class ReferImageEvalDataset(_ReferExpressions):
    """One item per image of the split, with every expression about it, so that evaluation
    encodes each image once; batch with `ExpressionBatches` and `collate_images`."""

    def __init__(self, index: ReferIndex, *, split: str, image_size: int, context_length: int, text_blind: bool = False):
        super().__init__(index, split=split, image_size=image_size, context_length=context_length, text_blind=text_blind)
        groups: dict[int, list[Sentence]] = {}
        for sentence in self.sentences:
            groups.setdefault(index.ref(sentence.ref_id).image_id, []).append(sentence)
        self.groups = list(groups.items())

    def expression_counts(self) -> list[int]:
        """How many expressions each item holds."""
        return [len(sentences) for _, sentences in self.groups]

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Returns image: float 3 x S x S, geometry, image_id, and expressions: a list of dicts
        (tokens: int64 L, mask: uint8 H x W, objects: how many objects the expression refers to,
        ref_id, sent_id, sentence) in the split's order."""
        image_id, sentences = self.groups[i]
        image, geometry = self._image(image_id)
        return {"image": image, "geometry": geometry, "image_id": image_id, "expressions": [self._expression(s) for s in sentences]}


EXPRESSION_KEYS = ("mask", "objects", "ref_id", "sent_id", "sentence")


def collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batches ReferEvalDataset items: B images and B expressions, expression b about image b."""
    return collate_images([{**item, "expressions": [item]} for item in batch])


def collate_images(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batches K images with E expressions about them.

    Returns image: K x 3 x S x S; geometry, image_id: lists of K; tokens: E x L; image_index: E,
    the image each expression is about; mask, objects, ref_id, sent_id, sentence: lists of E.
    """
    expressions = [(k, e) for k, item in enumerate(batch) for e in item["expressions"]]
    collated = {
        "image": torch.stack([item["image"] for item in batch]),
        "geometry": [item["geometry"] for item in batch],
        "image_id": [item["image_id"] for item in batch],
        "tokens": torch.stack([e["tokens"] for _, e in expressions]),
        "image_index": torch.tensor([k for k, _ in expressions], dtype=torch.long),
    }
    collated.update({key: [e[key] for _, e in expressions] for key in EXPRESSION_KEYS})
    return collated


class ExpressionBatches(Sampler[list[int]]):
    """Batches of whole images holding at most ``budget`` expressions between them (an image with
    more makes a batch alone), in the order of ``sampler``."""

    def __init__(self, sampler: Iterable[int], counts: Sequence[int], *, budget: int) -> None:
        self.sampler, self.counts, self.budget = sampler, counts, budget

    def __iter__(self) -> Iterator[list[int]]:
        batch, held = [], 0
        for i in self.sampler:
            if batch and held + self.counts[i] > self.budget:
                yield batch
                batch, held = [], 0
            batch.append(i)
            held += self.counts[i]
        if batch:
            yield batch

    def __len__(self) -> int:
        return sum(1 for _ in self)
