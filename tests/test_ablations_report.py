"""benchmarks/ablations.py's report: one table per budget of the runs file, the command that trains
each, and the figures worked out by hand from the runs."""

from __future__ import annotations

import importlib
import json
import shlex
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def ablations():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("ablations")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _settings(train_images: int, epochs: int = 2) -> dict:
    return {"epochs": epochs, "images": [train_images, 10, 10, 10], "data_seed": 0, "config": "configs/demo.yaml"}


def _run(name: str, seed: int, test_a: float, settings: dict, *, jobs: int = 2, threads: int = 1) -> dict:
    split = {"mIoU": test_a, "oIoU": test_a + 1, "Pr@0.5": 0.0}
    diagnostics = {"word_attention_entropy": 0.5, "query_mask_iou": 0.25, "score_spread": 0.1}
    return {
        "name": name,
        "seed": seed,
        "overrides": [],
        "train_seconds": 100.0 + seed,
        "val_history": [test_a],
        "metrics": {"val": split, "testA": {**split, "diagnostics": diagnostics}, "testB": split},
        "settings": settings,
        "machine": {"processor": "x86_64", "jobs": jobs, "threads": threads, "torch": "2.x"},
    }


def _write(path: Path, runs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))
    return path


def test_each_budget_is_a_table_of_its_own_runs_the_largest_first(ablations, tmp_path):
    small, large = _settings(100), _settings(400)
    full, blind = ablations.FULL_NAME, "text-blind control"
    path = _write(
        tmp_path / "runs.jsonl",
        [
            _run(full, 0, 10.0, small),
            _run(full, 0, 30.0, large),
            _run(blind, 0, 5.0, large),
            _run(full, 1, 14.0, large),
            _run(blind, 1, 7.0, large),
            _run(full, 1, 99.0, small),
            _run(full, 1, 12.0, small),  # a rerun of the same run replaces the line above
            _run("Nq = 1", 0, 40.0, large),
            _run("Nq = 1", 1, 42.0, large),
        ],
    )
    found = ablations.budgets(path)
    assert [b["images"][0] for b in found] == [400, 100]
    order = [("Nq = 1", 0), ("Nq = 1", 1), (full, 0), (full, 1), (blind, 0), (blind, 1)]
    assert [(r["name"], r["seed"]) for r in found[0]["runs"]] == order
    assert [r["metrics"]["testA"]["mIoU"] for r in found[1]["runs"]] == [10.0, 12.0]

    page = ablations.markdown(found)
    assert page.index("## 400 training images") < page.index("## 100 training images")
    large_part = page[page.index("## 400") : page.index("## 100")]
    # testA mIoU 30 and 14: mean 22, sd sqrt(128) = 11.31; 5 and 7: mean 6, sd 1.41
    assert f"| {full} | 2 | 22.00 ± 11.31 |" in large_part
    assert f"| {blind} | 2 | 6.00 ± 1.41 |" in large_part
    assert "the expressions are worth 16.00 points here" in large_part
    # 22 against 41 (sd 1.41): 19 points behind, more than the larger sd, 11.31
    assert "Full model against Nq = 1 (Table 2): -19.00 testA mIoU (largest sd of the two 11.31): the full model is behind" in large_part
    assert "Not run at this budget: Nq = 2; Nq = 4; " in large_part
    small_part = page[page.index("## 100") :]
    assert f"| {full} | 2 | 11.00 ± 1.41 |" in small_part


def test_the_command_given_for_a_budget_trains_what_its_table_holds(ablations, tmp_path):
    settings = _settings(400, epochs=3)
    path = _write(tmp_path / "runs.jsonl", [_run("Nq = 1", 0, 1.0, settings, jobs=1, threads=2), _run("Nq = 1", 2, 1.0, settings)])
    (budget,) = ablations.budgets(path)
    argv = shlex.split(budget["command"])
    assert argv[:2] == ["python", "benchmarks/ablations.py"]
    assert argv[argv.index("--images") + 1 : argv.index("--images") + 5] == ["400", "10", "10", "10"]
    assert argv[argv.index("--epochs") + 1] == "3"
    assert argv[argv.index("--seeds") + 1 : argv.index("--rows")] == ["0", "2"]
    assert argv[argv.index("--rows") + 1] == "Nq = 1"
    assert argv[argv.index("--jobs") + 1 : argv.index("--jobs") + 4] == ["1", "--threads", "2"]
    assert "--config" not in argv and "--data-seed" not in argv

    every_row = [name for name, _, _ in ablations.RUNS]
    plain = ablations.command(_settings(100), seeds=[0], rows=every_row, where=None)
    assert plain == "python benchmarks/ablations.py --images 100 10 10 10 --epochs 2 --seeds 0"


def test_an_empty_runs_file_gives_a_page_that_says_so(ablations, tmp_path):
    found = ablations.budgets(tmp_path / "absent.jsonl")
    assert found == []
    assert "No run yet" in ablations.markdown(found)
