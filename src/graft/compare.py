"""`graft compare DATA`: does transfer pay off on *your* data? Each method at each data size, on the
same stratified, seeded subsets, tested on one fixed test set; a learning curve, the task's
monitored metric (accuracy, mAP, R2) against time and a self-contained report.html.

Data sizes (`--labels-per-class`) count examples of the task's groups (`Task.size_groups`):
single-label, N examples of every class (stratified); multi-label, examples drawn until every label
has at least N positives (all it has, if fewer), rarest label first; regression, N examples of
every decile of each target (ten quantile bins of the training pool). "all" is every example,
shown at the size it reaches (the smallest group's count).

Methods: `linear` (frozen pretrained features + a trained head), `finetune` (graft's LP-FT recipe),
`scratch` (the same architecture from random weights: the honest baseline, trained until validation
accuracy stops improving but never for fewer epochs than fine-tuning, with the same augmentation,
BatchNorm statistics of its own and one learning rate for every layer; without --time-budget, within
the seconds fine-tuning took on the same subset, at least SCRATCH_MIN_BUDGET_S, or without
fine-tuning among the methods within SCRATCH_DEFAULT_BUDGET_S).

--time-budget is the whole compare's (`BudgetSplit`): a reserve is kept back for the compare's own
work (its plots and report after every run, the last run's final evaluation and writing), and
each run, as it starts, gets an equal share of what is left for the runs still to do, so the
seconds a run does not use go to the later ones; what a method's runs went past their budgets
(fixed costs: fine-tuning's timed steps, evaluation, writing) is taken off its later runs.

Each finished run records its row (`compare_row.json`, with the exact config that made it) and the
outputs are rewritten before every new run: a compare stopped halfway keeps a report of what
finished, and the same command, or one with more sizes or methods, continues without redoing them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .data.splits import DataSplits, Labelled, stratified_split
from .errors import ConfigError
from .modalities import Modality, detect
from .options import METHODS, CompareOptions, parse_backbones, parse_methods, parse_sizes
from .tasks import Task, get_task

SCRATCH_MAX_EPOCHS = 30  # one-cycle over 30 epochs: warm-up for 7, then annealing
SCRATCH_PATIENCE = 5
# Without --time-budget, scratch gets the seconds fine-tuning took on the same subset (at least
# this many): trained until validation stops improving, it otherwise ran over 15 minutes on 1,000
# CIFAR-10 images on 2 cores, most of a compare's time, to end near chance anyway.
SCRATCH_MIN_BUDGET_S = 30.0
# Without --time-budget and without fine-tuning to match (`--methods linear,scratch`), scratch gets
# 3 minutes a run: from random weights on a small subset it is the honest floor, not a contender,
# and its curve has shown that within minutes (near chance on 1,000 CIFAR-10 images on 2 cores).
# Uncapped it planned 420 steps of about 5 s there: over 30 minutes, while the probe took about one.
SCRATCH_DEFAULT_BUDGET_S = 180.0
# --time-budget: kept back for the compare's own work (plots and report.html after every run, each
# run's evaluation and writing past its deadline): this share of the budget, at least RESERVE_MIN_S
RESERVE_SHARE = 0.1
RESERVE_MIN_S = 5.0
# a run's fixed costs need this much: loading the backbone, fine-tuning's timed steps, the final
# evaluation and writing (10-40 s on 2 busy cores); a smaller share is refused up front
MIN_RUN_BUDGET_S = 20.0
TEST_FRACTION = 0.2  # without --test, this stratified share of DATA (seed 0) is the fixed test set
# The validation set (early stopping, the kept epoch) is the same for every method and size, and at
# most this many per class: a user with 10 labels per class has no 5,000-image validation set, and
# scratch evaluates it every epoch for up to 30 epochs (on CIFAR-10's 10% split that was most of
# the compare's time). Per group for the other tasks: labels, target deciles.
VAL_PER_CLASS = 50

Log = Callable[[str], None]


@dataclass(frozen=True)
class CompareConfig:
    data: str
    test: str | None = None
    labels_per_class: tuple[int | None, ...] = parse_sizes(CompareOptions.labels_per_class)  # None: all
    methods: tuple[str, ...] = parse_methods(CompareOptions.methods)
    backbones: tuple[str | None, ...] = parse_backbones(CompareOptions.backbones)  # None: the modality's
    seeds: int = CompareOptions.seeds
    out: str = CompareOptions.out
    options: dict[str, Any] | None = None  # any other `graft train` option (image_size, time_budget, ...)


def method_config(base: TrainConfig, method: str, finetune_epochs: int) -> TrainConfig:
    if method == "linear":
        return replace(base, strategy="linear")
    if method == "finetune":
        return replace(base, strategy="finetune")
    if method == "scratch":
        # no probe (random features), no discriminative rates, BatchNorm learns its own statistics;
        # patience >= fine-tuning's epochs: never fewer steps than fine-tuning
        return replace(
            base,
            strategy="finetune",
            weights="random",
            freeze_epochs=0,
            lr_mult=1.0,
            bn="trainable",
            epochs=max(SCRATCH_MAX_EPOCHS, finetune_epochs + 1),
            patience=max(SCRATCH_PATIENCE, finetune_epochs),
        )
    raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _fixed_splits(config: CompareConfig, modality: Modality) -> DataSplits:
    """Training pool, validation and a fixed test: --test, the data's own test split, or a held-out share."""
    options = dict(config.options or {})
    splits = modality.load_splits(TrainConfig(data=config.data, test=config.test, **options))
    task = task_of(splits)
    val = task.validation_subset(splits.val.labels, VAL_PER_CLASS, 0)
    splits = replace(splits, val=splits.val.subset(val))
    if splits.test is not None:
        return splits
    train_idx, test_idx = stratified_split(splits.train.labels, TEST_FRACTION, 0, str(config.data))
    return replace(splits, train=splits.train.subset(train_idx), test=splits.train.subset(test_idx))


