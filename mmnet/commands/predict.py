"""``mmnet predict``: masks and overlays for expressions about an image of one's own."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmnet.commands._options import add_checkpoint, add_device


def add_parser(commands) -> None:
    parser = commands.add_parser("predict", help="segment what expressions refer to in an image of your own")
    add_checkpoint(parser)
    parser.add_argument("--image", required=True, help="the image (JPEG, PNG, ...)")
    parser.add_argument("--text", action="append", required=True, help="an expression; repeat for several about the same image")
    parser.add_argument("--out", default="predictions", help="folder for a mask PNG and an overlay per expression (default predictions/)")
    parser.add_argument("--threshold", type=float, help="probability above which a pixel is the object (default: the checkpoint's eval.threshold)")
    parser.add_argument(
        "--no-target-threshold", type=float,
        help="with a no-target head: probability of 'nothing matches' above which the mask is left empty "
        "(default: the checkpoint's eval.no_target_threshold)",
    )
    add_device(parser)
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="torch.compile the model first; the first prediction waits for the compiler (default: the checkpoint's eval.compile)",
    )
    parser.set_defaults(run=run)


def slug(text: str, limit: int = 40) -> str:
    """A file-name piece from an expression: 'The man, left!' -> 'the-man-left'."""
    words = "".join(c if c.isalnum() else "-" for c in text.lower()).split("-")
    return "-".join(w for w in words if w)[:limit].strip("-") or "expression"


def write_prediction(image, prediction, out: Path, index: int) -> tuple[Path, Path]:
    """Writes ``<index>_<words>_mask.png`` (white on black) and ``<index>_<words>_overlay.png`` into ``out``."""
    import numpy as np
    from PIL import Image

    from mmnet.visualize import overlay

    stem = f"{index:02d}_{slug(prediction.text)}"
    mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
    Image.fromarray(prediction.mask.astype(np.uint8) * 255).save(mask_path)
    shown = np.zeros_like(prediction.probability) if prediction.no_target else prediction.probability  # nothing matches: all dimmed
    overlay(image, shown, threshold=prediction.threshold).save(overlay_path)
    return mask_path, overlay_path


def run(args) -> int:
    import numpy as np

    from mmnet.data.errors import DataError
    from mmnet.data.tokenizer import word_tokens
    from mmnet.predictor import Predictor, as_image

    predictor = Predictor.from_pretrained(
        args.checkpoint, device=args.device, threshold=args.threshold, compile=args.compile, no_target_threshold=args.no_target_threshold
    )
    image = as_image(args.image)
    predictions = predictor.predict(image, list(args.text))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{out}: cannot be made a folder for the predictions ({err.strerror or err})") from err
    for index, prediction in enumerate(predictions, start=1):
        mask_path, overlay_path = write_prediction(image, prediction, out, index)
        best = int(np.argmax(prediction.query_scores))
        found = f"{100 * prediction.mask.mean():.1f}% of the image"
        if prediction.no_target:
            found = f"nothing matches (no-target probability {prediction.no_target_probability:.2f})"
        elif prediction.no_target_probability is not None:
            found += f" (no-target probability {prediction.no_target_probability:.2f})"
        print(
            f'"{prediction.text}": {found}; '
            f"best query {best + 1} of {len(prediction.query_scores)} (score {prediction.query_scores[best]:.2f}); "
            f"{mask_path}, {overlay_path.name}"
        )
        if prediction.truncated:
            print(
                f"  cut at the context length: the expression has {word_tokens(prediction.text) + 2} tokens with [SOS] and [EOS], "
                f"the model read the first {len(prediction.tokens)}"
            )
    return 0
