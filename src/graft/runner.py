"""One training run, start to finish: resolve the plan, call the recipe, write the report and bundle.

Nothing here reads the command line or knows one modality from another: the modality (detected
from the data, or given with in-memory splits) supplies everything input-specific.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from . import pick
from .backbones import Backbone, create_backbone
from .config import Plan, TrainConfig
from .data.splits import DataSplits
from .distributed import ranks
from .distributed.launcher import launch
from .errors import ConfigError
from .heads import GraftModel, HeadSpec, build_head
from .modalities import Modality, detect, get_modality
from .report import build_report, save_run
from .runtime.device import resolve_device
from .runtime.precision import Precision, current_precision, resolve_precision, use_precision
from .tasks import Task, get_task
from .training import auto, recipes, sizing, subset
from .training.budget import Clock
from .training.evaluation import evaluate_test
from .training.job import Job, TrainResult
from .training.keep import cpu_weights
from .training.timing import finetune_epochs
from .training.trackers import Tracking, tracker_names

Log = Callable[[str], None]


@dataclass
class RunResult:
    run_dir: Path
    report: dict[str, Any]
    model: GraftModel
    job: Job


def default_run_dir(backbone: str, strategy: str, data_name: str) -> Path:
    """runs/<data>-<backbone>-<strategy>-<time>, never an existing folder (several fits a second:
    scikit-learn's cross-validation)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{data_name}-{backbone.replace('/', '_')}-{strategy}-{stamp}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)  # claimed: a parallel fit in the same second takes the next name
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


RUN_MARKERS = ("graft.json", "checkpoint.json")  # a folder holding either is a run's folder
MIN_FREE_BYTES = 64 << 20  # a bundle of a small backbone, its report and a checkpoint


def preflight(config: TrainConfig) -> None:
    """Before any compute: refuse an --out that holds another run (unless --overwrite or
    --resume) or that cannot be written; one line each, naming the fix."""
    if config.overwrite and config.resume:
        raise ConfigError("--overwrite replaces the run in --out and --resume continues it: pass one")
    if not config.out:
        return  # a new, time-stamped folder under runs/
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: choose another --out")
    held = [name for name in RUN_MARKERS if (out / name).is_file()]
    if held and not (config.overwrite or config.resume):
        raise ConfigError(
            f"--out {out} already holds a run ({held[0]}): pass --overwrite to replace it, "
            "--resume to continue it, or another --out"
        )
    if config.resume and _finished(out):
        raise ConfigError(
            f"--resume: {out} holds a finished run (graft.json is newer than any checkpoint): nothing "
            "to continue, and nothing was changed; pass --overwrite to train it again, or another --out"
        )
    if config.resume and not (out / "checkpoint.json").is_file():
        warnings.warn(f"--resume: {out} holds no checkpoint, so training starts from the start", stacklevel=2)
    _check_writable(out)


def _finished(out: Path) -> bool:
    """A run folder whose bundle was written after its last checkpoint (a checkpoint is removed
    once the bundle is written, unless --keep-checkpoint)."""
    bundle, checkpoint = out / "graft.json", out / "checkpoint.json"
    if not bundle.is_file():
        return False
    return not checkpoint.is_file() or bundle.stat().st_mtime_ns >= checkpoint.stat().st_mtime_ns


def _check_writable(out: Path) -> None:
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder: choose another --out")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(f"--out {out} cannot be written ({err.strerror}): choose another --out") from None
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"--out {out}: only {free / 1e6:.0f} MB free on its disk; free some space or choose another --out"
        )