def task_of(splits: DataSplits) -> Task:
    """The task the reader resolved (or named) for these splits."""
    return splits.task if isinstance(splits.task, Task) else get_task(splits.task, splits.classes)


def subset(pool: Labelled, per_class: int | None, seed: int, task: Task | None = None) -> Labelled:
    """The seeded training subset of one data size (None: all of `pool`), as the task counts sizes."""
    if per_class is None:
        return pool
    task = task or get_task("single")
    return pool.subset(task.training_subset(pool.labels, per_class, seed))


@dataclass(frozen=True)
class PlannedRun:
    """One method at one data size and seed, as the compare runs it."""

    name: str
    method: str
    per_class: int | None
    seed: int
    train: Labelled
    config: TrainConfig  # --time-budget: before the compare gives it its share

    @property
    def subset_key(self) -> tuple[str | None, int | None, int]:
        """The runs on the same subset: fine-tuning's seconds there bound scratch's."""
        return self.config.backbone, self.per_class, self.seed


class BudgetSplit:
    """--time-budget for the whole compare: RESERVE_SHARE (at least RESERVE_MIN_S) kept back, and
    each run, as it starts, an equal share of what is left for the runs still to do. A run's fixed
    costs can take it past a small budget (fine-tuning's timed steps, evaluation, writing): the
    most a method's runs went over is taken off its later runs' budgets, so they end near their
    share."""

    def __init__(self, total: float, runs: int, log: Log) -> None:
        self.reserve = max(RESERVE_MIN_S, RESERVE_SHARE * total)
        self.ends = _now() + total - self.reserve
        self.runs_left = runs
        self.over: dict[str, float] = {}  # method -> the most its runs went past their budget
        each = (total - self.reserve) / max(1, runs)
        if runs and each < MIN_RUN_BUDGET_S:
            runs_need = runs * MIN_RUN_BUDGET_S
            needed = math.ceil(max(runs_need / (1 - RESERVE_SHARE), runs_need + RESERVE_MIN_S))
            raise ConfigError(
                f"--time-budget {total:g} for a compare of {runs} runs gives each about {each:.0f}s, less "
                f"than the {MIN_RUN_BUDGET_S:.0f}s a run needs: give --time-budget {needed} or more, or "
                "fewer --labels-per-class, --methods or --seeds"
            )
        if runs:
            log(
                f"time budget {total:g}s for the whole compare: {self.reserve:.0f}s kept for its own work, "
                f"{total - self.reserve:.0f}s shared by its {runs} run(s) as they go, each an equal share "
                f"of what is left ({each:.0f}s for the first; what a run does not use goes to the later ones)"
            )

    def next_share(self, method: str) -> float:
        """The budget of a `method` run starting now: its share, less what the method's runs went
        over theirs (at least a second: runs that overran ate the rest)."""
        share = (self.ends - _now()) / max(1, self.runs_left)
        self.runs_left -= 1
        return round(max(1.0, share - self.over.get(method, 0.0)), 1)

    def ran(self, method: str, budget: float, seconds: float) -> None:
        self.over[method] = max(self.over.get(method, 0.0), seconds - budget, 0.0)


