"""A trained MMNet as an ONNX graph with a free batch size (``mmnet export``).

The graph takes ``images`` (B x 3 x S x S float32, letterboxed and CLIP-normalised as
``mmnet.data.transforms.Letterbox`` makes them) and ``tokens`` (B x L int64, as
``mmnet.data.tokenizer.tokenize`` makes them), and returns ``logits``, ``query_masks``,
``query_scores`` and ``word_attention``, the outputs of ``MMNet.forward``, and for a model with
the no-target head also ``no_target`` (B logits; sigmoid > eval.no_target_threshold: nothing
matches). The graph is fp32 whatever ``eval.precision`` says.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from mmnet.data.tokenizer import shortest_tokens
from mmnet.errors import MMNetError
from mmnet.modeling import MMNet, MMNetOutput

INPUTS = ("images", "tokens")
OUTPUTS = MMNetOutput._fields  # ONNX names the outputs of the NamedTuple in its order


def output_names(model: MMNet) -> list[str]:
    """The graph's outputs for ``model``: a model without the no-target head has no ``no_target``."""
    return [name for name in OUTPUTS if name != "no_target" or model.no_target_head is not None]
OPSET = 18


class ExportError(MMNetError):
    """The model could not be written as ONNX."""


def export_onnx(model: MMNet, out: str | Path, *, batch_size: int = 2) -> Path:
    """Writes ``model`` (fp32, eval mode) to ``out`` as ONNX, the batch dimension left free.

    Args:
        model: the MMNet to export; it is not changed.
        out: the .onnx file to write.
        batch_size: the batch of the example inputs traced (any batch runs afterwards).
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it; say so before tracing)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(f"ONNX export needs the onnx and onnxscript packages: pip install 'mmnet[export]' ({err})") from None
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"{out.parent}: cannot be made a folder for the export ({err.strerror or err})") from None
    model = copy.deepcopy(model).float().cpu().eval()  # the caller's model keeps its device, dtype and mode
    images = torch.zeros(batch_size, 3, model.image_size, model.image_size)
    tokens = shortest_tokens(batch_size, model.context_length)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (images, tokens),
                str(out),
                input_names=list(INPUTS),
                output_names=output_names(model),
                dynamic_shapes=({0: batch}, {0: batch}),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except (RuntimeError, OSError) as err:  # the exporter's own errors (torch.onnx.OnnxExporterError) are RuntimeErrors
            first_line = str(err).splitlines()[0] if str(err) else ""
            raise ExportError(f"exporting to {out} failed: {type(err).__name__}: {first_line}") from err
    return out
