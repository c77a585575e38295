"""The ablations of the paper's Tables 2-4 on the synthetic referring dataset, over several seeds.

Every run trains the demo's small MMNet from scratch with the same data and number of epochs,
changing one switch; the best validation checkpoint is then evaluated on val, testA and testB.
Each row is trained once per seed and reported as mean ± sd over the seeds, with the query
diagnostic (mmnet/diagnostics.py) beside the metrics. A text-blind control (every expression
replaced by an empty one) shows what the images alone give away. Results go to
benchmarks/results/ablations.json and docs/ablations.md, beside the paper's figures (RefCOCO+
testA, ResNet-50, 50 epochs): one table per budget (``--images``, ``--epochs``, ``--config``,
``--data-seed``) that the runs file holds, the largest training set first.

Runs go to ``--jobs`` processes of ``--threads`` torch threads each: on two cores two runs of one
thread train faster together than two runs of two threads one after the other. Each finished
run is appended to ``--runs-file`` (benchmarks/results/ablations_runs.jsonl, kept in the
repository); a second call with the same settings skips what is there, so an interrupted sweep
continues where it stopped, on this machine or another; ``--report-only`` writes the tables from
what is there.

    python benchmarks/ablations.py                                      # every row, seeds 0 1 2
    python benchmarks/ablations.py --rows "Nq = 24 (full model)" "Nq = 1" --seeds 0
    python benchmarks/ablations.py --epochs 1 --images 300 50 50 50 \\
        --runs-file /tmp/r.jsonl --json /tmp/r.json --doc /tmp/r.md     # a quick look, kept apart
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

from mmnet.config import paper_text_overrides
from mmnet.experiment import EVAL_SPLITS as SPLITS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeps import machine, read_runs, run_folder, runs_by_settings, train_fresh, train_in_processes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "configs/demo.yaml"
DEFAULT_JOBS, DEFAULT_THREADS = 2, 1
FULL_NAME = "Nq = 24 (full model)"

# (name, overrides, the paper's RefCOCO+ testA mIoU for the same setting or None): every row of
# Tables 2-4, and the control.
RUNS = [
    ("Nq = 1", ["model.num_queries=1"], 65.42),
    ("Nq = 2", ["model.num_queries=2"], 65.80),
    ("Nq = 4", ["model.num_queries=4"], 66.13),
    ("Nq = 8", ["model.num_queries=8"], 66.85),
    ("Nq = 16", ["model.num_queries=16"], 67.59),
    (FULL_NAME, ["model.num_queries=24"], 68.14),
    ("Nq = 32", ["model.num_queries=32"], 67.26),
    ("Nq = 8, w/o MMP", ["model.num_queries=8", "model.multi_mask=false"], 66.09),
    ("Nq = 16, w/o MMP", ["model.num_queries=16", "model.multi_mask=false"], 66.65),
    ("Nq = 24, w/o MMP", ["model.num_queries=24", "model.multi_mask=false"], 66.82),
    ("Nq = 24, w/o MQE", ["model.num_queries=24", "model.estimator=false"], 66.69),
    ("Nq = 24, w/o f_vg", ["model.num_queries=24", "model.global_visual=false"], 67.32),
    ("Nq = 24, w/o f_vg and MQE", ["model.num_queries=24", "model.global_visual=false", "model.estimator=false"], 66.17),
    ("text-blind control", ["model.num_queries=24", "data.text_blind=true"], None),
    # The full model exactly as the paper's text writes it (docs/model.md, "Departures").
    (
        "Nq = 24, departures undone",
        ["model.num_queries=24", *paper_text_overrides()],
        None,
    ),
    # The per-query loss, a departure (docs/model.md): on every query's mask, and none at all.
    ("Nq = 24, all query masks supervised", ["model.num_queries=24", "train.query_loss=all"], None),
    ("Nq = 24, loss on y only", ["model.num_queries=24", "train.query_loss=none"], None),
]
# The paper's ordering (testA mIoU): (model, the row it is compared with, where the paper has the
# pair). Where the place is a table, the paper has the model ahead.
ORDERING = [
    (FULL_NAME, "Nq = 1", "Table 2"),
    (FULL_NAME, "Nq = 24, w/o MMP", "Table 3"),
    ("Nq = 8", "Nq = 8, w/o MMP", "Table 3"),
    ("Nq = 16", "Nq = 16, w/o MMP", "Table 3"),
    (FULL_NAME, "Nq = 24, w/o MQE", "Table 4"),
    (FULL_NAME, "Nq = 24, w/o f_vg", "Table 4"),
    (FULL_NAME, "Nq = 24, w/o f_vg and MQE", "Table 4"),
    (FULL_NAME, "Nq = 24, departures undone", "the departures"),
    (FULL_NAME, "Nq = 24, all query masks supervised", "the per-query loss"),
    (FULL_NAME, "Nq = 24, loss on y only", "the per-query loss"),
]


def train_and_evaluate(*, name: str, overrides: list[str], seed: int, config: str, data_root: str, out: str, epochs: int, threads: int) -> dict:
    """One run: trains a row's model with ``seed`` and evaluates its best checkpoint."""
    settings = [f"data.root={data_root}", f"train.epochs={epochs}", f"train.seed={seed}", *overrides]
    done = train_fresh(config, run_folder(out, name, seed), settings, threads=threads)
    return {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        "train_seconds": done.seconds["train"],
        "val_history": [h["mIoU"] for h in done.trained.state.history],
        "metrics": done.metrics,
    }


