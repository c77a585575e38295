"""The network of the paper, one module per box of Figure 3."""

from mmnet.modeling.image_encoder import VisualFeatures
from mmnet.modeling.loss import mask_loss, mmnet_loss, query_losses, target_for
from mmnet.modeling.mmnet import MMNet, MMNetOutput
from mmnet.modeling.text_encoder import TextFeatures

__all__ = ["MMNet", "MMNetOutput", "TextFeatures", "VisualFeatures", "mask_loss", "mmnet_loss", "query_losses", "target_for"]
