"""Training and evaluation end to end on a small synthetic set: exact resumption, clean stops,
non-finite losses, checkpoints, and two processes under torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmnet import engine
from mmnet import train as train_module
from mmnet.checkpoint import CheckpointError, find_checkpoint, load_state
from mmnet.config import Config, ConfigError, DataConfig, EvalConfig, TrainConfig, save_config
from mmnet.diagnostics import DIAGNOSTIC_NAMES, MEANING
from mmnet.engine import NonFiniteLossError
from mmnet.evaluate import evaluate_checkpoint
from mmnet.train import train
from mmnet.visualize import CAPTION, GAP, TEXT, TILE
from tiny import tiny_model_config

REPO = Path(__file__).resolve().parent.parent


def test_learning_rate_decays_polynomially_and_the_backbone_has_its_own():
    from mmnet.engine import poly_schedule
    from mmnet.train import parameter_groups
    from tiny import build_tiny

    factor = poly_schedule(100, 0.9)
    assert factor(0) == 1.0
    assert factor(50) == pytest.approx(0.5**0.9)  # worked by hand: 0.5359
    assert factor(100) == 0.0 and factor(120) == 0.0
    model = build_tiny()
    backbone, heads = parameter_groups(model, lr=1e-4, backbone_lr_mult=0.1)
    assert backbone["lr"] == pytest.approx(1e-5) and heads["lr"] == pytest.approx(1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith(("image_encoder.tower.", "text_encoder.")) for p in backbone["params"])
    assert any(names[id(p)].startswith("image_encoder.proj_v2") for p in heads["params"])
    assert len(backbone["params"]) + len(heads["params"]) == len(list(model.parameters()))


def test_adam_runs_fused_on_a_cpu_and_makes_the_plain_update():
    from mmnet.train import optimization
    from tiny import build_tiny

    config = Config(model=tiny_model_config(), train=TrainConfig(lr=1e-3, weight_decay=1e-4))
    updated = []
    for run_fused in (True, False):
        model = build_tiny()
        optimizer, _ = optimization(model, config, total_steps=10)
        assert optimizer.param_groups[0]["fused"] is True
        if not run_fused:
            for group in optimizer.param_groups:
                group["fused"] = False
        for step in range(3):
            torch.manual_seed(step)
            for parameter in model.parameters():
                parameter.grad = torch.randn_like(parameter)
            optimizer.step()
        updated.append([p.detach().clone() for p in model.parameters()])
    moved = [not torch.equal(a, b) for a, b in zip(updated[0], build_tiny().parameters())]
    assert any(moved)
    for fused, plain in zip(*updated):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-7)


def tiny_run_config(data_root: Path, output_dir: Path, **train_changes) -> Config:
    train_settings = TrainConfig(
        epochs=2,
        batch_size=4,
        micro_batch_size=2,  # two micro-batches accumulate into each step of one process
        lr=1e-3,
        grad_clip=1.0,
        output_dir=str(output_dir),
        log_every=1,
        tensorboard=False,
        seed=5,
    )
    return Config(
        model=tiny_model_config(dropout=0.1),  # dropout draws random numbers, which resumption must restore
        data=DataConfig(root=str(data_root), dataset="synthref", split_by="unc", num_workers=0),
        train=dataclasses.replace(train_settings, **train_changes),
        eval=EvalConfig(batch_size=3),
    )


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


def test_two_epochs_equal_one_epoch_plus_a_resumed_one(synth_root, tmp_path):
    straight = train(tiny_run_config(synth_root, tmp_path / "straight"), device="cpu")
    assert straight.state.epoch == 2 and not straight.interrupted

    first = train(tiny_run_config(synth_root, tmp_path / "resumed"), device="cpu", stop_after_epochs=1)
    assert first.state.epoch == 1
    second = train(tiny_run_config(synth_root, tmp_path / "resumed"), device="cpu", resume="auto")
    assert second.state.epoch == 2 and second.state.step == straight.state.step

    assert_same_weights(weights(tmp_path / "straight" / "last"), weights(tmp_path / "resumed" / "last"))
    a, b = load_state(tmp_path / "straight" / "last"), load_state(tmp_path / "resumed" / "last")
    for group_a, group_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(group_a["exp_avg_sq"], group_b["exp_avg_sq"])
    assert a["train_state"]["history"] == b["train_state"]["history"]


def test_a_run_saved_with_plain_adam_resumes_with_fused_adam(synth_root, tmp_path, monkeypatch):
    train(tiny_run_config(synth_root, tmp_path / "run"), device="cpu", stop_after_epochs=1)
    state_file = tmp_path / "run" / "last" / "state.pt"
    saved = torch.load(state_file, weights_only=True)
    for group in saved["optimizer"]["param_groups"]:
        group["fused"] = None  # as a run before fused Adam saved it
    torch.save(saved, state_file)
    made = []
    monkeypatch.setattr(train_module.Trainer, "fit", lambda self, **_: made.append(self.optimizer))
    train(tiny_run_config(synth_root, tmp_path / "run"), device="cpu", resume="auto")
    assert [group["fused"] for group in made[0].param_groups] == [True, True]
    assert all(state["step"].device.type == "cpu" for state in made[0].state.values())


def test_the_data_workers_do_not_change_what_is_trained(synth_root, tmp_path):
    # With or without a loader worker the samples, their order and so the weights must be the same
    # (docs/performance.md compares the two for the demo).
    # Two epochs: the second draws other sentences, which a worker that kept the first epoch's
    # dataset (ReferTrainDataset.set_epoch not reaching it) would get wrong.
    config = tiny_run_config(synth_root, tmp_path / "in_process")
    with_worker = tiny_run_config(synth_root, tmp_path / "worker")
    with_worker.data.num_workers = 1
    a, b = train(config, device="cpu"), train(with_worker, device="cpu")
    assert a.state.history == b.state.history
    assert_same_weights(weights(tmp_path / "in_process" / "last"), weights(tmp_path / "worker" / "last"))


def test_ctrl_c_stops_after_a_step_and_resumes_exactly_mid_epoch(synth_root, tmp_path):
    # Micro-batches of 1 make about a dozen steps an epoch, so the stop falls inside one; a data
    # worker is there too, as Ctrl-C reaches every process of the terminal's group.
    changes = {"epochs": 2, "batch_size": 2, "micro_batch_size": 1}
    config = tiny_run_config(synth_root, tmp_path / "signalled", **changes)
    config.data.num_workers = 1
    save_config(config, tmp_path / "run.yaml")
    process = subprocess.Popen(
        [sys.executable, "-m", "mmnet.cli", "train", "--config", str(tmp_path / "run.yaml"), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=REPO,
        start_new_session=True,
    )
    log = tmp_path / "signalled" / "log.jsonl"
    deadline = time.time() + 120
    try:
        while not (log.exists() and log.read_text().strip()) and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        output = process.communicate(timeout=120)[0].decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    assert "SIGINT received" in output and "resume with --resume" in output
    stopped_at = load_state(find_checkpoint(tmp_path / "signalled" / "last"))["train_state"]
    assert stopped_at["epoch"] == 0 and stopped_at["epoch_step"] >= 1  # inside the first epoch

    train(config, device="cpu", resume="auto")
    straight = dataclasses.replace(config, train=dataclasses.replace(config.train, output_dir=str(tmp_path / "straight")))
    train(straight, device="cpu")
    assert_same_weights(weights(tmp_path / "straight" / "last"), weights(tmp_path / "signalled" / "last"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synth_root, tmp_path, monkeypatch):
    config = tiny_run_config(synth_root, tmp_path / "run")
    train(config, device="cpu", stop_after_epochs=1)
    good = weights(tmp_path / "run" / "last")

    real_loss = engine.mmnet_loss
    calls = {"n": 0}

    def poisoned(outputs, masks, **settings):
        calls["n"] += 1
        parts = real_loss(outputs, masks, **settings)
        return {**parts, "loss": parts["loss"] * float("nan")} if calls["n"] == 3 else parts

    monkeypatch.setattr(engine, "mmnet_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"the loss became nan at epoch 2, step \d+; training stopped without saving"):
        train(config, device="cpu", resume="auto")
    assert_same_weights(good, weights(tmp_path / "run" / "last"))


class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_non_finite_gradient_with_a_finite_loss_stops_too(synth_root, tmp_path, monkeypatch):
    real_loss = engine.mmnet_loss
    calls = {"n": 0}

    def poisoned(outputs, masks, **settings):
        calls["n"] += 1
        if calls["n"] == 2:
            outputs = outputs._replace(logits=_NanGradient.apply(outputs.logits))
        return real_loss(outputs, masks, **settings)

    monkeypatch.setattr(engine, "mmnet_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"the gradient norm became nan at epoch 1, step 1"):
        train(tiny_run_config(synth_root, tmp_path / "run"), device="cpu")
    assert not (tmp_path / "run" / "last").exists()


class _Writer:
    """Stands in for TensorBoard's SummaryWriter."""

    def __init__(self) -> None:
        self.closed = False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_the_log_and_tensorboard_are_closed_when_training_raises(synth_root, tmp_path, monkeypatch):
    logs, writers = [], []
    open_path = Path.open

    def recording_open(path, *args, **kwargs):
        file = open_path(path, *args, **kwargs)
        if path.name == "log.jsonl":
            logs.append(file)
        return file

    def tensorboard(output, *, purge_step=None):
        writers.append(_Writer())
        return writers[-1]

    def poisoned(outputs, masks, **settings):
        return real_loss(outputs._replace(logits=_NanGradient.apply(outputs.logits)), masks, **settings)

    real_loss = engine.mmnet_loss
    monkeypatch.setattr(Path, "open", recording_open)
    monkeypatch.setattr(train_module, "_tensorboard", tensorboard)
    monkeypatch.setattr(engine, "mmnet_loss", poisoned)
    with pytest.raises(NonFiniteLossError):
        train(tiny_run_config(synth_root, tmp_path / "run", tensorboard=True), device="cpu")
    assert len(logs) == 1 and logs[0].closed
    assert len(writers) == 1 and writers[0].closed


