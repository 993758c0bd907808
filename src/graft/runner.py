"""One training run, start to finish: data -> backbone + head -> strategy -> loop -> report -> bundle.

`cli.py` turns arguments into a TrainConfig and calls `run`; nothing here reads the command line.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import strategies
from .backbones import Backbone, Preprocessing, create_backbone, default_backbone
from .bundle import save_bundle, write_json
from .config import TrainConfig, resolved
from .data.images import SkippedFile
from .data.sources import DataSplits, Labelled, load_image_data
from .data.text import is_text_data, load_text_data, split_columns
from .features import Features, cached_features, fingerprint_sources
from .finetune import estimate_epoch_seconds, loop_config, train_finetune
from .heads import GraftModel, HeadSpec, build_head
from .metrics import classification_metrics, plot_confusion, plot_curves, validation_row
from .text import default_text_epochs, estimate_text_epoch_seconds, length_from_data, train_text
from .train import epoch_line, fit, require_every_class

Log = Callable[[str], None]
MIN_HEAD_STEPS = 500


@dataclass
class RunResult:
    run_dir: Path
    report: dict[str, Any]
    model: GraftModel


def default_run_dir(config: TrainConfig, data_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{data_name}-{config.backbone.replace('/', '_')}-{config.strategy}-{stamp}"


def run(config: TrainConfig, log: Log = print, splits: DataSplits | None = None) -> RunResult:
    """Train, evaluate and save a bundle. `splits` lets callers (the demo, tests) pass data in memory."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    _check_options(config)
    modality = config.modality if splits is not None else data_modality(config.data)
    config = replace(config, modality=modality, backbone=config.backbone or default_backbone(modality))
    # the backbone first: a missing download fails in seconds, before a long scan of the data
    backbone = _backbone_for(config)
    if splits is None:
        splits = _load_data(config)
    prep = _preprocessing(config, backbone, splits)
    adapted = _adapt(config, backbone, prep, splits, log) if config.adapt_lm else None
    _freeze(config, backbone, log)
    head = build_head(HeadSpec.parse(config.head, config.dropout), backbone.num_features, len(splits.classes))
    model = GraftModel(backbone.body, head)
    choice = None
    if config.strategy == "auto":
        config, choice = _choose(config, backbone, model, splits, prep, log)
    run_dir = Path(config.out) if config.out else default_run_dir(config, splits.name)
    if config.strategy == "linear":
        trained = _train_linear(config, backbone, prep, head, splits, log)
    else:
        probe = probe_head(config, backbone, prep, head, splits, log) if _probes_first(config) else None
        train = train_text if modality == "text" else train_finetune
        probed = probe is not None
        trained = train(config, backbone, prep, model, splits, run_dir, log, started, probed=probed)
        if probe is not None:
            _merge_probe(trained, probe)
    model.eval()
    report = _report(config, backbone, prep, splits, trained, time.perf_counter() - started, run_dir)
    report["strategy_choice"] = choice or {"chosen": config.strategy, "reason": "given with --strategy"}
    report["adapt_lm"] = adapted
    _save(run_dir, model, report, splits.classes, trained["history"], backbone)
    return RunResult(run_dir, report, model)


def _check_options(config: TrainConfig) -> None:
    if config.strategy not in (*strategies.STRATEGIES, "auto"):
        raise ValueError(
            f"unknown strategy {config.strategy!r}; choose one of {', '.join(strategies.STRATEGIES)}"
        )
    if config.train_groups is not None and config.train_groups < 1:
        raise ValueError("--train-groups must be at least 1; for the head alone use --strategy linear")
    if config.resume and not config.out:
        raise ValueError("--resume needs the --out folder of the interrupted run")


def _backbone_for(config: TrainConfig) -> Backbone:
    backbone = create_backbone(config.backbone, weights=config.weights)
    if backbone.modality != config.modality:
        raise ValueError(
            f"--backbone {config.backbone} is a {backbone.modality} model but {config.data} holds "
            f"{config.modality}s; `graft backbones` lists both kinds"
        )
    if config.adapt_lm and config.modality != "text":
        raise ValueError("--adapt-lm is for text backbones (masked-LM adaptation of the encoder)")
    return backbone


def data_modality(data: str) -> str:
    return "text" if is_text_data(data) else "image"


def _load_data(config: TrainConfig) -> DataSplits:
    if config.modality == "text":
        return load_text_data(
            config.data,
            config.val,
            config.test,
            split_columns(config.text_column),
            config.label_column,
            config.val_fraction,
            config.seed,
        )
    return load_image_data(
        config.data, config.val, config.test, config.val_fraction, config.seed, config.data_root
    )


