"""``mmnet serve``: the web page around a Predictor."""

from __future__ import annotations

import argparse

from mmnet.commands._options import add_checkpoint, add_device


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def add_parser(commands) -> None:
    parser = commands.add_parser("serve", help="a web page: upload an image, type an expression, see the masks")
    add_checkpoint(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=7860)
    add_device(parser)
    limits = parser.add_argument_group("limits", "what one visitor can ask of the server")
    limits.add_argument("--max-text-length", type=positive, default=500, help="longest expression, in characters; longer ones are refused (default %(default)s)")
    limits.add_argument(
        "--max-pixels", type=positive, default=2048 * 2048,
        help="larger images are downscaled to this many pixels before inference (default %(default)s = 2048 x 2048)",
    )
    limits.add_argument("--queue-size", type=positive, default=16, help="requests that may wait; more are turned away (default %(default)s)")
    limits.add_argument("--concurrency", type=positive, default=1, help="requests computed at once (default %(default)s)")
    limits.add_argument(
        "--cache-age", type=positive, default=3600, metavar="SECONDS",
        help="uploads and results older than this are deleted from Gradio's cache, checked as often (default %(default)s)",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    from mmnet.errors import MMNetError
    from mmnet.predictor import Predictor
    from mmnet.serve import build_app

    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise MMNetError("mmnet serve needs Gradio: pip install 'mmnet[serve]'") from err
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device)
    app = build_app(
        predictor,
        max_text_length=args.max_text_length,
        max_pixels=args.max_pixels,
        queue_size=args.queue_size,
        concurrency=args.concurrency,
        cache_age=args.cache_age,
    )
    try:
        app.launch(server_name=args.host, server_port=args.port, share=False)
    except OSError as err:  # the port is taken, or the address is not this machine's
        raise MMNetError(f"cannot serve on {args.host}:{args.port} ({err}); pick another --port or --host") from err
    return 0
