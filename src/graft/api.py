"""The Python API, in scikit-learn's manner: `__init__` stores options, `fit` returns self, learned
state ends in `_`.

    clf = graft.Classifier(strategy="linear", epochs=10).fit("my_images/")
    clf.predict(["a.jpg"]); clf.predict_proba(["a.jpg"]); clf.score(images, labels)
    clf.save("my-model"); graft.load("my-model").predict(["b.jpg"])

`fit` takes a data path (a folder of class folders, a table of texts; anything `graft train`
takes), or in-memory inputs and labels: `fit(images_or_texts, labels)`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .errors import ConfigError, DataError

_OPTIONS = [f.name for f in fields(TrainConfig) if f.name != "data"]
SCRATCH = ("checkpoint.*", "best.safetensors")  # a run folder's files that are not the bundle's


class Classifier:
    """A pretrained backbone with a new head for your labels, trained the right way."""

    def __init__(self, backbone: str | None = None, strategy: str = "auto", **options: Any) -> None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)}; graft.Classifier takes {', '.join(_OPTIONS)}"
            )
        self.backbone = backbone
        self.strategy = strategy
        self.options = options

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"backbone": self.backbone, "strategy": self.strategy, **self.options}

    def set_params(self, **params: Any) -> Classifier:
        for key, value in params.items():
            if key in ("backbone", "strategy"):
                setattr(self, key, value)
            elif key in _OPTIONS:
                self.options[key] = value
            else:
                raise ConfigError(f"unknown option {key!r}")
        return self

    def _config(self, data: str) -> TrainConfig:
        return TrainConfig(data=data, backbone=self.backbone, strategy=self.strategy, **self.options)

    def fit(
        self, X: Any, y: Sequence[Any] | None = None, *, log: Callable[[str], None] = print
    ) -> Classifier:
        from .runner import launches_processes, run

        config, splits, modality = self._config(str(X)), None, None
        if y is not None:
            config = self._config("in-memory")
            splits, modality = _in_memory_splits(list(X), list(y), config)
        if launches_processes(config):  # --devices N: the processes write the run folder
            return self._fit_processes(config, log, splits, modality)
        result = run(config, log=log, splits=splits, modality=modality)
        job = result.job
        from .compute import Precision
        from .predict import Predictor
        from .report import bundle_meta

        pipeline = job.modality.input_pipeline(job.prep, backbone=job.backbone)
        meta = bundle_meta(job, result.report)
        precision = Precision(job.plan.precision, job.plan.precision_reason)  # the run's, as decided
        self.predictor_ = Predictor(
            result.model, job.modality, pipeline, job.splits.classes, meta, job.device, precision=precision
        )
        self.classes_ = job.splits.classes
        self.report_ = result.report
        self.run_dir_ = result.run_dir
        self._job = job
        return self

    def _fit_processes(
        self, config: TrainConfig, log: Callable[[str], None], splits: Any, modality: Any
    ) -> Classifier:
        from .predict import load
        from .runner import run_processes

        run_dir, report = run_processes(config, log, splits, modality)
        self.predictor_ = load(run_dir, precision=config.precision)
        self.classes_ = self.predictor_.classes_
        self.report_ = report
        self.run_dir_ = run_dir
        self._job = None
        return self

    def _fitted(self) -> Any:
        if not hasattr(self, "predictor_"):
            raise ConfigError("this Classifier is not fitted yet: call fit(data) first")
        return self.predictor_

    def predict_proba(self, X: Any, batch_size: int = 64) -> np.ndarray:
        return self._fitted().predict_proba(X, batch_size)

    def predict(self, X: Any, batch_size: int = 64) -> list[str]:
        return self._fitted().predict(X, batch_size)

    def score(self, X: Any, y: Sequence[Any]) -> float:
        """Accuracy of predict(X) against the labels y (class names)."""
        predicted = self.predict(X)
        return float(np.mean([str(p) == str(t) for p, t in zip(predicted, y, strict=True)]))

    def save(self, run_dir: str | Path) -> Path:
        """Write the bundle (and report) to `run_dir`; `graft.load(run_dir)` reads it back."""
        from .report import save_run

        self._fitted()
        if self._job is None:  # trained by several processes: the run folder is the bundle
            ignore = shutil.ignore_patterns(*SCRATCH)
            shutil.copytree(self.run_dir_, run_dir, dirs_exist_ok=True, ignore=ignore)
        else:
            save_run(self._job, self.report_, Path(run_dir))
        return Path(run_dir)


def _in_memory_splits(X: list[Any], y: list[Any], config: TrainConfig) -> tuple[Any, Any]:
    from .data.splits import DataSplits, Labelled, stratified_split
    from .modalities import modality_of_inputs

    if len(X) != len(y):
        raise DataError(f"fit(X, y): {len(X)} inputs but {len(y)} labels")
    modality = modality_of_inputs(X)
    classes = tuple(sorted({str(label) for label in y}))
    labels = np.asarray([classes.index(str(label)) for label in y], dtype=np.int64)
    train_idx, val_idx = stratified_split(labels, config.val_fraction, config.seed, "fit(X, y)")
    data = Labelled(X, labels)
    splits = DataSplits(
        data.subset(train_idx),
        data.subset(val_idx),
        None,
        classes,
        "in-memory",
        f"split:{config.val_fraction}",
    )
    return splits, modality
