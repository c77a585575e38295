"""The error raised for anything wrong with a dataset, an image or an expression."""

from mmnet.errors import MMNetError


class DataError(MMNetError):
    """A data file, image or expression that cannot be used; the message names the file and the fault."""
