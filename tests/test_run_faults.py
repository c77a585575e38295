"""Training runs that meet a fault: a data error inside a loader worker, two runs into one folder,
a `last` checkpoint that was never saved, and a log left by a killed run."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmnet import train as train_module
from mmnet.checkpoint import CheckpointError
from mmnet.config import save_config
from mmnet.errors import MMNetError
from mmnet.runlock import LOCK_FILE, run_lock
from mmnet.train import checkpoint_to_resume, train
from test_training import tiny_run_config

REPO = Path(__file__).resolve().parent.parent


def _start_training(config_path: Path, *args: str) -> subprocess.Popen:
    """``mmnet train`` in a session of its own, so that the test can end it and its workers together."""
    return subprocess.Popen(
        [sys.executable, "-m", "mmnet.cli", "train", "--config", str(config_path), "--device", "cpu", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}, start_new_session=True,
    )


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _image_of_split(root: Path, split: str) -> Path:
    refs = pickle.loads((root / "synthref" / "refs(unc).p").read_bytes())
    image_id = min(ref["image_id"] for ref in refs if ref["split"] == split)
    return root / "images" / "train2014" / f"synthref_{image_id:012d}.jpg"


@pytest.mark.parametrize(
    "split, fault, workers",
    [("train", "deleted", 0), ("train", "deleted", 1), ("train", "deleted", 4), ("val", "corrupted", 1)],
)
def test_a_data_error_in_a_worker_ends_training_promptly(synth_root, tmp_path, split, fault, workers):
    # Workers ignore SIGTERM (a clean stop needs them); the run must still end them on an error,
    # in training's loader and in validation's.
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    image = _image_of_split(root, split)
    if fault == "deleted":
        image.unlink()
        reason = "image not found"
    else:
        image.write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
        reason = "cannot be read as an image"
    config = tiny_run_config(root, tmp_path / "run", epochs=1)
    config.data.num_workers = workers
    save_config(config, tmp_path / "run.yaml")
    limit = 120  # a hang costs CI this much, and no more
    started = time.monotonic()
    process = _start_training(tmp_path / "run.yaml")
    try:
        output = process.communicate(timeout=limit)[0]
    except subprocess.TimeoutExpired:
        _end(process)
        pytest.fail(f"mmnet train with {workers} workers was still running {limit} s after a data error:\n{process.communicate()[0][-3000:]}")
    finally:
        _end(process)
    took = time.monotonic() - started
    assert process.returncode == 2, output[-3000:]
    assert re.search(rf"^mmnet: error: {re.escape(str(image))}: {reason}", output, re.MULTILINE), output[-3000:]
    assert "Traceback" not in output
    assert took < 60  # 9-20 s measured on a busy 2-core machine


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_second_run_into_a_folder_in_training_is_refused_naming_the_holder(synth_root, tmp_path):
    # Micro-batches of 1 make about a dozen steps an epoch, and many epochs: the first run is
    # still training when the second starts, and until the signal below stops it.
    config = tiny_run_config(synth_root, tmp_path / "run", epochs=50, batch_size=2, micro_batch_size=1)
    save_config(config, tmp_path / "run.yaml")
    first = _start_training(tmp_path / "run.yaml")
    log = tmp_path / "run" / "log.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[0][-3000:]
        holder = rf"in use by another training run: process {first.pid} on {re.escape(socket.gethostname())} \(since .*\) holds {re.escape(str(tmp_path / 'run' / LOCK_FILE))}"
        with pytest.raises(MMNetError, match=holder):
            train(config, device="cpu")
        with pytest.raises(MMNetError, match=holder):
            train(config, device="cpu", resume="auto")
        assert first.poll() is None
        os.killpg(first.pid, signal.SIGINT)
        output = first.communicate(timeout=240)[0]
    finally:
        _end(first)
    assert first.returncode == 130, output[-3000:]
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    # Only the first run wrote: each step once.
    steps = [line["step"] for line in _lines(log) if "loss" in line]
    assert steps == sorted(set(steps))


def test_a_lock_left_by_a_dead_process_is_taken_over(synth_root, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run").mkdir()
    host = socket.gethostname()
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": host, "since": "2024-01-01 00:00:00"}) + "\n")
    result = train(tiny_run_config(synth_root, tmp_path / "run", epochs=1), device="cpu")
    assert result.state.epoch == 1
    printed = capsys.readouterr().out
    assert f"{LOCK_FILE} was left by process {dead.pid} on {host} (since 2024-01-01 00:00:00), which ended without releasing it; taking it over" in printed
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_resume_auto_takes_the_newest_complete_checkpoint_and_says_which(synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    config = tiny_run_config(synth_root, run, epochs=2)
    train(config, device="cpu", stop_after_epochs=1)
    first_epoch = tmp_path / "first_epoch"
    shutil.copytree(run / "last", first_epoch)

    # The save of last failed after best was saved.
    shutil.rmtree(run / "last")
    capsys.readouterr()
    resumed = train(config, device="cpu", resume="auto")
    printed = capsys.readouterr().out
    assert f"--resume auto takes {run / 'best'}, the newest complete checkpoint\n" in printed
    assert f"resuming from {run / 'best'} at epoch 2" in printed
    assert resumed.state.epoch == 2

    # best ahead of last (the second epoch's save of last failed): best is taken, with nothing left to train.
    shutil.rmtree(run / "best")
    os.replace(run / "last", run / "best")
    shutil.copytree(first_epoch, run / "last")
    assert train(config, device="cpu", resume="auto").state.step == resumed.state.step
    assert f"--resume auto takes {run / 'best'}, the newest complete checkpoint (last/ is older)" in capsys.readouterr().out

    (run / "last" / "state.pt").unlink()
    assert checkpoint_to_resume(run, "auto") == str(run / "best")
    assert "(last/ lacks state.pt)" in capsys.readouterr().out
    (run / "best" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"holds no complete checkpoint to resume \(last/ lacks state.pt; best/ lacks config.json\)"):
        checkpoint_to_resume(run, "auto")


def test_resume_drops_log_lines_written_after_the_checkpoint(synth_root, tmp_path, monkeypatch):
    # As a run killed in its second epoch leaves its log: steps after its last checkpoint, and a
    # line cut short.
    config = tiny_run_config(synth_root, tmp_path / "run", epochs=2)
    first = train(config, device="cpu", stop_after_epochs=1)
    log = tmp_path / "run" / "log.jsonl"
    saved = log.read_text()
    checkpoint_step = first.state.step
    with log.open("a") as file:
        for step in (checkpoint_step + 1, checkpoint_step + 2):
            file.write(json.dumps({"epoch": 2, "step": step, "loss": 9.0, "iou": 0.0, "lr": 0.0, "samples_per_s": 1.0}) + "\n")
        file.write('{"epoch": 2, "st')

    purge_steps = []
    monkeypatch.setattr(train_module, "_tensorboard", lambda output, *, purge_step=None: purge_steps.append(purge_step))
    config.train.tensorboard = True
    train(config, device="cpu", resume="auto")

    text = log.read_text()
    assert text.startswith(saved)
    records = _lines(log)
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)) and 9.0 not in [r["loss"] for r in records if "loss" in r]
    assert [r["epoch"] for r in records if "val" in r] == [1, 2]
    assert purge_steps == [checkpoint_step + 1]


def test_a_killed_run_leaves_no_lock_behind_in_its_data_workers(tmp_path):
    # A forked worker shares the lock's open file: unless it closes its copy, the lock lives on
    # after the main process is killed.
    script = f"""
import os, time
from pathlib import Path
from mmnet import runlock
with runlock.run_lock(Path({str(tmp_path)!r})):
    if os.fork() == 0:
        runlock.release_inherited()  # what a data-loader worker does when it starts
        time.sleep(60)
        os._exit(0)
    print("locked", flush=True)
    time.sleep(60)
"""
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.kill()
        holder.wait(timeout=30)
        with run_lock(tmp_path):  # refused if the worker still held the lock
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)  # the worker, in the holder's process group
