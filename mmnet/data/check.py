"""What `mmnet data check` finds in a dataset in the `refer` layout: expressions cut short, and images missing or unreadable."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from mmnet.data.errors import DataError
from mmnet.data.images import load_image
from mmnet.data.refer import ReferIndex
from mmnet.data.tokenizer import word_tokens


def cut_expressions(index: ReferIndex, context_length: int) -> tuple[int, int, int]:
    """How many expressions do not fit in ``context_length`` tokens with [SOS] and [EOS], of how
    many, and the tokens the longest takes."""
    lengths = [word_tokens(s.text) + 2 for split in index.splits for s in index.sentences(split)]
    return sum(length > context_length for length in lengths), len(lengths), max(lengths, default=0)


def image_problems(index: ReferIndex, *, workers: int, progress: bool = True) -> list[str]:
    """Decodes every image the refs use; returns one message per missing, unreadable or mis-sized image."""
    image_ids = sorted({ref.image_id for split in index.splits for ref in index.refs(split)})

    def problem(image_id: int) -> str | None:
        record = index.image(image_id)
        try:
            load_image(index.image_path(image_id), size=(record.width, record.height))
        except DataError as err:
            return str(err)
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = tqdm(pool.map(problem, image_ids), total=len(image_ids), desc="reading images", unit="image", disable=not progress)
        return [message for message in found if message is not None]