def _now() -> float:
    return time.perf_counter()


def planned_runs(
    config: CompareConfig, modality: Modality, splits: DataSplits, task: Task
) -> list[PlannedRun]:
    """Every run, in order: by backbone, size and seed, then METHODS' order (fine-tuning's time
    bounds scratch's)."""
    from .training.timing import finetune_epochs

    runs = []
    out = Path(config.out)
    for backbone in config.backbones:
        base = TrainConfig(data=config.data, backbone=backbone, **dict(config.options or {}))
        for per_class in config.labels_per_class:
            for seed in range(config.seeds):
                train = subset(splits.train, per_class, seed, task)
                batch = modality.defaults.strategies["finetune"].batch_size
                ft_epochs = finetune_epochs(base, modality, "finetune", len(train), base.batch_size or batch)
                for method in sorted(config.methods, key=_order):
                    name = f"{method}-{per_class or 'all'}-seed{seed}" + (
                        f"-{backbone.replace('/', '_')}" if backbone else ""
                    )
                    run_config = replace(
                        method_config(base, method, ft_epochs), seed=seed, out=str(out / name), overwrite=True
                    )
                    runs.append(PlannedRun(name, method, per_class, seed, train, run_config))
    return runs


def scratch_budget(finetune_seconds: float | None) -> float:
    """Scratch's seconds without --time-budget: fine-tuning's on the same subset (at least
    SCRATCH_MIN_BUDGET_S), or SCRATCH_DEFAULT_BUDGET_S without fine-tuning to match."""
    if finetune_seconds is None:
        return SCRATCH_DEFAULT_BUDGET_S
    return round(max(SCRATCH_MIN_BUDGET_S, finetune_seconds), 1)


def run_compare(config: CompareConfig, log: Log = print) -> dict[str, Any]:
    from .training.budget import Clock

    given = TrainConfig(data=config.data, test=config.test, **dict(config.options or {}))
    modality = detect(config.data, config=given).modality
    splits = _fixed_splits(config, modality)
    task = task_of(splits)
    out = Path(config.out)
    runs = planned_runs(config, modality, splits, task)
    total = Clock.budget_of(runs[0].config) if runs else None
    split = None
    if total is not None:  # the runs an earlier compare finished are not run (nor budgeted) again
        split = BudgetSplit(total, sum(_finished_row(r.config, any_budget=True) is None for r in runs), log)
    elif "scratch" in config.methods:
        log(
            f"scratch without --time-budget: each run within the seconds fine-tuning took on its subset "
            f"(at least {SCRATCH_MIN_BUDGET_S:.0f}s), or {SCRATCH_DEFAULT_BUDGET_S:.0f}s without fine-tuning"
        )
    rows: list[dict[str, Any]] = []
    finetune_seconds: dict[tuple, float] = {}
    for planned in runs:
        run_config = planned.config
        if split is None and planned.method == "scratch":
            budget = scratch_budget(finetune_seconds.get(planned.subset_key))
            run_config = replace(run_config, time_budget=budget)
        row = _finished_row(run_config, any_budget=split is not None)
        if row is not None:
            log(f"{_shown(planned, row, task)}: done before")
        else:
            if rows:  # what has finished so far stays readable if this run is stopped
                write_outputs(_summary(config, modality, splits, rows, task), out)
            if split is not None:
                run_config = replace(run_config, time_budget=split.next_share(planned.method))
            data = replace(splits, train=planned.train, skipped=[])
            row = _run_one(planned, run_config, data, modality, task)
            if split is not None:
                split.ran(planned.method, float(Clock.budget_of(run_config) or 0), row["seconds"])
            _record_row(run_config, row)
            log(
                f"{_shown(planned, row, task)}: test {task.monitor_name} {row[f'test_{task.monitor}']:.4f} "
                f"in {row['seconds']:.0f}s ({row['epochs']} epochs{_budget_shown(row)})"
            )
        rows.append(row)
        if planned.method == "finetune":
            finetune_seconds[planned.subset_key] = row["seconds"]
    summary = _summary(config, modality, splits, rows, task)
    write_outputs(summary, out)
    return summary


