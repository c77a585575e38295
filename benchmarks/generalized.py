"""Generalized referring segmentation on the synthetic set, trained on CPU: the GRES metrics of the
model with the no-target head, beside its text-blind control, the same model without the head,
and the same model trained on single-target data only.

Every run trains the generalized demo's recipe (configs/demo_generalized.yaml: the demo's small
MMNet, 2 epochs) from scratch on one synthetic set written twice from one seed: in gRefCOCO's
layout (``mmnet data synth --generalized``: expressions naming one shape, two or three, or none)
and in the plain layout (the same images, single-target expressions only). Each run's best
validation checkpoint is evaluated on the generalized val, testA and testB; besides gIoU, cIoU,
N-acc and T-acc the table gives the mean IoU of each kind of expression (one object, several,
none). Results go to benchmarks/results/generalized.json and docs/training.md.

Runs go to ``--jobs`` processes of ``--threads`` torch threads (two runs of one thread on two
cores, as benchmarks/ablations.py). Each finished run is appended to ``--runs-file``; a second
call with the same settings trains only what is missing, ``--report-only`` writes the table.

    python benchmarks/generalized.py --seeds 0            # every row, seed 0
    python benchmarks/generalized.py --rows "with the head" --seeds 0
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
from pathlib import Path
from typing import Optional

from mmnet.experiment import EVAL_SPLITS as SPLITS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeps import machine, read_runs, run_folder, train_fresh, train_in_processes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GENERALIZED, PLAIN = "synthgref", "synthref"
FULL = "with the head"

# (name, overrides, the dataset trained on).
RUNS = [
    (FULL, [], GENERALIZED),
    ("text-blind control", ["data.text_blind=true"], GENERALIZED),
    ("without the head", ["model.no_target=false"], GENERALIZED),
    # The plain set has fewer refs per image (2.2 against 3.8): 4 epochs give it at least the steps
    # of 2 generalized ones, so that what it lacks is the kinds of expression, not training.
    ("trained on single-target data only (4 epochs)", ["model.no_target=false", "train.epochs=4"], PLAIN),
]
KINDS = {"one object": lambda n: n == 1, "several objects": lambda n: n > 1, "no object": lambda n: n == 0}


def by_kind(records: list[dict]) -> dict[str, dict]:
    """Mean IoU (percent) and count of the expressions of each kind."""
    result = {}
    for kind, belongs in KINDS.items():
        ious = [r["iou"] for r in records if belongs(r["objects"])]
        result[kind] = {"mIoU": 100.0 * statistics.fmean(ious) if ious else None, "count": len(ious)}
    return result


def train_and_evaluate(*, name: str, overrides: list[str], dataset: str, seed: int, config: str, data_root: str, out: str, threads: int) -> dict:
    """One run: trains a row's model with ``seed`` on ``dataset``, evaluates its best checkpoint on
    the generalized splits."""
    from mmnet.evaluate import evaluate_checkpoint

    run_dir = run_folder(out, name, seed)
    settings = [f"data.root={data_root}", f"data.dataset={dataset}", f"train.seed={seed}", *overrides]
    done = train_fresh(config, run_dir, settings, threads=threads, splits=SPLITS if dataset == GENERALIZED else SPLITS[:1])
    evaluation = done.evaluation
    if dataset != GENERALIZED:  # validated on its own kind of data; scored on the generalized splits
        evaluation = evaluate_checkpoint(run_dir / "best", list(SPLITS), overrides=(f"data.dataset={GENERALIZED}",), device="cpu")
    return {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        "dataset": dataset,
        "train_seconds": done.seconds["train"],
        "steps": done.trained.state.step,
        "val_history": [h["mIoU"] for h in done.trained.state.history],
        "metrics": {split: result["metrics"] for split, result in evaluation.items()},
        "kinds": {split: by_kind(result["records"]) for split, result in evaluation.items()},
    }


def write_sets(data_root: Path, args) -> None:
    from mmnet.data.synth import write_synthetic

    for name, generalized in ((GENERALIZED, True), (PLAIN, False)):
        write_synthetic(data_root, name=name, seed=args.data_seed, images=args.images, width=320, height=240, generalized=generalized)


def _announce(result: dict) -> str:
    val = result["metrics"]["val"]
    return f"== {result['name']}, seed {result['seed']}: val gIoU {val['gIoU']:.2f}, N-acc {val['N-acc']:.1f}, T-acc {val['T-acc']:.1f}"


def _settings(args) -> dict:
    config = Path(args.config).resolve()
    return {
        "images": list(args.images),
        "data_seed": args.data_seed,
        "config": str(config.relative_to(REPO)) if config.is_relative_to(REPO) else args.config,
    }


def run(args) -> dict:
    out = Path(args.out)
    data_root = out / f"data_{'_'.join(map(str, args.images))}_seed{args.data_seed}"
    if not all((data_root / name / "instances.json").is_file() for name in (GENERALIZED, PLAIN)):
        shutil.rmtree(data_root, ignore_errors=True)  # sets whose writing was interrupted
        write_sets(data_root, args)
    wanted = [r for r in RUNS if not args.rows or r[0] in args.rows]
    unknown = set(args.rows or ()) - {r[0] for r in RUNS}
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))}; known: {', '.join(r[0] for r in RUNS)}")
    done_file = Path(args.runs_file)
    done = read_runs(done_file, _settings(args))
    tasks = [
        dict(name=name, overrides=overrides, dataset=dataset, seed=seed, config=args.config, data_root=str(data_root), out=str(out), threads=args.threads)
        for seed in args.seeds
        for name, overrides, dataset in wanted
        if (name, seed) not in done and not args.report_only
    ]
    print(f"{len(tasks)} runs to train ({len(done)} done before) in {args.jobs} processes", flush=True)
    where = machine(jobs=args.jobs, threads=args.threads)
    for result in train_in_processes(train_and_evaluate, tasks, jobs=args.jobs, runs_file=done_file, settings=_settings(args), announce=_announce, where=where):
        done[(result["name"], result["seed"])] = result
    return {
        "command": shlex.join(["python", "benchmarks/generalized.py", *(a for a in args.argv if a != "--report-only")]),
        **_settings(args),
        "machine": where,
        "runs": [done[(name, seed)] for name, _, _ in wanted for seed in args.seeds if (name, seed) in done],
    }


SWEEP = (0.2, 0.3, 0.4, 0.5)


def threshold_sweep(records: list[dict]) -> list[dict]:
    """N-acc and T-acc (percent) at no-target thresholds up to 0.5, from records evaluated at 0.5.

    At a threshold t <= 0.5 an expression is flagged when its probability is above t; one that is
    not has the mask its record measured (the head emptied none at or below 0.5), so both figures
    are exact: N-acc counts flagged or empty, T-acc unflagged and non-empty.
    """
    none = [r for r in records if r["objects"] == 0]
    some = [r for r in records if r["objects"] > 0]
    rows = []
    for t in SWEEP:
        nothing = sum(r["no_target_probability"] > t or r["predicted_area"] == 0 for r in none)
        found = sum(r["no_target_probability"] <= t and r["predicted_area"] > 0 for r in some)
        rows.append({"threshold": t, "N-acc": 100.0 * nothing / len(none), "T-acc": 100.0 * found / len(some)})
    return rows


def sweep_runs(results: dict, out: Path) -> None:
    """Adds ``threshold_sweep`` per split to every run of the full row whose best checkpoint is in ``out``."""
    from mmnet.evaluate import evaluate_checkpoint

    for run in results["runs"]:
        best = run_folder(out, run["name"], run["seed"]) / "best"
        if run["name"] != FULL or not best.is_dir():
            continue
        evaluation = evaluate_checkpoint(best, list(SPLITS), device="cpu")
        run["threshold_sweep"] = {split: threshold_sweep(result["records"]) for split, result in evaluation.items()}


def sweep_markdown(results: dict) -> str:
    """The N-acc / T-acc trade-off of the head's threshold, mean over seeds, per split."""
    runs = [r for r in results["runs"] if "threshold_sweep" in r]
    if not runs:
        return ""
    lines = ["| no-target threshold | " + " | ".join(f"{split} N-acc / T-acc" for split in SPLITS) + " |", "| --- |" + " --- |" * len(SPLITS)]
    for i, t in enumerate(SWEEP):
        cells = []
        for split in SPLITS:
            n = statistics.fmean(r["threshold_sweep"][split][i]["N-acc"] for r in runs)
            a = statistics.fmean(r["threshold_sweep"][split][i]["T-acc"] for r in runs)
            cells.append(f"{n:.1f} / {a:.1f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", f"The model with the head, {len(runs)} seed(s), mean; 0.5 is `eval.no_target_threshold`'s default."]
    return "\n".join(lines)