def run(args) -> None:
    """Trains the runs of ``args``'s rows and seeds at its budget that ``--runs-file`` lacks."""
    out = Path(args.out)
    wanted = [r for r in RUNS if not args.rows or r[0] in args.rows]
    unknown = set(args.rows or ()) - {r[0] for r in RUNS}
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))}; known: {', '.join(r[0] for r in RUNS)}")
    done_file = Path(args.runs_file)
    done = read_runs(done_file, _settings(args))
    data_root = out / f"data_{'_'.join(map(str, args.images))}_seed{args.data_seed}"
    tasks = [
        dict(name=name, overrides=overrides, seed=seed, config=args.config, data_root=str(data_root), out=str(out), epochs=args.epochs, threads=args.threads)
        for seed in args.seeds
        for name, overrides, _ in wanted
        if (name, seed) not in done
    ]
    print(f"{len(tasks)} runs to train ({len(done)} done before) in {args.jobs} processes", flush=True)
    if tasks and not (data_root / "synthref" / "instances.json").is_file():
        shutil.rmtree(data_root, ignore_errors=True)  # a set whose writing was interrupted
        write_synthetic_set(data_root, args)
    announce = lambda r: f"== {r['name']}, seed {r['seed']}: testA mIoU {r['metrics']['testA']['mIoU']:.2f}"  # noqa: E731
    where = machine(jobs=args.jobs, threads=args.threads)
    train_in_processes(train_and_evaluate, tasks, jobs=args.jobs, runs_file=done_file, settings=_settings(args), announce=announce, where=where)


def budgets(runs_file: Path) -> list[dict]:
    """Every budget (settings) that ``runs_file`` holds runs of rows in RUNS, the largest training
    set first: its settings, the command that trains what it holds, where its runs trained (each
    distinct machine), its runs in the table's order (rows as in RUNS, then seeds), and the names
    of rows it holds that RUNS no longer defines."""
    known = [name for name, _, _ in RUNS]
    found = []
    for group in runs_by_settings(runs_file).values():
        kept = {run: result for run, result in group.items() if run[0] in known}
        settings = next(iter(kept.values())).get("settings") if kept else None
        if settings is None:  # no run of a known row, or records without settings: no budget
            continue
        seeds = sorted({seed for _, seed in kept})
        names = [name for name in known if any((name, seed) in kept for seed in seeds)]
        machines = []
        for result in kept.values():
            if result.get("machine") not in machines:
                machines.append(result.get("machine"))
        found.append(
            {
                "command": command(settings, seeds=seeds, rows=names, where=machines[0] if len(machines) == 1 else None),
                **settings,
                "machines": machines,
                "unknown_rows": sorted({name for name, _ in group} - set(known)),
                "runs": [kept[(name, seed)] for name in names for seed in seeds if (name, seed) in kept],
            }
        )
    return sorted(found, key=lambda b: (-b["images"][0], -b["epochs"], b["config"], b["data_seed"]))