def test_checkpoints_are_swapped_in_whole(synth_root, tmp_path):
    result = train(tiny_run_config(synth_root, tmp_path / "run", epochs=1), device="cpu")
    last = tmp_path / "run" / "last"
    assert sorted(p.name for p in last.iterdir()) == ["config.json", "model.safetensors", "state.pt"]
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert not list((tmp_path / "run").glob("*.tmp-*")) and not list((tmp_path / "run").glob("*.old"))
    # A save killed between its two renames leaves the previous checkpoint as last.old, which is found.
    os.replace(last, tmp_path / "run" / "last.old")
    assert find_checkpoint(last) == tmp_path / "run" / "last.old"
    assert result.state.history[0]["count"] > 0
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        find_checkpoint(tmp_path / "nowhere")


def test_a_fresh_run_will_not_overwrite_a_previous_one(synth_root, tmp_path):
    train(tiny_run_config(synth_root, tmp_path / "run", epochs=1), device="cpu")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'run'} already holds a run; continue it with --resume auto"):
        train(tiny_run_config(synth_root, tmp_path / "run", epochs=1), device="cpu")


def test_a_fresh_run_will_not_append_to_the_log_of_a_run_that_saved_nothing(synth_root, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text('{"epoch": 1, "step": 1}\n')
    with pytest.raises(ConfigError, match=r"holds the log of a run that saved no checkpoint"):
        train(tiny_run_config(synth_root, tmp_path / "run", epochs=1), device="cpu")


def test_resume_refuses_other_run_settings(synth_root, tmp_path):
    train(tiny_run_config(synth_root, tmp_path / "run"), device="cpu", stop_after_epochs=1)
    with pytest.raises(CheckpointError, match=r"trained with other settings \(train.epochs, train.lr, train.grad_clip\)"):
        train(tiny_run_config(synth_root, tmp_path / "run", epochs=3, lr=1e-4, grad_clip=0.5), device="cpu", resume="auto")
    other_loss = tiny_run_config(synth_root, tmp_path / "run")
    other_loss.train = dataclasses.replace(other_loss.train, query_loss="all", dice_weight=1.0, target_resize="nearest")
    with pytest.raises(CheckpointError, match=r"other settings \(train.query_loss, train.dice_weight, train.target_resize\)"):
        train(other_loss, device="cpu", resume="auto")
    other_data = tiny_run_config(synth_root, tmp_path / "run")
    other_data.data.train_split = "val"
    with pytest.raises(CheckpointError, match=r"trained with other settings \(data.train_split\)"):
        train(other_data, device="cpu", resume="auto")


def test_resume_refuses_another_number_of_processes_and_a_weights_only_checkpoint(synth_root, tmp_path):
    from mmnet.checkpoint import read_config, save_checkpoint
    from mmnet.train import _check_resumable
    from tiny import build_tiny

    config = tiny_run_config(synth_root, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"was trained by 2 processes; resume it with 2, not 1"):
        _check_resumable(config, config, tmp_path / "run" / "last", saved_world=2, world=1)
    save_checkpoint(tmp_path / "weights", model=build_tiny(dropout=0.1), config=config)
    assert read_config(tmp_path / "weights") == config
    with pytest.raises(CheckpointError, match=r"state.pt is missing: this checkpoint holds weights only and cannot resume"):
        train(dataclasses.replace(config, train=dataclasses.replace(config.train, output_dir=str(tmp_path / "new"))), device="cpu", resume=str(tmp_path / "weights"))


def test_resume_refuses_a_checkpoint_of_another_model(synth_root, tmp_path):
    train(tiny_run_config(synth_root, tmp_path / "run", epochs=1), device="cpu")
    other = tiny_run_config(synth_root, tmp_path / "run", epochs=1)
    other.model = dataclasses.replace(other.model, num_queries=6)
    with pytest.raises(CheckpointError, match=r"trained with other settings \(model.num_queries\)"):
        train(other, device="cpu", resume="auto")


def test_resume_refuses_an_optimizer_state_that_does_not_fit_naming_the_file(synth_root, tmp_path):
    # As a version of the model with one more parameter tensor would have left it.
    config = tiny_run_config(synth_root, tmp_path / "run")
    train(config, device="cpu", stop_after_epochs=1)
    path = find_checkpoint(tmp_path / "run" / "last") / "state.pt"
    state = torch.load(path, weights_only=True)
    state["optimizer"]["param_groups"][-1]["params"].append(10_000)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"last/state.pt: its optimizer state does not fit this model"):
        train(config, device="cpu", resume="auto")


