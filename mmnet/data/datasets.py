"""Training and evaluation samples of a referring dataset, read through a ReferIndex."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

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
        """Returns image: float 3 x S x S, tokens: int64 L, mask: float 1 x S x S in {0, 1} (padding 0)."""
        ref = self.refs[i]
        choice = np.random.default_rng([self.seed, self.epoch, i]).integers(len(ref.sentences))
        image, geometry = self._image(ref.image_id)
        return {
            "image": image,
            "tokens": self._tokens(ref.sentences[choice]),
            "mask": self.letterbox.mask(self.index.mask(ref.ref_id), geometry),
        }


class ReferEvalDataset(_ReferSamples):
    """One item per sentence, with the mask at the original image size; batch with `collate_eval`."""

    def __init__(self, index: ReferIndex, *, split: str, image_size: int, context_length: int, text_blind: bool = False):
        super().__init__(index, split=split, image_size=image_size, context_length=context_length, text_blind=text_blind)
        self.sentences = index.sentences(split)

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Returns image: float 3 x S x S, tokens: int64 L, mask: uint8 H x W (original size),
        geometry: the letterbox Geometry, and ref_id, sent_id, image_id, sentence."""
        sentence = self.sentences[i]
        ref = self.index.ref(sentence.ref_id)
        image, geometry = self._image(ref.image_id)
        return {
            "image": image,
            "tokens": self._tokens(sentence),
            "mask": torch.from_numpy(self.index.mask(ref.ref_id)),
            "geometry": geometry,
            "ref_id": ref.ref_id,
            "sent_id": sentence.sent_id,
            "image_id": ref.image_id,
            "sentence": sentence.text,
        }


def collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks images (B x 3 x S x S) and tokens (B x L); keeps masks, geometry and ids as lists of B."""
    collated = {key: [item[key] for item in batch] for key in batch[0]}
    collated["image"] = torch.stack(collated["image"])
    collated["tokens"] = torch.stack(collated["tokens"])
    return collated
