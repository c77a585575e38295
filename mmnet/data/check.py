"""`mmnet data check`: reads a dataset in the `refer` layout, counts it and lists what is wrong with it."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from mmnet.data.errors import DataError
from mmnet.data.images import load_image
from mmnet.data.refer import ReferFiles, ReferIndex, parse_refer
from mmnet.data.tokenizer import word_tokens


def print_counts(index: ReferIndex) -> None:
    """Prints refs, sentences and images per split, and their totals."""
    rows = []
    for split in index.splits:
        refs = index.refs(split)
        rows.append((split, len(refs), sum(len(r.sentences) for r in refs), len({r.image_id for r in refs})))
    rows.append(("total", *(sum(row[i] for row in rows) for i in (1, 2, 3))))
    print(f"{index.files.dataset} ({index.files.split_by})")
    print(f"{'split':<8}{'refs':>10}{'sentences':>12}{'images':>10}")
    for split, refs, sentences, images in rows:
        print(f"{split:<8}{refs:>10,}{sentences:>12,}{images:>10,}")


def print_cut_expressions(index: ReferIndex, context_length: int) -> None:
    """Prints how many expressions do not fit in ``context_length`` tokens with [SOS] and [EOS], and the longest."""
    lengths = [word_tokens(s.text) + 2 for split in index.splits for s in index.sentences(split)]
    cut = sum(length > context_length for length in lengths)
    print(
        f"\n{cut:,} of {len(lengths):,} expressions are cut at context length {context_length} "
        f"(the longest takes {max(lengths, default=0)} tokens with [SOS] and [EOS])"
    )


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


def run_check(args) -> int:
    files = ReferFiles(args.root, args.dataset, args.split_by, image_dir=args.image_dir)
    files.require()
    payload, problems = parse_refer(files)
    index = ReferIndex(files, payload)
    print_counts(index)
    print_cut_expressions(index, args.context_length)
    missing_images = image_problems(index, workers=args.workers or os.cpu_count() or 1)
    for title, messages in (("refs and annotations", problems), ("images", missing_images)):
        if messages:
            print(f"\n{len(messages)} problem(s) with {title}:")
            for message in messages[: args.limit]:
                print(f"  {message}")
            if len(messages) > args.limit:
                print(f"  ... and {len(messages) - args.limit} more")
    total = len(problems) + len(missing_images)
    if total:
        raise DataError(f"{total} problem(s) in {files.root / files.dataset} ({files.split_by}), listed above")
    print("\nno problems found")
    return 0