def _shown(planned: PlannedRun, row: dict[str, Any], task: Task) -> str:
    return f"{planned.method:9} {row['labels_per_class']:>6} {task.size_unit}, seed {planned.seed}"


def _budget_shown(row: dict[str, Any]) -> str:
    return f", budget {row['time_budget']:.0f}s" if row.get("time_budget") else ""


def _run_one(
    planned: PlannedRun, run_config: TrainConfig, data: DataSplits, modality: Modality, task: Task
) -> dict[str, Any]:
    """One run, and its row."""
    from .runner import run
    from .training.budget import Clock

    started = _now()
    result = run(run_config, log=lambda line: None, splits=data, modality=modality)
    report = result.report
    return {
        "method": planned.method,
        "backbone": report["backbone"]["name"],
        "labels_per_class": planned.per_class or task.size_reached(planned.train.labels),
        "all": planned.per_class is None,
        "seed": planned.seed,
        "train_examples": len(planned.train),
        f"test_{task.monitor}": report["test"][task.monitor],
        f"validation_{task.monitor}": report["validation"][task.monitor],
        "epochs": len(report["history"]),
        "time_budget": Clock.budget_of(run_config),
        "seconds": _now() - started,
        "run_dir": str(result.run_dir),
    }


def _summary(
    config: CompareConfig, modality: Modality, splits: DataSplits, rows: list[dict[str, Any]], task: Task
) -> dict[str, Any]:
    return {
        "data": str(config.data),
        "modality": modality.name,
        "task": task.name,  # its monitored metric is each row's test_<monitor> (higher is better)
        "test_examples": len(splits.test),
        "validation_examples": len(splits.val),
        "rows": list(rows),
    }


ROW_FILE = "compare_row.json"  # in each run folder: its row, and the exact config that made it


def _finished_row(run_config: TrainConfig, any_budget: bool = False) -> dict[str, Any] | None:
    """The row of a run that an earlier (interrupted or shorter) compare into the same --out
    finished with exactly this config: reused, so a compare continues where it stopped. With
    `any_budget` (a compare under --time-budget, whose shares differ from one compare to the next)
    the run's own time budget is not compared."""
    path = Path(str(run_config.out)) / ROW_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    wanted = json.loads(json.dumps(run_config.to_dict()))
    found = saved.get("config")
    if any_budget and isinstance(found, dict):
        found, wanted = {**found, "time_budget": None}, {**wanted, "time_budget": None}
    if found != wanted or not (path.parent / "graft.json").is_file():
        return None
    return saved.get("row")


def _record_row(run_config: TrainConfig, row: dict[str, Any]) -> None:
    from .bundle import write_json

    write_json(Path(str(run_config.out)) / ROW_FILE, {"config": run_config.to_dict(), "row": row})


def _mean_by(rows: Sequence[dict[str, Any]], key: tuple[str, ...], score: str) -> dict[tuple, list[float]]:
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in key), []).append(row[score])
    return groups


def _task(summary: dict[str, Any]) -> Task:
    return get_task(summary.get("task", "single"))  # compare.json before tasks: single-label


