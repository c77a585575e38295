"""Checkpoints that cannot be written (a full disk, a folder that cannot be written) and files
damaged after writing: each one clear CheckpointError, with nothing half written left behind."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mmnet import checkpoint as checkpoint_module
from mmnet.checkpoint import CheckpointError, load_state, save_checkpoint
from mmnet.cli import main
from mmnet.config import Config, save_config


def save_linear(directory: Path, *, size: int = 256, state: dict | None = None) -> Path:
    """A checkpoint of one ``size`` x ``size`` linear layer: 4 * size**2 bytes of weights."""
    torch.manual_seed(size)
    return save_checkpoint(directory, model=nn.Linear(size, size), config=Config(), state=state)


def contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if ".tmp-" in path.name)


def overwrite_with_nan(path: Path, names: list[str]) -> None:
    """Overwrites the bytes of the named float32 tensors of a safetensors file with NaN, in
    place, as a damaged disk or copy leaves it: the file keeps its size and its header."""
    with path.open("r+b") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))  # then a JSON header, then the tensors' bytes
        header = json.loads(file.read(header_size))
        for name in names:
            assert header[name]["dtype"] == "F32"
            begin, end = header[name]["data_offsets"]
            file.seek(8 + header_size + begin)
            file.write(struct.pack("<f", float("nan")) * ((end - begin) // 4))


def float_tensor_names(path: Path) -> list[str]:
    with path.open("rb") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_size))
    return sorted(name for name, entry in header.items() if name != "__metadata__" and entry["dtype"] == "F32")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB filesystem (a tmpfs), where this process may mount one."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a small filesystem is a tmpfs mount, which needs root on Linux")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)  # --lazy: a file a failed test left open keeps it busy


@pytest.mark.parametrize("overflowing", ["weights", "training state"])
def test_a_write_that_fills_the_disk_names_the_cause_and_leaves_the_previous_checkpoint_alone(small_disk, monkeypatch, overflowing):
    previous = contents(save_linear(small_disk / "last"))
    free = shutil.disk_usage(small_disk).free
    # Another writer takes the space after the check, so the check lets the write start.
    usage = shutil.disk_usage(small_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2**40))
    size, state = (1024, None) if overflowing == "weights" else (256, {"moments": torch.ones(2**20)})
    with pytest.raises(CheckpointError) as raised:
        save_linear(small_disk / "last", size=size, state=state)
    assert str(raised.value) == f"{small_disk / 'last'}: the checkpoint could not be written: no space left on device"
    assert leftovers(small_disk) == []
    assert contents(small_disk / "last") == previous
    monkeypatch.undo()
    assert shutil.disk_usage(small_disk).free == free


def test_a_failed_write_is_one_error_naming_the_folder_and_the_cause_and_leaves_nothing(tmp_path, monkeypatch):
    previous = contents(save_linear(tmp_path / "last"))

    def disk_full_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full_halfway)
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(tmp_path / 'last'))}: the checkpoint could not be written: no space left on device$") as raised:
        save_linear(tmp_path / "last", state={"step": torch.tensor(1)})
    assert isinstance(raised.value.__cause__, OSError)
    assert leftovers(tmp_path) == []
    assert contents(tmp_path / "last") == previous


def test_a_folder_that_cannot_be_written_is_one_error_naming_it(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes regardless of the mode: refuse as the kernel would for anyone else
        make_folder = Path.mkdir

        def refused(path, *args, **kwargs):
            if path.parent == folder:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return make_folder(path, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", refused)
    try:
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(folder / 'last'))}: the checkpoint could not be written: permission denied$"):
            save_linear(folder / "last")
    finally:
        folder.chmod(0o755)
    assert list(folder.iterdir()) == []


def test_a_save_the_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2**19))  # 0.5 MiB
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(tmp_path / 'best'))}: not enough free space for the checkpoint: it needs about 4.0 MiB, {re.escape(str(tmp_path))} has 0.5 MiB free$"):
        save_linear(tmp_path / "best", size=1024)
    assert list(tmp_path.iterdir()) == []

    # Against the checkpoint being replaced: its size, when larger than the new tensors'.
    monkeypatch.undo()
    previous = contents(save_linear(tmp_path / "best", size=1024))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2**20))
    with pytest.raises(CheckpointError, match=r"it needs about 4.0 MiB, .* has 1.0 MiB free$"):
        save_linear(tmp_path / "best", size=256)
    assert contents(tmp_path / "best") == previous and leftovers(tmp_path) == []


def test_every_checkpoint_file_gets_the_mode_the_umask_gives(tmp_path):
    umask = os.umask(0o027)
    try:
        directory = save_linear(tmp_path / "last", state={"step": torch.tensor(3)})
    finally:
        os.umask(umask)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in directory.iterdir()}
    assert modes == {"model.safetensors": "0o640", "config.json": "0o640", "state.pt": "0o640"}


def test_non_finite_optimizer_moments_are_refused_on_resume(tmp_path):
    model = nn.Linear(4, 4)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    moments = optimizer.state_dict()
    moments["state"][0]["exp_avg_sq"][0, 0] = float("inf")
    directory = save_checkpoint(tmp_path / "last", model=model, config=Config(), state={"optimizer": moments})
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(directory / 'state.pt'))}: NaN or infinite values in 1 tensor of the training state \(e.g. optimizer.state.0.exp_avg_sq\)"):
        load_state(directory)


def test_train_command_reports_a_checkpoint_it_cannot_write_as_one_line(synth_root, tmp_path, monkeypatch, capsys):
    from test_training import tiny_run_config

    config = tiny_run_config(synth_root, tmp_path / "run", epochs=1)
    save_config(config, tmp_path / "run.yaml")

    def disk_full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full)
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err  # after the progress bars
    assert error.endswith(f"\nmmnet: error: {tmp_path / 'run' / 'best'}: the checkpoint could not be written: no space left on device\n")
    assert "Traceback" not in error
    assert leftovers(tmp_path / "run") == []


@pytest.mark.parametrize(
    "message",
    ['Error while serializing: IoError("No space left on device (os error 28)")', "IoError(Os { code: 28, kind: StorageFull })"],
)
def test_the_cause_is_read_from_either_wording_safetensors_uses(message):
    from mmnet.checkpoint import _cause

    assert _cause(RuntimeError(message)) == os.strerror(errno.ENOSPC).lower()


def test_eval_command_refuses_damaged_weights_before_reading_any_data(tmp_path, capsys):
    from mmnet.checkpoint import save_pretrained
    from mmnet.cli import main
    from mmnet.config import Config
    from tiny import build_tiny, tiny_model_config

    save_pretrained(build_tiny(seed=5), Config(model=tiny_model_config()), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    damaged = float_tensor_names(path)[:1]
    overwrite_with_nan(path, damaged)
    # data.root points nowhere: the weights are refused first, so the data are never looked for
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--split", "val", "--device", "cpu", f"data.root={tmp_path / 'none'}"]) == 2
    assert f"{path}: NaN or infinite values in 1 tensor (e.g. {damaged[0]})" in capsys.readouterr().err