def _preprocessing(config: TrainConfig, backbone: Backbone, splits: DataSplits) -> Any:
    if backbone.modality == "image":
        return backbone.preprocessing.with_size(config.image_size)
    prep = backbone.preprocessing.with_pooling(config.pooling)
    backbone.body.pooling = prep.pooling
    if config.max_length:
        return prep.with_length(config.max_length)
    return length_from_data(backbone.tokenizer, splits.train.sources, prep)


def _adapt(config: TrainConfig, backbone: Backbone, prep: Any, splits: DataSplits, log: Log) -> dict:
    """--adapt-lm: masked-LM epochs on the training texts (never validation or test) and --unlabelled."""
    from .adapt import adapt_language_model
    from .data.text import read_text_column

    texts = list(splits.train.sources)
    if config.unlabelled:
        texts += read_text_column(config.unlabelled, config.text_column)
    log(f"adapt-lm: {config.adapt_lm} masked-LM epoch(s) on {len(texts)} texts")
    return adapt_language_model(backbone, texts, config.adapt_lm, prep.max_length, seed=config.seed, log=log)


def _freeze(config: TrainConfig, backbone: Backbone, log: Log) -> None:
    """Freeze what fine-tuning leaves alone, before any step is timed or taken: the layer groups
    below the top --train-groups, and a text encoder's token-embedding matrix. That matrix is
    half of a small encoder's weights (and of each optimizer step), only the rows of words in a
    batch get gradients, and weight decay would shrink all the others."""
    vocab = [backbone.body.encoder.get_input_embeddings().weight] if backbone.modality == "text" else []
    trained = backbone.freeze_below(config.train_groups, also=vocab)
    if config.train_groups is not None and config.strategy != "linear" and trained:
        log(
            f"fine-tuning trains the top {len(trained)} of {len(backbone.groups)} layer groups "
            f"({trained[0]} .. {trained[-1]}); the groups below stay frozen"
        )


def _choose(
    config: TrainConfig, backbone: Backbone, model: GraftModel, splits: DataSplits, prep: Any, log: Log
) -> tuple[TrainConfig, dict[str, str]]:
    per_class = len(splits.train) / len(splits.classes)
    finetune = replace(config, strategy="finetune")
    default_epochs, batch_size = resolved(finetune, "epochs"), resolved(finetune, "batch_size")
    if config.modality == "text":
        default_epochs = default_text_epochs(finetune, len(splits.train), batch_size)
    epochs = strategies.auto_epochs(len(splits.train), default_epochs)
    epoch_seconds = 0.0
    if per_class >= strategies.MIN_PER_CLASS_TO_FINETUNE:  # only then is the timing worth measuring
        if config.modality == "text":
            texts = splits.train.sources
            epoch_seconds = estimate_text_epoch_seconds(model, backbone.tokenizer, texts, prep, batch_size)
        else:
            epoch_seconds = estimate_epoch_seconds(model, splits.train, prep, {"batch_size": batch_size})
    chosen, reason = strategies.choose_strategy(per_class, epoch_seconds, config.time_budget, epochs)
    log(f"strategy auto -> {chosen}: {reason}")
    config = replace(config, strategy=chosen)
    if chosen == "finetune" and config.time_budget is None and config.epochs is None:
        # without --time-budget, as many of the default epochs as the 15-minute default allows
        affordable = int(strategies.DEFAULT_AUTO_BUDGET_S // max(epoch_seconds, 1e-9))
        config = replace(config, epochs=max(epochs, min(default_epochs, affordable)))
    return config, {"chosen": chosen, "reason": reason}


# --------------------------------------------------------------------------- linear strategy


def _features_for(
    backbone: Backbone,
    data: Labelled,
    prep: Preprocessing,
    config: TrainConfig,
    desc: str,
    log: Log,
) -> Features:
    feats = cached_features(backbone, data.sources, prep, flip=config.flip_features, batch_size=64, desc=desc)
    if feats.cached:
        log(f"{desc}: {len(data)} feature vectors from the cache")
    else:
        log(
            f"{desc}: extracted {len(data)} feature vectors in {feats.seconds:.1f}s "
            f"({len(data) / max(feats.seconds, 1e-9):.0f} images/s)"
        )
    return feats


def _usable(feats: Features, data: Labelled, skipped: list[SkippedFile]) -> tuple[torch.Tensor, torch.Tensor]:
    for index, reason in sorted(feats.failures.items()):
        warnings.warn(f"skipping unreadable image: {reason}", stacklevel=2)
        skipped.append(SkippedFile(str(data.sources[index]), reason))
    return torch.from_numpy(feats.values[feats.ok]), torch.from_numpy(data.labels[feats.ok])


def _feature_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int
) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

    return batches


