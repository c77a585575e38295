"""MMNet (Figure 3): wires the parts together and sums the scored masks (Eq. 16)."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from mmnet.errors import MMNetError
from mmnet.modeling.decoder import VisionLanguageDecoder
from mmnet.modeling.fusion_neck import FusionNeck
from mmnet.modeling.image_encoder import ImageEncoder, VisualFeatures
from mmnet.modeling.mask_decoder import MultiMaskProjector, MultiQueryEstimator, NoTargetHead
from mmnet.modeling.query_generator import MultiQueryGenerator
from mmnet.modeling.text_encoder import TextEncoder


# The parts a reader of Figure 3 names, by the attribute that holds each.
PARTS = {
    "backbone": ("image_encoder", "text_encoder"),
    "neck": ("fusion_neck",),
    "query generator": ("query_generator",),
    "decoder": ("decoder",),
    "heads": ("projector", "estimator", "no_target_head"),
}


class MMNetOutput(NamedTuple):
    """What MMNet says about B expressions, on the letterboxed canvas at 1/4 of the input side
    (4H3 x 4W3); ``mmnet.postprocess`` carries it to the original image size."""

    logits: torch.Tensor
    """B x 1 x 4H3 x 4W3, the logit of the final mask y (Eq. 16): sigmoid(logits) = y."""
    query_masks: torch.Tensor
    """B x N_q x 4H3 x 4W3 logits of each query's mask (B x 1 x ... without MMP)."""
    query_scores: torch.Tensor
    """B x N_q, S_q (Eq. 15), summing to 1."""
    word_attention: torch.Tensor
    """B x N_q x L, A (Eq. 9), 0 on padding and summing to 1 over words."""
    no_target: Optional[torch.Tensor] = None
    """B, the logit that the expression refers to nothing in the image (``model.no_target``, an
    extension for generalized referring segmentation); None for a model without that head."""

    def take(self, rows: slice | torch.Tensor) -> "MMNetOutput":
        """The outputs of the expressions ``rows`` (a slice or indices), the head's absence kept."""
        return MMNetOutput(*(None if value is None else value[rows] for value in self))


def mixture_logit(query_masks: torch.Tensor, log_scores: torch.Tensor) -> torch.Tensor:
    """The logit of y = sum_n S_n sigmoid(mask_n) (Eq. 16), exact for any finite mask logits.

    1 - y = sum_n S_n sigmoid(-mask_n), so log y and log(1 - y) are both log-sum-exps of
    log S_n + log sigmoid(+-mask_n), and their difference is a logit whose sigmoid is y: the binary
    cross-entropy on it is the one on y, without y ever rounding to 0 or 1.

    Args:
        query_masks: B x N_q x h x w mask logits.
        log_scores: B x N_q, log S_q.
    Returns:
        B x 1 x h x w, float32.
    """
    # In fp32 whatever the masks' precision: bf16 would round y's logit near 0 and 1.
    query_masks, log_weight = query_masks.float(), log_scores[:, :, None, None].float()
    log_y = torch.logsumexp(log_weight + _log_sigmoid(query_masks), dim=1, keepdim=True)
    log_not_y = torch.logsumexp(log_weight + _log_sigmoid(-query_masks), dim=1, keepdim=True)
    return log_y - log_not_y


