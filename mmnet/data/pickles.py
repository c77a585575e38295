"""Reading the `refer` refs pickles without running anything they might contain.

The refs files are Python 2 pickles of plain data (lists, dicts, strings, numbers). Plain data
needs no imports when unpickled, so every request to import a name is refused: a pickle that
would build an object (or call a function) stops with an error before anything runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from mmnet.data.errors import DataError, read_bytes


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        # Python 2 byte strings hold UTF-8 text in these files; an undecodable byte becomes U+FFFD.
        super().__init__(file, encoding="utf-8", errors="replace")
        self._path = path

    def find_class(self, module: str, name: str):
        raise DataError(
            f"{self._path}: refused: the pickle asks for {module}.{name}; "
            "only plain data (lists, dicts, strings, numbers) is accepted"
        )

    def persistent_load(self, pid):
        raise DataError(f"{self._path}: refused: the pickle refers to an outside object ({pid!r})")


def load_plain_pickle(path: str | Path) -> Any:
    """Loads a pickle that may hold plain data only; anything else raises DataError naming the file."""
    path = Path(path)
    data = read_bytes(path, what="file")
    # Unpickled from memory, where a read stops at the end of the data; a corrupt length too large
    # to allocate is a MemoryError, reported like any other fault.
    try:
        return _PlainDataUnpickler(io.BytesIO(data), path).load()
    except DataError:
        raise
    except Exception as err:  # on corrupt data the unpickler fails with almost any built-in error type
        raise DataError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None