def run(
    config: TrainConfig, log: Log = print, splits: DataSplits | None = None, modality: Modality | None = None
) -> RunResult:
    """Train, evaluate and save a bundle. `splits` (with their `modality`) let callers (the demo,
    the Python API, tests) pass data in memory."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    config.check()
    config.check_extras()  # a tracker's missing extra: said now, not after training
    if launches_processes(config):
        raise ConfigError(
            f"--devices {config.devices} starts processes: use graft train, graft.Classifier(...).fit "
            "or graft.runner.run_processes"
        )
    ranks.check_devices(config.devices)
    if not ranks.is_main():  # one of several processes: rank 0 tells
        log = _silent
        warnings.simplefilter("ignore")
    preflight(config)
    ready = prepare(config, log, splits, modality, started)
    with use_precision(ready.precision):
        return _run_on(config, log, ready, started)


@dataclass
class Prepared:
    """What training and the LR range test both start from."""

    modality: Modality
    device: torch.device
    precision: Precision
    backbone: Backbone
    splits: DataSplits
    prep: Any  # the modality's preprocessing (image sizes and normalisation, text lengths)
    picked: Any = None  # `--backbone auto`'s `pick.Picked`: its table, choice and features


def prepare(
    config: TrainConfig,
    log: Log = print,
    splits: DataSplits | None = None,
    modality: Modality | None = None,
    started: float | None = None,
) -> Prepared:
    """The one setup of `graft train` and `graft lr-find`: the modality (detected or given) checks
    the config, the device and precision are decided, the backbone is built (first: a missing
    download fails in seconds, before a long scan of the data; `--backbone auto`: picked on the
    data, within its share of the budget from `started`), the data read, the preprocessing
    resolved, and the backbone moved to the device."""
    if modality is None:
        if splits is not None:
            raise ConfigError("in-memory splits need their modality (graft.modalities.get_modality)")
        modality = detect(config.data, config=config).modality
    modality.check(config)
    device = ranks.setup(resolve_device(config.device))  # under a launcher: join the others
    precision = resolve_precision(config.precision, device)
    picked = None
    if config.backbone == pick.AUTO:
        splits = splits if splits is not None else modality.load_splits(config)
        clock = Clock.start(config, time.perf_counter() if started is None else started)
        with use_precision(precision):  # the features' cache key holds the precision
            picked = pick.pick_for_training(config, modality, splits, clock.part(pick.PICK_SHARE), log)
        backbone = picked.backbone
        torch.manual_seed(config.seed)  # training starts as a run with `--backbone NAME` does
    else:
        backbone = _backbone_for(config, modality)
        splits = splits if splits is not None else modality.load_splits(config)
    _report_skipped(splits, modality, log)
    prep = modality.preprocessing(config, backbone, splits)
    backbone.body.to(device)
    return Prepared(modality, device, precision, backbone, splits, prep, picked)


def _run_on(config: TrainConfig, log: Log, ready: Prepared, started: float) -> RunResult:
    """`run` once everything is prepared, at the resolved precision."""
    modality, backbone, splits, prep = ready.modality, ready.backbone, ready.splits, ready.prep
    adapted = _adapt(config, modality, backbone, prep, splits, log) if config.adapt_lm else None
    freeze(config, modality, backbone, log)
    task = fitted_task(config, splits)
    tracking = Tracking(tracker_names(config))  # rank 0's, with --log-to
    with tracking.failing():  # a run that raises ends its tracker runs as failed
        choices = modality.encoding_choices(config, prep)
        if choices and config.resume:
            raise ConfigError(
                "--resume continues one training, and --pair-encoding auto trains two: pass "
                "--pair-encoding bi or cross (report.json preprocessing.pair_encoding of a finished run)"
            )
        clock = Clock.start(config, started)  # the one clock of --time-budget, for every step
        if choices:
            job, trained = _best_encoding(config, log, ready, clock, task, tracking, choices)
        else:
            job, trained = _train(_job(config, log, ready, prep, clock, task, tracking))
        job.model.eval()
        report = build_report(job, trained, time.perf_counter() - started, adapted)
        if ranks.is_main():  # several processes: rank 0 writes the run folder
            save_run(job, report)
            for path in trained.scratch_files:  # the bundle holds the kept weights now
                path.unlink(missing_ok=True)
        tracking.finish(job.plan, report)  # MLflow takes the run folder as it is now
    return RunResult(job.run_dir, report, job.model, job)


def _job(
    config: TrainConfig, log: Log, ready: Prepared, prep: Any, clock: Clock, task: Task, tracking: Tracking
) -> Job:
    """A job for the backbone as its body is set now: a new head for its feature width, the plan."""
    modality, backbone, splits, device = ready.modality, ready.backbone, ready.splits, ready.device
    head = build_head(HeadSpec.parse(config.head, config.dropout), backbone.num_features, task.outputs())
    model = modality.prepare_model(GraftModel(backbone.body, head, mirror=modality.mirror), device)
    plan = _plan(config, modality, backbone, prep, splits, device)
    out = Path(config.out or ".")
    job = Job(config, plan, modality, backbone, prep, model, splits, device, out, clock, log, task)
    picked = ready.picked
    if picked is not None:  # --backbone auto: its table for the report, its features not read twice
        job = replace(job, known_features=picked.known, backbone_pick=picked.result)
    return replace(job, tracking=tracking)


@dataclass
class _Tried:
    """One encoding's run under `_best_encoding`."""

    encoding: str
    job: Job
    trained: TrainResult
    body: dict[str, torch.Tensor] | None  # its trained body, while another encoding trains
    score: tuple[str, float, float]  # the task's ranking: metric, validation value, standard error


