"""MMNet: Multi-Mask Network for Referring Image Segmentation."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use, so that `import mmnet` and the command line stay quick.
    if name in ("Predictor", "Prediction"):
        from mmnet import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'mmnet' has no attribute {name!r}")