def test_two_processes_under_torchrun(synth_root, tmp_path):
    # Micro-batches of 1 on 2 processes accumulate twice per step of 4: no_sync is exercised.
    config = tiny_run_config(synth_root, tmp_path / "ddp", epochs=3, batch_size=4, micro_batch_size=1, lr=3e-3)
    save_config(config, tmp_path / "run.yaml")
    out = tmp_path / "workers"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "distributed_worker.py"), str(tmp_path / "run.yaml"), str(out),
    ]
    # A session of its own, so that a failure or timeout can stop torchrun and both workers together.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
    )
    try:
        output = process.communicate(timeout=600)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output[-6000:]

    # Both ranks end with identical weights.
    assert_same_weights(load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors")))
    # The loss falls.
    losses = [json.loads(line)["loss"] for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) >= 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    # Evaluation gathered over the two ranks equals one process on the same checkpoint.
    gathered = json.loads((out / "eval_rank0.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: another thread count may round a pixel differently
    try:
        single = evaluate_checkpoint(tmp_path / "ddp" / "last", ["val", "testA"], device="cpu")
    finally:
        torch.set_num_threads(threads)
    for split in ("val", "testA"):
        ids = [r["sent_id"] for r in gathered[split]["records"]]
        assert len(ids) == len(set(ids)) == single[split]["metrics"]["count"]
        assert gathered[split]["records"] == single[split]["records"]
        # The query diagnostics' sums meet in another order, so they agree to rounding.
        diagnostics = single[split]["metrics"]["diagnostics"]
        assert None not in diagnostics.values()
        assert gathered[split]["metrics"] == {**single[split]["metrics"], "diagnostics": pytest.approx(diagnostics)}
    assert json.loads((out / "eval_rank1.json").read_text()) == gathered


def test_eval_command_prints_writes_json_and_draws_each_expression(synth_root, tmp_path, capsys):
    from mmnet.cli import main

    train(tiny_run_config(synth_root, tmp_path / "run", epochs=1), device="cpu")
    capsys.readouterr()
    code = main(
        ["eval", "--checkpoint", str(tmp_path / "run" / "best"), "--split", "val", "--split", "testB",
         "--vis", str(tmp_path / "vis"), "--out", str(tmp_path / "eval.json"), "--device", "cpu"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:3] == ["split", "mIoU", "oIoU"]
    assert printed.splitlines()[3].split()[:3] == ["queries", "word", "entropy"]
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert set(metrics) == {"val", "testB"}
    for split in ("val", "testB"):
        diagnostics = metrics[split]["diagnostics"]
        assert list(diagnostics) == list(DIAGNOSTIC_NAMES)
        assert all(0 <= value <= 1 for value in diagnostics.values())  # N_q = 4 masks: every one is defined
        pictures = sorted((tmp_path / "vis" / split).glob("*.png"))
        assert len(pictures) == metrics[split]["count"] > 0
        from PIL import Image

        with Image.open(pictures[0]) as picture:
            # One row: expression, image, truth, prediction and the tiny model's four queries.
            assert picture.size == (TEXT + (3 + 4) * (TILE + GAP), TILE + CAPTION)


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    from mmnet.cli import main

    assert main(["eval", "--checkpoint", str(tmp_path / "none"), "--split", "val"]) == 2
    assert f"mmnet: error: no checkpoint at {tmp_path / 'none'}" in capsys.readouterr().err


def test_demo_writes_a_report_and_pictures(tmp_path):
    from mmnet.cli import main

    code = main(
        ["demo", "--out", str(tmp_path / "demo"), "--images", "6", "2", "2", "2", "--size", "128", "96", "--examples", "2",
         "train.epochs=1", "train.batch_size=4", "model.image_size=64", "model.hidden_dim=32", "data.num_workers=0",
         "train.tensorboard=false"]
    )
    assert code == 0
    report = (tmp_path / "demo" / "report.md").read_text()
    for split in ("val", "testA", "testB"):
        assert f"| {split} |" in report
    assert "![predictions](predictions.png)" in report
    assert "## Queries" in report and MEANING in report
    from PIL import Image

    with Image.open(tmp_path / "demo" / "predictions.png") as sheet:
        # Two rows, each with the four best scored of eight queries, 8 pixels apart.
        assert sheet.size == (TEXT + (3 + 4) * (TILE + GAP), 2 * (TILE + CAPTION) + 8)


def test_generalized_demo_reports_the_gres_metrics_and_draws_each_kind_of_expression(tmp_path):
    from PIL import Image

    from mmnet.cli import main
    from mmnet.data.refer import ReferIndex

    out = tmp_path / "demo"
    code = main(
        ["demo", "--generalized", "--out", str(out), "--images", "6", "4", "2", "2", "--size", "128", "96", "--examples", "3",
         "train.epochs=1", "train.batch_size=4", "model.image_size=64", "model.hidden_dim=32", "data.num_workers=0",
         "train.tensorboard=false"]
    )
    assert code == 0
    report = (out / "report.md").read_text()
    assert "| split | mIoU | oIoU |" in report and "| gIoU | cIoU | N-acc | T-acc | expressions |" in report
    assert "--name synthgref" in report and "--generalized" in report
    # One row for each kind of expression that val holds: one shape, several, none.
    index = ReferIndex.load(out / "data", "synthgref", "unc", progress=False)
    kinds = {min(len(index.ref(s.ref_id).ann_ids), 2) for s in index.sentences("val")}
    assert len(kinds) >= 2
    rows = len(sorted((out / "vis" / "val").glob("*.png")))
    assert rows == len(kinds)
    with Image.open(out / "predictions.png") as sheet:
        assert sheet.size[1] == rows * (TILE + CAPTION) + 8 * (rows - 1)


def test_weights_of_another_model_are_refused_naming_the_file(tmp_path):
    from mmnet.checkpoint import load_weights, save_checkpoint
    from tiny import build_tiny

    save_checkpoint(tmp_path / "ckpt", model=build_tiny(num_queries=4), config=Config(model=tiny_model_config(num_queries=4)))
    with pytest.raises(CheckpointError, match=r"model.safetensors does not fit this model: .*of another shape \(e.g. query_generator"):
        load_weights(build_tiny(num_queries=6), tmp_path / "ckpt")
