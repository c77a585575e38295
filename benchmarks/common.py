"""What the speed benchmarks share: models at the paper's settings, timing, a matrix-product
reference, and a record of the machine. Each configuration runs in a fresh process, so that its
peak memory is its own."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue as queue_module
import resource
import statistics
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
# The paper's settings (480 x 480, N_q = 24, C = 512, L = 17) with each backbone by name.
BASE_CONFIG = REPO / "configs" / "refcoco_vit-b-16.yaml"
BACKBONES = ("RN50", "RN101", "ViT-B-16")
# The multi-mask machinery and a model without it: N_q = 24 with the projector and estimator,
# against one query, one mask, no estimator.
VARIANTS = {
    "full (Nq 24)": ["model.num_queries=24"],
    "Nq 1, w/o MMP": ["model.num_queries=1", "model.multi_mask=false", "model.estimator=false"],
}


def model_config(backbone: str, overrides: list[str]):
    from mmnet.config import load_config

    return load_config(BASE_CONFIG, [f"model.backbone={backbone}", "model.clip_weights=null", *overrides]).model


def build(backbone: str, overrides: list[str], device: torch.device, *, channels_last: bool = True):
    from mmnet.build import build_mmnet

    torch.manual_seed(0)
    config = model_config(backbone, overrides)
    model = build_mmnet(config, load_clip_weights=False).to(device)  # channels_last, as built
    if not channels_last:
        model = model.to(memory_format=torch.contiguous_format)
    return model, config


def inputs(config, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from mmnet.info import dummy_inputs

    images, tokens = dummy_inputs(config, batch)
    return images.to(device), tokens.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``step`` after ``warmup`` untimed calls (at least one), and every timing."""
    (times,), _ = in_turns([step], device, warmup=warmup, repeats=repeats)
    return statistics.median(times), times


def in_turns(steps: list[Callable[[], object]], device: torch.device, *, warmup: int, repeats: int) -> tuple[list[list[float]], list[float]]:
    """Seconds of each step per repeat, the steps taking turns (forward order, then backward, so
    that a slow spell of the machine falls on all of them), and the seconds of each step's first
    call (a compiled model's includes the compiler). ``warmup`` counts that first call, which
    is made even when ``warmup`` is 0."""
    first = []
    for step in steps:
        start = time.perf_counter()
        step()
        sync(device)
        first.append(time.perf_counter() - start)
        for _ in range(warmup - 1):
            step()
    sync(device)
    times: list[list[float]] = [[] for _ in steps]
    for repeat in range(repeats):
        order = range(len(steps)) if repeat % 2 == 0 else reversed(range(len(steps)))
        for i in order:
            start = time.perf_counter()
            steps[i]()
            sync(device)
            times[i].append(time.perf_counter() - start)
    return times, first


def compare_forms(forms: dict[str, Callable], inputs: tuple, device: torch.device, *, warmup: int, repeats: int) -> dict:
    """Checks that every form gives the first one's output on ``inputs``, then times them in
    turns: per form the median milliseconds, every timing, and the median of its per-round ratio
    to the first form."""
    with torch.inference_mode():
        reference = next(iter(forms.values()))(*inputs)
        for name, form in forms.items():
            torch.testing.assert_close(form(*inputs), reference, atol=1e-4, rtol=1e-4, msg=lambda message: f"{name}: {message}")
        times, _ = in_turns([lambda form=form: form(*inputs) for form in forms.values()], device, warmup=warmup, repeats=repeats)
    return {
        name: {
            "median_ms": statistics.median(t) * 1e3,
            "times_s": t,
            "median_ratio_to_first": statistics.median(a / b for a, b in zip(t, times[0])),
        }
        for name, t in zip(forms, times)
    }


def write_results(out: str | None, name: str, device: torch.device, results: dict) -> Path:
    """Writes ``results`` with a record of the machine to ``out``, or to
    benchmarks/results/<name>_<device>.json."""
    path = Path(out or REPO / "benchmarks" / "results" / f"{name}_{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(device), **results}, indent=2))
    print(f"written: {path}")
    return path


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of a large square matrix product: what the machine reaches on the easiest work."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds, _ = median_seconds(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * size**3 / seconds


def peak_memory_mb(device: torch.device) -> float:
    """The peak memory of this process: allocated GPU memory on a GPU, resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _cpu_name() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def machine(device: torch.device) -> dict:
    info = {
        "processor": _cpu_name() or platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector instructions torch uses
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        # fp32 convolutions may run in TF32 (torch's default for cuDNN); matrix products may not
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def _child(queue, function, kwargs) -> None:
    try:
        queue.put(("ok", function(**kwargs)))
    except BaseException:  # reported to the parent, which names the configuration
        queue.put(("error", traceback.format_exc()))


def in_fresh_process(function: Callable[..., dict], **kwargs) -> dict:
    """Runs ``function(**kwargs)`` in a new process and returns its result."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, function, kwargs))
    process.start()
    while True:
        try:
            status, value = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not process.is_alive():  # killed (out of memory, a signal) before it could report
                raise RuntimeError(f"{function.__name__}({kwargs}) died with exit code {process.exitcode}") from None
    process.join()
    if status != "ok":
        raise RuntimeError(f"{function.__name__}({kwargs}) failed: {value}")
    return value


def microbenchmark_arguments(doc: str, *, name: str, warmup: int, repeats: int) -> argparse.ArgumentParser:
    """The options of the benchmarks that time forms of one operation against each other."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--out", help=f"JSON file (default benchmarks/results/{name}_<device>.json)")
    return parser


def arguments(doc: str, *, name: str, batches_help: str, warmup: int, repeats: int) -> argparse.ArgumentParser:
    """The options both speed benchmarks take."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--batches", type=int, nargs="+", help=batches_help)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (default: torch's choice)")
    parser.add_argument("--out", help=f"JSON file (default benchmarks/results/{name}_<device>.json)")
    return parser