def _order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def write_outputs(summary: dict[str, Any], out: Path) -> None:
    from .bundle import write_json
    from .metrics import _pyplot

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", summary)
    rows, task = summary["rows"], _task(summary)
    score = f"test_{task.monitor}"
    plt = _pyplot()
    # one colour per method (and backbone) in both plots, in METHODS order
    series = sorted(_mean_by(rows, ("method", "backbone"), score), key=lambda k: (_order(k[0]), str(k[1])))
    colour = {key: f"C{i}" for i, key in enumerate(series)}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, backbone in series:
        mine = [r for r in rows if r["method"] == method and r["backbone"] == backbone]
        sizes = sorted({r["labels_per_class"] for r in mine})
        accs = [[r[score] for r in mine if r["labels_per_class"] == n] for n in sizes]
        label = method if len({r["backbone"] for r in rows}) == 1 else f"{method} ({backbone})"
        ax.errorbar(
            sizes,
            [np.mean(a) for a in accs],
            yerr=[np.std(a) for a in accs],
            marker="o",
            capsize=3,
            label=label,
            color=colour[(method, backbone)],
        )
    ax.set_xscale("log")
    # the sizes themselves as ticks (a log axis over 10-50 otherwise reads "2 x 10^1, 3 x 10^1")
    sizes = sorted({r["labels_per_class"] for r in rows})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel(task.size_axis)
    ax.set_ylabel(f"test {task.monitor_label}")
    ax.set_title("learning curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=120)
    plt.close(fig)
    _plot_against_time(plt, rows, series, colour, task, out / "accuracy_vs_time.png")
    write_compare_html(summary, out)


def _plot_against_time(
    plt: Any, rows: list[dict[str, Any]], series: list[tuple], colour: dict[tuple, str], task: Task, to: Path
) -> None:
    """The task's test metric against wall seconds, one point per run."""
    score = f"test_{task.monitor}"
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, backbone in series:
        mine = [r for r in rows if r["method"] == method and r["backbone"] == backbone]
        label = method if len({r["backbone"] for r in rows}) == 1 else f"{method} ({backbone})"
        ax.scatter(
            [r["seconds"] for r in mine],
            [r[score] for r in mine],
            label=label,
            color=colour[(method, backbone)],
        )
        for r in mine:
            ax.annotate(str(r["labels_per_class"]), (r["seconds"], r[score]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"wall seconds ({task.size_column.replace('/', ' per ')} beside each point)")
    ax.set_ylabel(f"test {task.monitor_label}")
    ax.set_title(f"{task.monitor_name} against time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(to, dpi=120)
    plt.close(fig)


def write_compare_html(summary: dict[str, Any], out: Path) -> None:
    from .bundle import atomic_write
    from .report_html import STYLE, _e, _table, embed_png

    rows, task = summary["rows"], _task(summary)
    name = task.monitor_name
    columns = [task.size_column, "seed", f"test {name}", f"validation {name}", "epochs", "seconds"]
    table = _table(
        ["method", "backbone", *columns],
        [
            [
                r["method"],
                r["backbone"],
                r["labels_per_class"],
                r["seed"],
                f"{r[f'test_{task.monitor}']:.4f}",
                f"{r[f'validation_{task.monitor}']:.4f}",
                r["epochs"],
                f"{r['seconds']:.0f}",
            ]  # fmt: skip
            for r in rows
        ],
        2,
    )
    heading = name[:1].upper() + name[1:] if name[1:2].islower() else name  # "Accuracy", "mAP", "R2"
    direction = "" if name == task.monitor_label else f" · {_e(task.monitor_label)}"
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>graft compare</title>
<style>{STYLE}</style></head><body><h1>graft compare: {_e(summary["data"])}</h1>
<p class="muted">{_e(summary["modality"])} · {summary["test_examples"]} test examples (fixed) ·
{summary["validation_examples"]} validation examples{direction}</p>
<h2>Learning curve</h2>{embed_png(out / "learning_curve.png", "learning curve")}
<h2>{heading} against time</h2>{embed_png(out / "accuracy_vs_time.png", f"{name} against time")}
<h2>Every run</h2>{table}</body></html>
"""
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """Mean test score (the task's monitored metric) per method and data size, for `--json`."""
    score = f"test_{_task(summary).monitor}"
    means = _mean_by(summary["rows"], ("method", "labels_per_class"), score)
    return {
        "test_examples": summary["test_examples"],
        "results": [
            {"method": m, "labels_per_class": n, score: float(np.mean(a)), "seeds": len(a)}
            for (m, n), a in means.items()
        ],
    }


def load_summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "compare.json").read_text())
