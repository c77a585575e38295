"""Referring-segmentation data: the `refer` layout (RefCOCO, RefCOCO+, G-Ref), a synthetic set in the
same layout, the one image loader, the letterbox transform and the CLIP tokenizer."""
