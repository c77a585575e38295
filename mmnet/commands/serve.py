"""``mmnet serve``: the web page around a Predictor."""

from __future__ import annotations

from mmnet.commands._options import add_checkpoint, add_device


def add_parser(commands) -> None:
    parser = commands.add_parser("serve", help="a web page: upload an image, type an expression, see the masks")
    add_checkpoint(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=7860)
    add_device(parser)
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
    try:
        build_app(predictor).launch(server_name=args.host, server_port=args.port, share=False)
    except OSError as err:  # the port is taken, or the address is not this machine's
        raise MMNetError(f"cannot serve on {args.host}:{args.port} ({err}); pick another --port or --host") from err
    return 0
