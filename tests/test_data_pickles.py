import collections
import os
import pickle

import pytest

from mmnet.data.errors import DataError
from mmnet.data.pickles import load_plain_pickle

# What Python 2's cPickle.dump(refs, file, 2) writes for [{'sent': 'caf\xc3\xa9 left', 'ref_id': 7}]:
# byte strings (SHORT_BINSTRING) holding UTF-8, as in the real refs files.
PYTHON2_REFS = b"\x80\x02]q\x00}q\x01(U\x04sentq\x02U\x0acaf\xc3\xa9 leftq\x03U\x06ref_idq\x04K\x07ua."


class _MakesDirectory:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_python2_byte_strings_are_read_as_utf8_text(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(PYTHON2_REFS)
    assert load_plain_pickle(path) == [{"sent": "café left", "ref_id": 7}]


def test_protocol2_plain_data_round_trips(tmp_path):
    refs = [{"ref_id": 1, "sentences": [{"sent": "man on the left", "sent_id": 3, "tokens": ["man"]}], "score": 0.5, "box": None}]
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    assert load_plain_pickle(path) == refs


def test_pickle_calling_a_function_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "created_by_pickle"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([_MakesDirectory(str(marker))], protocol=2))
    with pytest.raises(DataError, match="refused") as err:
        load_plain_pickle(path)
    assert str(path) in str(err.value) and "mkdir" in str(err.value)
    assert not marker.exists()


def test_pickle_building_an_object_is_refused(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(collections.OrderedDict(a=1), protocol=2))
    with pytest.raises(DataError, match=r"refused.*collections\.OrderedDict"):
        load_plain_pickle(path)


def test_truncated_pickle_names_the_file(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": i} for i in range(50)], protocol=2)[:100])
    with pytest.raises(DataError, match="not a readable pickle") as err:
        load_plain_pickle(path)
    assert str(path) in str(err.value)


def test_missing_pickle_names_the_file(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        load_plain_pickle(tmp_path / "refs(umd).p")
    assert "refs(umd).p" in str(err.value)


@pytest.mark.parametrize(
    "data, error",
    [
        (b"\x80\x04\x95" + b"\xff" * 9, "OverflowError"),  # a frame of 2**64 - 1 bytes
        (b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"x.", "MemoryError"),  # bytes of 1 TiB
        (b"\x80\x02X" + (2**31).to_bytes(4, "little") + b"x.", "UnpicklingError"),  # a 2 GiB string in a 14-byte file
    ],
)
def test_corrupt_length_is_a_clear_error_not_an_allocation(tmp_path, data, error):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(data)
    with pytest.raises(DataError, match=f"not a readable pickle \\({error}") as err:
        load_plain_pickle(path)
    assert str(path) in str(err.value)


def test_pickle_that_cannot_be_opened_names_the_file(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.mkdir()
    with pytest.raises(DataError, match=r"cannot be read \(IsADirectoryError") as err:
        load_plain_pickle(path)
    assert str(path) in str(err.value)