COLUMNS = [("gIoU", "gIoU"), ("cIoU", "cIoU"), ("N-acc", "N-acc"), ("T-acc", "T-acc")]
KIND_COLUMNS = [(f"mIoU, {kind}", kind) for kind in KINDS]


def _mean_sd(values: list, digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    text = f"{statistics.fmean(values):.{digits}f}"
    return text + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def markdown(results: dict, split: str = "val") -> str:
    names = list(dict.fromkeys(r["name"] for r in results["runs"]))
    seeds = sorted({r["seed"] for r in results["runs"]})
    lines = [
        f"| run ({split}) | seeds | " + " | ".join(title for title, _ in COLUMNS + KIND_COLUMNS) + " | steps | train s |",
        "| --- | --- | " + " | ".join("---" for _ in COLUMNS + KIND_COLUMNS) + " | --- | --- |",
    ]
    for name in names:
        runs = [r for r in results["runs"] if r["name"] == name]
        cells = [_mean_sd([r["metrics"][split][key] for r in runs]) for _, key in COLUMNS]
        cells += [_mean_sd([r["kinds"][split][kind]["mIoU"] for r in runs]) for _, kind in KIND_COLUMNS]
        steps = _mean_sd([r.get("steps") for r in runs], digits=0)
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {steps} | {_mean_sd([r['train_seconds'] for r in runs], digits=0)} |")
    counts = results["runs"][0]["kinds"][split] if results["runs"] else {}
    lines += [
        "",
        f"Seeds {', '.join(map(str, seeds))}; mean ± sd over the seeds. Expressions in {split}: "
        + ", ".join(f"{v['count']} of {kind}" for kind, v in counts.items())
        + f". Training: `{results['config']}` on {results['images'][0]} images, "
        f"{results['machine']['jobs']} runs of {results['machine']['threads']} thread(s) sharing the machine.",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo_generalized.yaml"))
    parser.add_argument("--images", type=int, nargs=4, default=[4000, 100, 100, 100], metavar=("TRAIN", "VAL", "TESTA", "TESTB"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rows", nargs="+", help="run only these rows, by name")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--runs-file", default=str(REPO / "benchmarks" / "results" / "generalized_runs.jsonl"))
    parser.add_argument("--report-only", action="store_true", help="write the table from --runs-file without training")
    parser.add_argument("--out", default="runs/generalized")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "generalized.json"))
    parser.add_argument("--sweep", action="store_true", help="also evaluate the head's runs at no-target thresholds 0.2-0.5")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    results = run(args)
    if args.sweep:
        sweep_runs(results, Path(args.out))
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    for split in SPLITS:
        print(markdown(results, split), "\n", flush=True)
    print(sweep_markdown(results))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