def command(settings: dict, *, seeds: list[int], rows: list[str], where: Optional[dict]) -> str:
    """The call of this script that trains ``rows`` x ``seeds`` at ``settings``."""
    argv = ["python", "benchmarks/ablations.py", "--images", *map(str, settings["images"]), "--epochs", str(settings["epochs"])]
    argv += ["--seeds", *map(str, seeds)]
    if set(rows) != {name for name, _, _ in RUNS}:
        argv += ["--rows", *rows]
    if settings["config"] != DEFAULT_CONFIG:
        argv += ["--config", settings["config"]]
    if settings["data_seed"] != 0:
        argv += ["--data-seed", str(settings["data_seed"])]
    if where and (where["jobs"], where["threads"]) != (DEFAULT_JOBS, DEFAULT_THREADS):
        argv += ["--jobs", str(where["jobs"]), "--threads", str(where["threads"])]
    return shlex.join(argv)


def write_synthetic_set(data_root: Path, args) -> None:
    from mmnet.data.synth import write_synthetic

    write_synthetic(data_root, name="synthref", seed=args.data_seed, images=args.images, width=320, height=240)


def _settings(args) -> dict:
    config = Path(args.config).resolve()
    return {
        "epochs": args.epochs,
        "images": list(args.images),
        "data_seed": args.data_seed,
        "config": str(config.relative_to(REPO)) if config.is_relative_to(REPO) else args.config,
    }


def summary(results: dict) -> dict[str, dict]:
    """Per row: the seeds, and mean and sd (over seeds) of each figure the table shows."""
    rows: dict[str, dict] = {}
    for r in results["runs"]:
        row = rows.setdefault(r["name"], {"seeds": [], "values": {}})
        row["seeds"].append(r["seed"])
        figures = {f"{split} {m}": r["metrics"][split][m] for split in SPLITS for m in ("mIoU", "oIoU", "Pr@0.5")}
        figures.update({k: v for k, v in r["metrics"]["testA"]["diagnostics"].items()})
        figures["train s"] = r["train_seconds"]
        for key, value in figures.items():
            row["values"].setdefault(key, []).append(value)
    for row in rows.values():
        row["mean"] = {k: _mean(v) for k, v in row["values"].items()}
        row["sd"] = {k: _sd(v) for k, v in row["values"].items()}
    return rows


