"""The network of the paper, one module per box of Figure 3."""

from mmnet.modeling.image_encoder import VisualFeatures
from mmnet.modeling.loss import mask_loss, mmnet_loss, query_losses, target_for
from mmnet.modeling.mmnet import MMNet

__all__ = ["MMNet", "VisualFeatures", "mask_loss", "mmnet_loss", "query_losses", "target_for"]