def _best_encoding(
    config: TrainConfig,
    log: Log,
    ready: Prepared,
    clock: Clock,
    task: Task,
    tracking: Tracking,
    choices: tuple[str, ...],
) -> tuple[Job, TrainResult]:
    """Each encoding the modality offers (a sentence pair as a cross- and a bi-encoder) trained as a
    whole run from the same pretrained body, with an equal share of a --time-budget; the best on
    validation is kept (the task's `ranking`: Spearman for a score), and a later choice only when it
    beats the first by more than one standard error: the one-standard-error rule of model selection,
    the modality listing its simplest encoding first (a bi-encoder before a cross-encoder)."""
    body = ready.backbone.body
    pretrained = cpu_weights(body)
    tried: list[_Tried] = []
    for i, encoding in enumerate(choices):
        if i:  # as a run with this encoding alone starts: the pretrained body, the seed's random state
            body.load_state_dict(pretrained)
            torch.manual_seed(config.seed)
        prep = ready.modality.use_encoding(config, ready.backbone, ready.prep, ready.splits, encoding)
        share = clock.share(len(choices) - i)  # an equal share of what is left
        log(f"pair encoding auto: training the {encoding}-encoder ({i + 1} of {len(choices)})")
        job = _job(replace(config, time_budget=share.seconds), log, ready, prep, share, task, tracking)
        job = replace(job, splits=replace(job.splits, test=None))  # the kept encoding alone is tested, once
        job, trained = _train(job, tried[0].job.run_dir if tried else None)
        score = job.task.ranking(trained.val, len(ready.splits.val))
        last = i == len(choices) - 1
        tried.append(_Tried(encoding, job, trained, None if last else cpu_weights(body), score))
    return _restore_encoding(config, ready, tried, decide_encoding(tried), log)


def decide_encoding(tried: list[_Tried]) -> int:
    """The first encoding, unless a later one beats it by more than one standard error: rank 0's
    choice, for every process."""
    first = tried[0].score
    best = max(range(len(tried)), key=lambda i: (tried[i].score[1], -i))
    return ranks.from_main(best if tried[best].score[1] > first[1] + first[2] else 0)


def _restore_encoding(
    config: TrainConfig, ready: Prepared, tried: list[_Tried], kept: int, log: Log
) -> tuple[Job, TrainResult]:
    """The kept encoding's body, weights and job; the others' scratch files removed."""
    chosen = tried[kept]
    metric = chosen.score[0]
    shown = ", ".join(f"{t.encoding} {t.score[1]:.4f}" for t in tried)
    line = (
        f"pair encoding auto, validation {metric}: {shown}; keeps the {chosen.encoding}-encoder "
        f"(another than the first only above it by more than one standard error, {tried[0].score[2]:.4f})"
    )
    log(line)
    if chosen.body is not None:
        ready.backbone.body.load_state_dict(chosen.body)
    ready.modality.apply_preprocessing(ready.backbone, chosen.job.prep)  # as its probe left the body
    keep = set(chosen.trained.scratch_files)
    for other in tried:
        for path in other.trained.scratch_files:
            if path not in keep:
                path.unlink(missing_ok=True)
    plan = chosen.job.plan.with_note(line)
    splits = replace(chosen.job.splits, test=ready.splits.test)
    job = replace(chosen.job, config=config, plan=plan, splits=splits)
    evaluate_test(job, chosen.trained)
    return job, chosen.trained


