"""A trained run -> `report.json` (metrics, history, the config as asked and the plan as resolved),
the bundle (`model.safetensors` + `graft.json`), the plots and `report.html`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .bundle import save_bundle, write_json
from .distributed import ranks
from .heads import HeadSpec
from .metrics import plot_confusion, plot_curves, plot_predicted_against_true
from .report_html import write_report_html
from .training.job import Job, TrainResult


def build_report(job: Job, trained: TrainResult, seconds: float, adapted: dict | None) -> dict[str, Any]:
    config, plan, splits, backbone = job.config, job.plan, job.splits, job.backbone
    return {
        "run_dir": str(job.run_dir),
        "seconds": seconds,
        "modality": job.modality.name,
        "strategy": plan.strategy,
        "device": str(job.device),
        "distributed": ranks.describe(job.device),  # world_size, backend, every process's device
        "backbone": {
            "name": backbone.name,
            "source": backbone.source,
            "weights": backbone.weights,
            "num_features": backbone.num_features,
            "groups": [g for g, _ in backbone.groups],
            **({"picked_by": "auto"} if job.backbone_pick is not None else {}),
        },
        "backbone_pick": job.backbone_pick,  # --backbone auto: the candidates' table and the choice
        "head": str(HeadSpec.parse(config.head, config.dropout)),
        "preprocessing": job.prep.to_dict(),
        "task": job.task.to_dict(),  # what it predicts, and what training decided (thresholds, scales)
        "classes": list(splits.classes),
        "data": {
            "name": splits.name,
            "fingerprint": job.modality.fingerprint([*splits.train.sources, *splits.val.sources])[:16],
            "train": trained.n_train,
            "val": len(splits.val),
            "test": len(splits.test) if splits.test is not None else None,
            "val_source": splits.val_source,
            "budget_subset": job.budget_subset,  # trained on a subset that --time-budget allowed
        },
        "timing": {
            "feature_extraction_seconds": trained.extract_seconds,
            "training_seconds": trained.train_seconds,
            "feature_cache_hit": trained.cache_hit,
            "features_engine": trained.features_engine,
        },
        "validation": trained.val,
        "test": trained.test,
        "history": trained.history,
        "phases": trained.phases,
        "skipped_files": [{"path": s.path, "reason": s.reason} for s in splits.skipped],
        "strategy_choice": {"chosen": plan.strategy, "reason": plan.strategy_reason},
        "kept": trained.kept,
        "tta": trained.tta,
        "advice": trained.advice,
        "top_losses": trained.top_losses,
        "adapt_lm": adapted,
        "config": config.to_dict(),  # what was asked
        "plan": plan.to_dict(),  # what it resolved to
    }


def bundle_meta(job: Job, report: dict[str, Any]) -> dict[str, Any]:
    arch = {"arch_weights": job.config.weights, **job.modality.bundle_extras(job.backbone)}
    return {
        "modality": job.modality.name,
        "backbone": report["backbone"] | arch,
        "head": {"spec": report["head"], "dropout": job.config.dropout}
        | ({"flip_average": True} if getattr(job.model, "flip_average", False) else {}),
        "classes": report["classes"],
        **({"task": report["task"]} if job.task.name != "single" else {}),  # single: as before tasks
        "preprocessing": report["preprocessing"],
        "recipe": report["config"],
        **({"input_columns": list(job.splits.input_columns)} if job.splits.input_columns else {}),
        "plan": report["plan"],
        "metrics": {
            "validation": job.task.headline(report["validation"]),
            "test": job.task.headline(report["test"]) if report["test"] else None,
        },
        "data": report["data"],
    }


def save_run(job: Job, report: dict[str, Any], run_dir: Path | None = None) -> None:
    """The bundle, report.json, confusion.png and curves.png into the run folder."""
    run_dir = Path(run_dir or job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_bundle(run_dir, job.model, bundle_meta(job, report), assets=job.modality.bundle_assets(job.backbone))
    write_json(run_dir / "report.json", report)
    shown = report["test"] or report["validation"]
    split = "test" if report["test"] else "validation"
    if "confusion_matrix" in shown:
        plot_confusion(shown["confusion_matrix"], report["classes"], run_dir / "confusion.png", split)
    if "points" in shown:  # regression
        plot_predicted_against_true(shown["points"], report["classes"][0], run_dir / "predicted.png", split)
    plot_curves(report["history"], run_dir / "curves.png", f"val_{job.task.monitor}")
    write_report_html(run_dir)