def _mean(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _sd(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def _cell(row: dict, key: str, digits: int = 2) -> str:
    mean, sd = row["mean"].get(key), row["sd"].get(key)
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _comparison(ours: dict, other: dict, *, paper_ahead: bool, model: str = "the full model") -> str:
    """The testA mIoU of row ``ours`` (named ``model`` in the verdict) against another row's, on
    the seeds both ran: the mean of the differences, the larger of the two rows' sds on those
    seeds, and the seeds each wins."""
    ours_by_seed = dict(zip(ours["seeds"], ours["values"]["testA mIoU"]))
    other_by_seed = dict(zip(other["seeds"], other["values"]["testA mIoU"]))
    seeds = [seed for seed in ours["seeds"] if seed in other_by_seed]
    if not seeds:
        return "no seed in common"
    on = "" if len(seeds) == len(ours["seeds"]) == len(other["seeds"]) else f" on the seeds both ran ({', '.join(map(str, seeds))})"
    ours, theirs = [ours_by_seed[s] for s in seeds], [other_by_seed[s] for s in seeds]
    difference = statistics.fmean(ours) - statistics.fmean(theirs)
    spread = max(_sd(ours) or 0.0, _sd(theirs) or 0.0)
    if difference > spread:
        verdict = f"{model} is ahead by more than the seeds' sd"
    elif difference > 0:
        verdict = f"{model} is ahead, but by less than the seeds' sd"
    elif difference >= -spread:
        verdict = f"{model} is not ahead, and the gap is within the seeds' sd"
    else:
        verdict = f"{model} is behind by more than the seeds' sd"
    if difference <= 0 and paper_ahead:
        verdict += "; in the paper it is ahead"
    wins = sum(a > b for a, b in zip(ours, theirs))
    return (
        f"{difference:+.2f} testA mIoU{on} (largest sd of the two {spread:.2f}), ahead on {wins} of {len(seeds)} seeds: {verdict}"
    )


def trends(rows: dict[str, dict]) -> list[str]:
    """Where the paper's ordering holds by more than the seeds' spread, and where not."""
    full = rows.get(FULL_NAME)
    lines = []
    for model, name, table in ORDERING:
        label = "the full model" if model == FULL_NAME else model
        pair = f"- {'Full model' if model == FULL_NAME else model} against {name} ({table})"
        missing = [n for n in (model, name) if n not in rows]
        if missing:
            lines.append(f"{pair}: {' and '.join(missing)} not run.")
        else:
            lines.append(f"{pair}: {_comparison(rows[model], rows[name], paper_ahead=table.startswith('Table'), model=label)}.")
    nq = sorted(((int(n.split()[2]), r) for n, r in rows.items() if n.startswith("Nq = ") and "," not in n), key=lambda p: p[0])
    if nq:
        best = max(nq, key=lambda p: p[1]["mean"]["testA mIoU"])[0]
        lines.append(
            "- Query number (Table 2): testA mIoU by Nq "
            + ", ".join(f"{n}: {r['mean']['testA mIoU']:.2f}" for n, r in nq)
            + f"; the best here is Nq = {best}, the paper's is 24."
        )
    blind = rows.get("text-blind control")
    if blind is not None and full is not None:
        worth = full["mean"]["testA mIoU"] - blind["mean"]["testA mIoU"]
        lines.append(
            f"- Text-blind control: {blind['mean']['testA mIoU']:.2f} testA mIoU against {full['mean']['testA mIoU']:.2f} "
            f"for the full model: the expressions are worth {worth:.2f} points here."
        )
        spread = max(s for s in (full["sd"]["testA mIoU"], blind["sd"]["testA mIoU"], 0.0) if s is not None)
        if worth <= spread:
            lines += [
                "",
                "At this budget the expressions are worth less than the seeds' spread: the models have hardly",
                "begun to read, so the rows compare models that differ in how they would use words they do",
                "not yet use, and no ordering between them can be read from this table.",
            ]
    return lines


COLUMNS = [
    ("testA mIoU", "testA mIoU", 2),
    ("testA oIoU", "testA oIoU", 2),
    ("testA Pr@0.5", "testA Pr@0.5", 2),
    ("val mIoU", "val mIoU", 2),
    ("testB mIoU", "testB mIoU", 2),
    ("word entropy", "word_attention_entropy", 3),
    ("mask IoU", "query_mask_iou", 3),
    ("score spread", "score_spread", 3),
    ("score entropy", "score_entropy", 3),
]


def markdown(found: list[dict]) -> str:
    """docs/ablations.md: a section per budget of ``budgets``."""
    lines = [
        "# Ablations",
        "",
        "The switches of the paper's Tables 2-4, each trained from scratch on the synthetic referring",
        "dataset, once per seed, reported as mean ± sd over the seeds. Each section below is one",
        "budget (a config, its training images and epochs, the data seed), the largest first, with the",
        "command that trains it; it names the rows it lacks and those with fewer seeds than the rest. The",
        "paper's column is RefCOCO+ testA with a pretrained ResNet-50 over 50 epochs: the scale differs,",
        "the direction of each change is what to compare. Metrics in percent; the query diagnostic",
        "(word entropy, mask IoU, score spread, score entropy: `mmnet/diagnostics.py`,",
        "docs/training.md) on testA.",
        "",
    ]
    if not found:
        lines += ["No run yet: `python benchmarks/ablations.py` trains every row.", ""]
    for results in found:
        lines += section(results)
    return "\n".join(lines)


def section(results: dict) -> list[str]:
    """One budget's table, where it follows the paper's ordering, and the command behind it."""
    rows = summary(results)
    paper = {name: value for name, _, value in RUNS}
    seeds = sorted({seed for row in rows.values() for seed in row["seeds"]})
    images = results["images"]
    extra = "" if results["config"] == DEFAULT_CONFIG else f", {results['config']}"
    extra += "" if results["data_seed"] == 0 else f", data seed {results['data_seed']}"
    lines = [
        f"## {images[0]:,} training images, {results['epochs']} epochs{extra}",
        "",
        f"`{results['config']}` trained for {results['epochs']} epochs on {images[0]:,} synthetic training images "
        f"(val, testA, testB: {images[1]}, {images[2]}, {images[3]} images), seeds {', '.join(map(str, seeds))}.",
        "",
        "| run | seeds | " + " | ".join(title for title, _, _ in COLUMNS) + " | paper testA mIoU | train s |",
        "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- | --- |",
    ]
    for name, row in rows.items():
        reference = f"{paper[name]:.2f}" if paper.get(name) is not None else "-"
        lines.append(
            f"| {name} | {len(row['seeds'])} | "
            + " | ".join(_cell(row, key, digits) for _, key, digits in COLUMNS)
            + f" | {reference} | {row['mean']['train s']:.0f} |"
        )
    missing = [name for name, _, _ in RUNS if name not in rows]
    if missing:
        lines += ["", "Not run at this budget: " + "; ".join(missing) + " (`--rows` names them)."]
    short = [name for name, row in rows.items() if len(row["seeds"]) < len(seeds)]
    if short:
        lines += [
            "",
            f"Rows with fewer than {len(seeds)} seeds: {'; '.join(short)}. The command below trains the seeds they",
            "lack, and only those: what the runs file holds is not trained again.",
        ]
    lines += ["", "### Where the paper's ordering holds and where it does not", "", *trends(rows), ""]
    machines = results["machines"]
    if machines == [None]:
        lines += ["The train column is wall-clock seconds per run; where the runs trained was not recorded.", ""]
    else:
        described = [
            "not recorded" if m is None else f"{m['jobs']} runs of {m['threads']} thread(s) sharing a {m['processor']} machine, torch {m['torch']}"
            for m in machines
        ]
        lines += ["The train column is wall-clock seconds per run: " + "; ".join(described) + ".", ""]
    if results["unknown_rows"]:
        lines += ["Runs of rows this script no longer defines, left out: " + "; ".join(results["unknown_rows"]) + ".", ""]
    lines += [
        "Produced by (it trains only what the runs file lacks; add `--runs-file`, `--json` and `--doc` with new",
        "paths to train the table again from nothing):",
        "",
        "```bash",
        results["command"],
        "```",
        "",
    ]
    return lines


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / DEFAULT_CONFIG))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, nargs=4, default=[3000, 100, 100, 100], metavar=("TRAIN", "VAL", "TESTA", "TESTB"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", help="run only these rows, by name")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="runs trained at once")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads of each run")
    parser.add_argument("--runs-file", default=str(REPO / "benchmarks" / "results" / "ablations_runs.jsonl"))
    parser.add_argument("--report-only", action="store_true", help="write the tables from --runs-file without training")
    parser.add_argument("--out", default="runs/ablations")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "ablations.json"))
    parser.add_argument("--doc", default=str(REPO / "docs" / "ablations.md"))
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    args = parser().parse_args(argv)
    if not args.report_only:
        run(args)
    found = budgets(Path(args.runs_file))
    Path(args.json).write_text(json.dumps({"budgets": found}, indent=2))
    Path(args.doc).write_text(markdown(found))
    print(markdown(found))


if __name__ == "__main__":
    main()
