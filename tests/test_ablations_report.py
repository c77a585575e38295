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
    diagnostics = {"word_attention_entropy": 0.5, "query_mask_iou": 0.25, "score_spread": 0.1, "score_entropy": 0.9 + seed / 100}
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
    assert "Full model against Nq = 1 (Table 2): -19.00 testA mIoU (largest sd of the two 11.31), ahead on 0 of 2 seeds: the full model is behind" in large_part
    assert "Not run at this budget: Nq = 2; Nq = 4; " in large_part
    small_part = page[page.index("## 100") :]
    assert f"| {full} | 2 | 11.00 ± 1.41 |" in small_part


def test_the_command_given_for_a_budget_parses_back_to_its_settings_rows_and_seeds(ablations, tmp_path):
    settings = {**_settings(400, epochs=3), "data_seed": 7, "config": "configs/other.yaml"}
    runs = [_run("Nq = 1", 0, 1.0, settings, jobs=1, threads=2), _run("Nq = 24, w/o MMP", 2, 1.0, settings, jobs=1, threads=2)]
    (budget,) = ablations.budgets(_write(tmp_path / "runs.jsonl", runs))
    argv = shlex.split(budget["command"])
    assert argv[:2] == ["python", "benchmarks/ablations.py"]
    args = ablations.parser().parse_args(argv[2:])
    assert ablations._settings(args) == settings
    assert args.rows == ["Nq = 1", "Nq = 24, w/o MMP"] and args.seeds == [0, 2]
    assert (args.jobs, args.threads) == (1, 2)
    assert "## 400 training images, 3 epochs, configs/other.yaml, data seed 7" in ablations.markdown([budget])

    every_row = [name for name, _, _ in ablations.RUNS]
    plain = ablations.command(_settings(100), seeds=[0], rows=every_row, where=None)
    assert plain == "python benchmarks/ablations.py --images 100 10 10 10 --epochs 2 --seeds 0"


def test_runs_of_rows_no_longer_defined_are_named_and_left_out_of_table_and_command(ablations, tmp_path):
    settings = _settings(100)
    gone = _run("Nq = 24, a row since removed", 5, 50.0, settings)
    del gone["machine"]  # and a run from before runs recorded where they trained
    (budget,) = ablations.budgets(_write(tmp_path / "runs.jsonl", [_run("Nq = 1", 0, 1.0, settings), gone]))
    assert [r["name"] for r in budget["runs"]] == ["Nq = 1"]
    assert "--seeds 0 --rows 'Nq = 1'" in budget["command"]
    page = ablations.markdown([budget])
    assert "left out: Nq = 24, a row since removed." in page
    assert "50.00" not in page
    only_gone = ablations.budgets(_write(tmp_path / "gone.jsonl", [gone]))
    assert only_gone == []


def test_rows_are_compared_on_the_seeds_both_ran(ablations, tmp_path):
    settings = _settings(100)
    full, other = ablations.FULL_NAME, "Nq = 24, w/o MQE"
    runs = [
        _run(full, 0, 20.0, settings),
        _run(full, 1, 22.0, settings),
        _run(full, 2, 90.0, settings),  # no seed 2 of the other row: left out of the comparison
        _run(other, 0, 19.0, settings),
        _run(other, 1, 20.0, settings),
    ]
    page = ablations.markdown(ablations.budgets(_write(tmp_path / "runs.jsonl", runs)))
    # means 21 and 19.5 on seeds 0 and 1; sds 1.41 and 0.71
    expected = (
        f"- Full model against {other} (Table 4): +1.50 testA mIoU on the seeds both ran (0, 1) (largest sd of the two 1.41), "
        "ahead on 2 of 2 seeds: the full model is ahead by more than the seeds' sd."
    )
    assert expected in page
    assert "Rows with fewer than 3 seeds: Nq = 24, w/o MQE." in page


def test_w_o_mmp_at_each_query_number_is_compared_with_its_own_multi_mask_row(ablations, tmp_path):
    settings = _settings(100)
    runs = [
        _run(ablations.FULL_NAME, 0, 20.0, settings),
        _run(ablations.FULL_NAME, 1, 22.0, settings),
        _run("Nq = 8", 0, 30.0, settings),
        _run("Nq = 8", 1, 31.0, settings),
        _run("Nq = 8, w/o MMP", 0, 33.0, settings),
        _run("Nq = 8, w/o MMP", 1, 36.0, settings),
        _run("Nq = 16, w/o MMP", 0, 10.0, settings),
    ]
    page = ablations.markdown(ablations.budgets(_write(tmp_path / "runs.jsonl", runs)))
    # 30.5 against 34.5 on seeds 0 and 1; sds 0.71 and 2.12: 4 behind, more than 2.12
    assert (
        "- Nq = 8 against Nq = 8, w/o MMP (Table 3): -4.00 testA mIoU (largest sd of the two 2.12), ahead on 0 of 2 seeds: "
        "Nq = 8 is behind by more than the seeds' sd; in the paper it is ahead."
    ) in page
    assert "- Nq = 16 against Nq = 16, w/o MMP (Table 3): Nq = 16 not run." in page
    assert "- Full model against Nq = 24, w/o MQE (Table 4): Nq = 24, w/o MQE not run." in page
    without_full = ablations.markdown(ablations.budgets(_write(tmp_path / "no_full.jsonl", runs[2:])))
    assert "- Nq = 8 against Nq = 8, w/o MMP (Table 3): -4.00 testA mIoU" in without_full
    assert f"- Full model against Nq = 1 (Table 2): {ablations.FULL_NAME} and Nq = 1 not run." in without_full
    assert "| score spread | score entropy |" in page
    # score entropy 0.90 and 0.91 on seeds 0 and 1: mean 0.905, sd 0.007
    assert f"| {ablations.FULL_NAME} | 2 | 21.00 ± 1.41 |" in page
    full_line = next(line for line in page.splitlines() if line.startswith(f"| {ablations.FULL_NAME} |"))
    assert "| 0.100 ± 0.000 | 0.905 ± 0.007 |" in full_line


def test_a_gap_within_the_seeds_sd_is_told_apart_from_one_beyond_it(ablations):
    def row(values):
        return {"seeds": list(range(len(values))), "values": {"testA mIoU": values}}

    within = ablations._comparison(row([20.0, 24.0]), row([22.0, 23.0]), paper_ahead=True)
    assert within.startswith("-0.50 testA mIoU (largest sd of the two 2.83), ahead on 1 of 2 seeds")
    assert within.endswith("the full model is not ahead, and the gap is within the seeds' sd; in the paper it is ahead")
    barely = ablations._comparison(row([21.0, 23.0]), row([20.0, 23.0]), paper_ahead=True)
    assert barely.endswith("ahead on 1 of 2 seeds: the full model is ahead, but by less than the seeds' sd")


def test_an_empty_runs_file_gives_a_page_that_says_so(ablations, tmp_path):
    found = ablations.budgets(tmp_path / "absent.jsonl")
    assert found == []
    assert "No run yet" in ablations.markdown(found)