@torch.inference_mode()
def predict_features(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    head.eval()
    return torch.cat([head(x[i : i + 4096]) for i in range(0, len(x), 4096)]) if len(x) else torch.empty(0)


def _evaluator(x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...]) -> Callable[[nn.Module], dict]:
    def evaluate(head: nn.Module) -> dict[str, float]:
        logits = predict_features(head, x)
        return validation_row(logits, y, classes)

    return evaluate


def _train_linear(
    config: TrainConfig,
    backbone: Backbone,
    prep: Preprocessing,
    head: nn.Sequential,
    splits: DataSplits,
    log: Log,
    with_test: bool = True,
) -> dict[str, Any]:
    # one cache entry for train+val together, so another --seed or --val-fraction still hits it
    both = Labelled(
        [*splits.train.sources, *splits.val.sources],
        np.concatenate([splits.train.labels, splits.val.labels]),
    )
    feats = _features_for(backbone, both, prep, config, "train+val", log)
    n_train = len(splits.train)
    in_train = np.arange(len(both)) < n_train
    x_train, y_train = _usable(_rows(feats, in_train), splits.train, splits.skipped)
    x_val, y_val = _usable(_rows(feats, ~in_train), splits.val, splits.skipped)
    require_every_class(y_train.tolist(), splits.classes)
    head[0].fit(x_train)
    batch_size, epochs = head_schedule(config, len(y_train))
    loop = loop_config(config, epochs, y_train, len(splits.classes))
    started = time.perf_counter()
    # a small head is too little work to split: extra threads only spin-wait (10x slower on busy cores)
    small = sum(p.numel() for p in head.parameters()) < 1_000_000
    with _threads(1 if small else torch.get_num_threads()):
        history = fit(
            head,
            [(strategies.HEAD, list(head.parameters()))],
            strategies.make_strategy("linear", [n for n, _ in backbone.groups]),
            _feature_batches(x_train, y_train, batch_size, config.seed),
            steps_per_epoch=-(-len(y_train) // batch_size),
            evaluate=_evaluator(x_val, y_val, splits.classes),
            cfg=loop,
            log=lambda row: log(epoch_line(row, loop.epochs)),
        )
    result: dict[str, Any] = {
        "history": history,
        "train_seconds": time.perf_counter() - started,
        "extract_seconds": feats.seconds,
        "cache_hit": feats.cached,
        "n_train": len(y_train),
        "val": _final_metrics(head, x_val, y_val, splits.classes),
    }
    if splits.test is not None and with_test:
        test_feats = _features_for(backbone, splits.test, prep, config, "test", log)
        x_test, y_test = _usable(test_feats, splits.test, splits.skipped)
        result["test"] = _final_metrics(head, x_test, y_test, splits.classes)
        result["extract_seconds"] += test_feats.seconds
    return result


def _probes_first(config: TrainConfig) -> bool:
    """Head-only epochs can be a probe on cached features when they would see exactly those
    features: the body frozen, BatchNorm statistics included (--bn trainable adapts them)."""
    return config.strategy == "finetune" and resolved(config, "freeze_epochs") > 0 and config.bn == "frozen"


def probe_head(
    config: TrainConfig, backbone: Backbone, prep: Any, head: nn.Sequential, splits: DataSplits, log: Log
) -> dict[str, Any]:
    """finetune's head-only phase as a linear probe on cached features (LP-FT, Kumar et al. 2022):
    the head converges in seconds instead of epochs of backbone passes, and fine-tuning then starts
    from a trained head, whose small gradients distort the pretrained features less."""
    probe = replace(config, strategy="linear", epochs=None, lr=None, batch_size=None, patience=None)

    def quiet(line: str) -> None:  # the probe's own epoch rows would read as fine-tuning epochs
        if not line.startswith("epoch "):
            log(line)

    result = _train_linear(probe, backbone, prep, head, splits, quiet, with_test=False)
    last = result["history"][-1]
    log(
        f"head-only phase, a linear probe on cached features: val_acc {last['val_accuracy']:.4f} "
        f"after {len(result['history'])} epochs ({result['train_seconds']:.1f}s)"
    )
    return result


def _merge_probe(trained: dict[str, Any], probe: dict[str, Any]) -> None:
    """The probe becomes epoch 0 of the history and its time counts in the report."""
    last = probe["history"][-1]
    row = {**last, "epoch": 0, "stage": [strategies.HEAD], "lr": 0.0}
    row["train_seconds"] = probe["train_seconds"] + probe["extract_seconds"]
    trained["history"] = [row, *trained["history"]]
    trained["extract_seconds"] += probe["extract_seconds"]
    trained["train_seconds"] += probe["train_seconds"]
    trained["cache_hit"] = probe["cache_hit"]


@contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def head_schedule(config: TrainConfig, n_train: int) -> tuple[int, int]:
    """Batch size and epochs for a head on cached features. Epochs alone under-train small data
    (100 images at batch 256 is one step an epoch), so unless --epochs is given the schedule has at
    least MIN_HEAD_STEPS steps, with batches of at most a quarter of the data; both cost milliseconds."""
    batch_size = resolved(config, "batch_size")
    if config.batch_size is None:
        batch_size = min(batch_size, max(8, n_train // 4))
    epochs = resolved(config, "epochs")
    if config.epochs is None:
        epochs = max(epochs, math.ceil(MIN_HEAD_STEPS / math.ceil(n_train / batch_size)))
    return batch_size, epochs


def _rows(feats: Features, keep: np.ndarray) -> Features:
    index = np.flatnonzero(keep)
    local = {int(np.searchsorted(index, i)): r for i, r in feats.failures.items() if keep[i]}
    return Features(feats.values[keep], feats.ok[keep], local, feats.seconds, feats.cached)


def _final_metrics(head: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...]) -> dict:
    return classification_metrics(y.numpy(), predict_features(head, x).argmax(1).numpy(), classes)


# --------------------------------------------------------------------------- report and bundle


def _report(
    config: TrainConfig,
    backbone: Backbone,
    prep: Preprocessing,
    splits: DataSplits,
    trained: dict[str, Any],
    seconds: float,
    run_dir: Path,
) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir),
        "seconds": seconds,
        "modality": config.modality,
        "strategy": config.strategy,
        "backbone": {
            "name": backbone.name,
            "source": backbone.source,
            "weights": backbone.weights,
            "num_features": backbone.num_features,
            "groups": [g for g, _ in backbone.groups],
        },
        "head": str(HeadSpec.parse(config.head, config.dropout)),
        "preprocessing": prep.to_dict(),
        "classes": list(splits.classes),
        "data": {
            "name": splits.name,
            "fingerprint": fingerprint_sources(
                [*splits.train.sources, *splits.val.sources], texts=config.modality == "text"
            )[:16],
            "train": trained["n_train"],
            "val": len(splits.val),
            "test": len(splits.test) if splits.test is not None else None,
            "val_source": splits.val_source,
        },
        "timing": {
            "feature_extraction_seconds": trained["extract_seconds"],
            "training_seconds": trained["train_seconds"],
            "feature_cache_hit": trained["cache_hit"],
        },
        "validation": trained["val"],
        "test": trained.get("test"),
        "history": trained["history"],
        "skipped_files": [{"path": s.path, "reason": s.reason} for s in splits.skipped],
        "config": config.to_dict(),
    }


def _save(
    run_dir: Path,
    model: GraftModel,
    report: dict[str, Any],
    classes: tuple[str, ...],
    history: list[dict[str, Any]],
    backbone: Backbone,
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    arch = {"arch_weights": report["config"]["weights"]}
    if backbone.modality == "text":  # the encoder's config: the bundle rebuilds it with no hub access
        arch["config"] = backbone.model_config
    meta = {
        "modality": backbone.modality,
        "backbone": report["backbone"] | arch,
        "head": {"spec": report["head"], "dropout": report["config"]["dropout"]},
        "classes": list(classes),
        "preprocessing": report["preprocessing"],
        "recipe": report["config"],
        "metrics": {
            "validation": _headline(report["validation"]),
            "test": _headline(report["test"]) if report["test"] else None,
        },
        "data": report["data"],
    }
    save_bundle(run_dir, model, meta, tokenizer=backbone.tokenizer)
    write_json(run_dir / "report.json", report)
    test = report["test"] or report["validation"]
    plot_confusion(
        test["confusion_matrix"],
        classes,
        run_dir / "confusion.png",
        "test" if report["test"] else "validation",
    )
    plot_curves(history, run_dir / "curves.png")


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"]}