def _train(job: Job, run_dir: Path | None = None) -> tuple[Job, TrainResult]:
    """The data fitted to the time budget, the strategy chosen (`auto`), the run folder named (or
    `run_dir`, an earlier encoding's), the recipe run: the job as the recipe's outcome leaves it."""
    config = job.config
    job = subset.fit_data_to_budget(job, config.strategy)  # under --time-budget: data read in it
    probe = None
    if config.strategy == "auto":
        choice = auto.choose(job)
        job.log(f"strategy auto -> {choice.strategy}: {choice.reason}")
        probe = choice.probe
        job = job.after(probe) if probe is not None else job
        job = replace(job, plan=_resolved_plan(job, choice))
    job = replace(job, run_dir=decide_run_dir(job, run_dir))
    if run_dir is None:
        job.tracking.open(job.run_dir, config)  # what the probe logged so far goes in now
    outcome = recipes.train(job, probe)
    return job.after(outcome), outcome.result


def decide_run_dir(job: Job, run_dir: Path | None) -> Path:
    """The run folder: `run_dir` (an earlier encoding's), --out, or a new one that rank 0 claims
    and every process takes."""
    named = run_dir or (Path(job.config.out) if job.config.out else None)
    if named is None and ranks.is_main():  # rank 0 claims the folder; the others take its name
        named = default_run_dir(job.backbone.name, job.plan.strategy, job.splits.name)
    return ranks.from_main(named)


def fitted_task(config: TrainConfig, splits: DataSplits) -> Task:
    """The data's task (graft.tasks), fitted to its training labels (class weights, target scales)."""
    task = splits.task if isinstance(splits.task, Task) else get_task(splits.task, splits.classes)
    return task.fit(splits.train.labels, {"class_weights": config.class_weights})


def launches_processes(config: TrainConfig) -> bool:
    """Whether the run is `--devices N` processes that this process has to start."""
    return config.devices > 1 and not ranks.launched()


def run_processes(
    config: TrainConfig, log: Log = print, splits: DataSplits | None = None, modality: Modality | None = None
) -> tuple[Path, dict[str, Any]]:
    """`--devices N`: `run` in N data-parallel processes on this machine (graft.distributed.launcher.launch);
    rank 0 writes the run folder and its lines reach `log`. Returns the folder and its report."""
    config.check()
    config.check_extras()
    preflight(config)  # once, here, before any process starts
    name = modality.name if modality is not None else None
    device = resolve_device(config.device)
    run_dir, report = launch(_run_process, (config, splits, name), config.devices, device, log)
    return Path(run_dir), report


def _run_process(log: Log, config: TrainConfig, splits: DataSplits | None, modality: str | None) -> Any:
    """One of run_processes' processes."""
    result = run(config, log, splits, get_modality(modality) if modality else None)
    return (str(result.run_dir), result.report) if ranks.is_main() else None


def _silent(line: str) -> None:
    pass


def _backbone_for(config: TrainConfig, modality: Modality) -> Backbone:
    name = config.backbone or modality.default_backbone
    if config.weights == "random":  # from scratch: the architecture alone (graft compare's baseline)
        backbone = create_backbone(name, pretrained=False)
    else:
        backbone = create_backbone(name, weights=config.weights)
    if backbone.modality != modality.name:
        raise ConfigError(
            f"--backbone {name} is a {backbone.modality} model but {config.data} holds "
            f"{modality.unit}; `graft backbones` lists both kinds"
        )
    return backbone


def _report_skipped(splits: DataSplits, modality: Modality, log: Log) -> None:
    if splits.skipped:
        first = splits.skipped[0]
        log(
            f"skipped {len(splits.skipped)} unusable input(s) (first: {first.path}: {first.reason}); "
            "report.json lists them all under skipped_files"
        )