def _log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)): finite for any finite x, also once exported
    to ONNX, where ``F.logsigmoid`` becomes log(sigmoid(x)) and gives -inf below about -88."""
    return x.clamp(max=0) - torch.log1p(torch.exp(-x.abs()))


class MMNet(nn.Module):
    """Multi-Mask Network: an image and an expression in, the referred object's mask logits out."""

    def __init__(
        self,
        *,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        fusion_neck: FusionNeck,
        query_generator: MultiQueryGenerator,
        decoder: VisionLanguageDecoder,
        projector: MultiMaskProjector,
        estimator: Optional[MultiQueryEstimator],
        image_size: int,
        context_length: int,
        num_queries: int,
        multi_mask: bool,
        mask_sum: str,
        no_target_head: Optional[NoTargetHead] = None,
    ) -> None:
        """
        Args:
            image_encoder: CLIP image tower with its projections (Sec. 3.1).
            text_encoder: CLIP text transformer (Sec. 3.1).
            fusion_neck: Eq. 2-5.
            query_generator: Eq. 6-10.
            decoder: Eq. 11-13.
            projector: Eq. 14.
            estimator: Eq. 15; None weights the queries equally ("w/o MQE"), and is the only
                choice for a single query.
            image_size: side of the square input the model was built for.
            context_length: L, tokens per expression.
            num_queries: N_q.
            multi_mask: one mask per query (Eq. 14, 16); off, the scores weight the queries into a
                single query that makes a single mask ("w/o MMP").
            mask_sum: Eq. 16 over ``probability`` (sum_n S_n sigmoid(mask_n)) or ``logit``
                (sum_n S_n mask_n).
            no_target_head: says whether the expression refers to nothing (generalized referring
                segmentation, beyond the paper); None for the paper's single-target model.
        """
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.fusion_neck = fusion_neck
        self.query_generator = query_generator
        self.decoder = decoder
        self.projector = projector
        self.estimator = estimator
        self.image_size = image_size
        self.context_length = context_length
        self.num_queries = num_queries
        self.multi_mask = multi_mask
        self.mask_sum = mask_sum
        self.no_target_head = no_target_head

    def encode_image(self, images: torch.Tensor) -> VisualFeatures:
        """
        Args:
            images: B x 3 x S x S, CLIP-normalised, S = ``image_size``.
        Returns:
            the projected visual features, which ``decode`` can reuse for many expressions.
        """
        if not torch.is_floating_point(images):
            raise MMNetError(f"images must be CLIP-normalised floats, got {images.dtype}; letterbox them with mmnet.data.transforms")
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.image_size, self.image_size):
            raise MMNetError(
                f"images must be B x 3 x {self.image_size} x {self.image_size} (model.image_size={self.image_size}), "
                f"got {tuple(images.shape)}; letterbox them with mmnet.data.transforms first"
            )
        return self.image_encoder(images)

    def decode(self, visual: VisualFeatures, tokens: torch.Tensor) -> MMNetOutput:
        """
        Args:
            visual: from ``encode_image``, for B images, or for one image shared by all expressions.
            tokens: B x L token ids of the expressions.
        """
        if tokens.dtype not in (torch.int64, torch.int32):
            raise MMNetError(f"tokens must be integer ids (int64), got {tokens.dtype}; tokenize with mmnet.data.tokenizer.tokenize")
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
            raise MMNetError(
                f"tokens must be B x {self.context_length} (model.context_length={self.context_length}), "
                f"got {tuple(tokens.shape)}; tokenize with mmnet.data.tokenizer.tokenize(texts, {self.context_length})"
            )
        batch = tokens.shape[0]
        if visual.f_v3.shape[0] == 1 and batch > 1:
            visual = VisualFeatures(*(f.expand(batch, *f.shape[1:]) if f is not None else None for f in visual))
        elif visual.f_v3.shape[0] != batch:
            raise MMNetError(f"{visual.f_v3.shape[0]} images but {batch} expressions")

        text = self.text_encoder(tokens)
        f_ot = self.fusion_neck(visual.f_v2, visual.f_v3, visual.f_v4, text.sentence)  # F_tg
        height, width = f_ot.shape[-2:]
        f_q, word_attention = self.query_generator(visual, text.words, text.padding)  # F_t
        f_s = self.decoder(f_ot.flatten(2).transpose(1, 2), f_q, (height, width))  # flatten of Eq. 5
        if self.estimator is not None:
            log_scores = self.estimator(f_q)
        else:
            log_scores = f_q.new_full((batch, self.num_queries), -math.log(self.num_queries))
        scores = log_scores.exp()
        if not self.multi_mask:
            query_masks = self.projector(f_s, (scores[:, :, None] * f_q).sum(dim=1, keepdim=True))
            logits = query_masks
        else:
            query_masks = self.projector(f_s, f_q)
            if self.mask_sum == "probability":
                logits = mixture_logit(query_masks, log_scores)  # Eq. 16
            else:
                logits = (scores[:, :, None, None] * query_masks).sum(dim=1, keepdim=True)  # Eq. 16 over logits
        no_target = None
        if self.no_target_head is not None:
            no_target = self.no_target_head(f_s, f_q, scores, logits)
        return MMNetOutput(
            logits=logits, query_masks=query_masks, query_scores=scores, word_attention=word_attention, no_target=no_target
        )

    def compile(self, *args, **kwargs) -> None:
        """Compiles each part in place with ``torch.compile(*args, **kwargs)``.

        Unlike ``nn.Module.compile``, which compiles only ``forward``, this also speeds up
        ``encode_image`` and ``decode`` when they are called apart (as the predictor does to reuse
        one image's features for many expressions). Outputs stay equal to the eager model's
        within floating-point tolerance; the first call at each new input shape pays for the
        compilation.
        """
        for names in PARTS.values():
            for name in names:
                part = getattr(self, name)
                if part is not None:
                    part.compile(*args, **kwargs)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> MMNetOutput:
        """
        Args:
            images: B x 3 x S x S, CLIP-normalised.
            tokens: B x L.
        """
        return self.decode(self.encode_image(images), tokens)
