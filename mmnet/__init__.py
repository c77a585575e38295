"""MMNet: Multi-Mask Network for Referring Image Segmentation."""

__version__ = "0.1.0"