def _adapt(
    config: TrainConfig, modality: Modality, backbone: Backbone, prep: Any, splits: DataSplits, log: Log
) -> dict:
    """--adapt-lm: masked-LM epochs on the modality's adaptation corpus before the classifier."""
    from .training.adapt_lm import adapt_language_model

    texts = modality.adaptation_corpus(config, splits)
    return adapt_language_model(backbone, texts, config.adapt_lm, prep.max_length, seed=config.seed, log=log)


def freeze(config: TrainConfig, modality: Modality, backbone: Backbone, log: Log) -> None:
    """Freeze what fine-tuning leaves alone, before any step is timed or taken: the layer groups
    below the top --train-groups, and what the modality keeps frozen (a text encoder's vocabulary)."""
    trained = backbone.freeze_below(config.train_groups, also=modality.extra_frozen(backbone))
    if config.train_groups is not None and config.strategy != "linear" and trained:
        log(
            f"fine-tuning trains the top {len(trained)} of {len(backbone.groups)} layer groups "
            f"({trained[0]} .. {trained[-1]}); the groups below stay frozen"
        )


def _plan(
    config: TrainConfig,
    modality: Modality,
    backbone: Backbone,
    prep: Any,
    splits: DataSplits,
    device: torch.device,
) -> Plan:
    strategy = "finetune" if config.strategy == "auto" else config.strategy  # auto: resolved by choose()
    plan = Plan(
        modality=modality.name,
        backbone=backbone.name,
        strategy=strategy,
        strategy_reason="given with --strategy",
        epochs=0,
        batch_size=0,
        lr=0.0,
        freeze_epochs=0,
        device=str(device),
        precision=current_precision().name,
        precision_reason=current_precision().reason,
        preprocessing=prep.to_dict(),
    )
    return with_defaults(plan, config, modality, len(splits.train), device)


def with_defaults(
    plan: Plan, config: TrainConfig, modality: Modality, n_train: int, device: torch.device
) -> Plan:
    """The plan with its strategy's defaults for what the user left unset; a fine-tuning batch
    sized for the device (`sizing.device_batch`)."""
    defaults = modality.defaults.strategies[plan.strategy]
    batch = sizing.BatchChoice(config.batch_size or defaults.batch_size, 1.0)
    if config.batch_size is None and plan.strategy != "linear":
        batch = sizing.device_batch(defaults.batch_size, n_train, device)
    notes = [batch.note] if batch.note else []
    epochs = config.epochs or defaults.epochs
    if plan.strategy != "linear":
        epochs = finetune_epochs(config, modality, plan.strategy, n_train, batch.batch_size)
        if config.epochs is None and epochs > defaults.epochs:
            notes.append(
                f"{epochs} epochs instead of the default {defaults.epochs}: at least "
                f"{modality.defaults.min_finetune_steps} updates on {n_train} {modality.unit}"
            )
    return replace(
        plan,
        batch_size=batch.batch_size,
        lr=config.lr or defaults.lr * batch.lr_factor,
        freeze_epochs=defaults.freeze_epochs if config.freeze_epochs is None else config.freeze_epochs,
        epochs=epochs,
        notes=(*plan.notes, *notes),
    )


def _resolved_plan(job: Job, choice: auto.Choice) -> Plan:
    """The job's plan for `auto`'s choice: its strategy and that strategy's defaults."""
    plan = job.plan
    # the probe's own notes stay, and always what --time-budget did to the data
    budget_note = (job.budget_subset["note"],) if job.budget_subset else ()
    notes = plan.notes if choice.probe is not None else budget_note
    chosen = replace(plan, strategy=choice.strategy, strategy_reason=choice.reason, notes=notes)
    plan = with_defaults(chosen, job.config, job.modality, len(job.splits.train), job.device)
    if choice.epochs is not None:
        plan = replace(plan, epochs=choice.epochs)
    if choice.probe is not None and choice.strategy == "linear":
        plan = replace(plan, epochs=len(choice.probe.result.history))
    return plan
