"""``mmnet data synth`` and ``mmnet data check``: build a synthetic dataset, or check one, and count it."""

from __future__ import annotations

import os

from mmnet.commands._options import add_synth_workers


def add_parser(commands) -> None:
    data = commands.add_parser("data", help="build or check a dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    synth = data_commands.add_parser("synth", help="write a synthetic referring dataset in the refer layout")
    synth.add_argument("--out", required=True, help="root folder to write (the data.root of a config)")
    synth.add_argument("--name", default="synthref", help="dataset folder name under --out")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--images", type=int, nargs=4, default=[400, 50, 50, 50], metavar=("TRAIN", "VAL", "TESTA", "TESTB"), help="images per split")
    synth.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"), help="image width and height in pixels")
    synth.add_argument(
        "--generalized",
        action="store_true",
        help="write gRefCOCO's layout, grefs(unc).json, adding refs to two or three shapes and to none "
        "(about 10%% of the expressions each) to the plain set's refs on the same images",
    )
    add_synth_workers(synth)
    synth.set_defaults(run=run_synth)

    check = data_commands.add_parser("check", help="check a dataset in the refer layout and count it")
    check.add_argument("--root", required=True)
    check.add_argument("--dataset", required=True)
    check.add_argument("--split-by", required=True)
    check.add_argument("--image-dir", help="images folder (default <root>/images/train2014)")
    check.add_argument("--workers", type=int, default=0, help="threads decoding images (default: all cores)")
    check.add_argument("--limit", type=int, default=20, help="problems listed per kind")
    check.add_argument("--context-length", type=int, default=17, help="count the expressions cut at this model.context_length")
    check.set_defaults(run=run_check)


def print_counts(index) -> None:
    """Prints refs, sentences and images per split of a ReferIndex, and their totals; for gRefCOCO
    also the refs that refer to nothing (no-target) and those that name several objects (multi-object)."""
    headers = ["refs", "sentences", "images"] + (["no-target", "multi-object"] if index.generalized else [])
    rows = []
    for split in index.splits:
        refs = index.refs(split)
        row = [split, len(refs), sum(len(r.sentences) for r in refs), len({r.image_id for r in refs})]
        if index.generalized:
            row += [sum(r.no_target for r in refs), sum(len(r.ann_ids) > 1 for r in refs)]
        rows.append(row)
    rows.append(["total", *(sum(row[i] for row in rows) for i in range(1, len(headers) + 1))])
    widths = [10, 12, 10, 11, 14]
    print(f"{index.files.dataset} ({index.files.split_by})")
    print(f"{'split':<8}" + "".join(f"{header:>{width}}" for header, width in zip(headers, widths)))
    for split, *counts in rows:
        print(f"{split:<8}" + "".join(f"{count:>{width},}" for count, width in zip(counts, widths)))


def run_synth(args) -> int:
    from mmnet.data.errors import DataError
    from mmnet.data.refer import ReferIndex
    from mmnet.data.synth import write_synthetic

    width, height = args.size
    if min(args.images) < 0 or args.images[0] == 0:
        raise DataError(f"--images needs a positive train count and no negative count, got {args.images}")
    if min(width, height) < 32:
        raise DataError(f"--size must be at least 32 x 32 pixels, got {width} x {height}")
    write_synthetic(
        args.out,
        name=args.name,
        seed=args.seed,
        images=args.images,
        width=width,
        height=height,
        generalized=args.generalized,
        workers=args.workers,
    )
    # Reading the set back checks it and leaves the index cached for the first run.
    print_counts(ReferIndex.load(args.out, args.name, "unc"))
    print(f"use it with: data.root={args.out} data.dataset={args.name} data.split_by=unc")
    return 0


def run_check(args) -> int:
    from mmnet.data.check import cut_expressions, image_problems
    from mmnet.data.errors import DataError
    from mmnet.data.refer import ReferFiles, ReferIndex, parse_refer

    files = ReferFiles(args.root, args.dataset, args.split_by, image_dir=args.image_dir)
    files.require()
    payload, problems = parse_refer(files)
    index = ReferIndex(files, payload)
    print_counts(index)
    cut, total, longest = cut_expressions(index, args.context_length)
    print(f"\n{cut:,} of {total:,} expressions are cut at context length {args.context_length} (the longest takes {longest} tokens with [SOS] and [EOS])")
    missing_images = image_problems(index, workers=args.workers or os.cpu_count() or 1)
    for title, messages in (("refs and annotations", problems), ("images", missing_images)):
        if messages:
            print(f"\n{len(messages)} problem(s) with {title}:")
            for message in messages[: args.limit]:
                print(f"  {message}")
            if len(messages) > args.limit:
                print(f"  ... and {len(messages) - args.limit} more")
    found = len(problems) + len(missing_images)
    if found:
        raise DataError(f"{found} problem(s) in {files.root / files.dataset} ({files.split_by}), listed above")
    print("\nno problems found")
    return 0
