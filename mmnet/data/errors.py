"""The error raised for anything wrong with a dataset, an image or an expression."""

from pathlib import Path

from mmnet.errors import MMNetError


class DataError(MMNetError):
    """A data file, image or expression that cannot be used; the message names the file and the fault."""


def read_bytes(path: Path, *, what: str) -> bytes:
    """The whole file; DataError naming it (as ``what``) when it is missing or cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as err:
        raise DataError(f"{path}: {what} cannot be read ({type(err).__name__}: {err.strerror or err})") from None
