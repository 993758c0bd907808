"""`graft pick DATA`: which backbone suits *this* data? Each candidate's frozen features on a
stratified subset of the training data (cached as training caches them), scored on the validation
split by a linear probe (logistic regression) and a k-NN probe, each with the binomial standard
error of its accuracy. A candidate's score is the better of its two probes; the best score wins,
but a cheaper candidate (fewer parameters x pixels, a FLOPs proxy) wins when its score is within
one standard error of the best: on a small validation set such a difference is noise.

Candidates: `--candidates a,b,c`, else the packaged backbones of the data's modality (offline:
EfficientNet-Lite0/1/2 for images, each at its native size unless --image-size is given; MiniLM for
texts). A candidate that is not installed, fails to build or extract, or whose extraction cannot
finish in its share of --time-budget (an equal share each) is skipped with one line saying why;
it never fails the pick.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .compare import task_of
from .config import TrainConfig
from .data.splits import DataSplits, Labelled
from .errors import ConfigError
from .modalities import Modality, detect
from .options import PickOptions
from .training.budget import Clock

VAL_PER_CLASS = 100  # validation examples per class the probes are scored on
KNN_NEIGHBOURS = 5
TIMING_SAMPLE = 16  # inputs encoded first to measure a candidate's speed before committing to it

Log = Callable[[str], None]


@dataclass(frozen=True)
class PickConfig:
    data: str
    candidates: tuple[str, ...] | None = None  # None: the modality's packaged backbones
    time_budget: float | None = None  # seconds for the whole pick; each candidate an equal share
    per_class: int = PickOptions.per_class  # training examples per class scored for each candidate
    # any other `graft train` option that changes the data or the inputs (image_size, val, ...)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidate:
    """One backbone's row of the pick's table."""

    backbone: str
    status: str = "skipped"  # scored | skipped | chosen
    why: str = ""
    input_size: int | None = None
    images_per_s: float | None = None
    cost: float | None = None  # parameters x input pixels: what "cheaper" compares
    linear: float | None = None
    linear_se: float | None = None
    knn: float | None = None
    knn_se: float | None = None

    @property
    def score(self) -> float:
        return max(self.linear or 0.0, self.knn or 0.0)

    @property
    def score_se(self) -> float:
        return self.linear_se if (self.linear or 0.0) >= (self.knn or 0.0) else self.knn_se  # type: ignore[return-value]


def binomial_se(accuracy: float, n: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / n) if n else 0.0


def default_candidates(modality: Modality) -> tuple[str, ...]:
    """The packaged backbones of `modality`, installed or not (a missing one is listed as such)."""
    return tuple(modality.packaged_backbones)


def probe_scores(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray
) -> tuple[float, float]:
    """Validation accuracy of a logistic-regression probe and of a cosine k-NN probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler, normalize

    scaler = StandardScaler().fit(train_x)
    linear = LogisticRegression(max_iter=1000).fit(scaler.transform(train_x), train_y)
    linear_acc = float(np.mean(linear.predict(scaler.transform(val_x)) == val_y))
    knn = KNeighborsClassifier(n_neighbors=min(KNN_NEIGHBOURS, len(train_y)))
    knn.fit(normalize(train_x), train_y)
    knn_acc = float(np.mean(knn.predict(normalize(val_x)) == val_y))
    return linear_acc, knn_acc


def _features(
    modality: Modality, backbone: Any, prep: Any, data: Labelled
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Cached frozen features of `data`, their labels, and the extraction's seconds (None: cached)."""
    from .training.features import cached_features

    feats = cached_features(modality, backbone, data.sources, prep, desc=f"{backbone.name} features")
    seconds = None if feats.cached or feats.seconds <= 0 else feats.seconds
    return feats.values[feats.ok], np.asarray(data.labels)[feats.ok], seconds


def _extraction_speed(sample_speed: float, n: int, seconds: list[float | None]) -> float:
    """The whole extraction's inputs/s when it ran (in the engine the job got: ONNX Runtime where
    that pays on a CPU), else the sample's."""
    return n / sum(seconds) if all(s is not None for s in seconds) else sample_speed  # type: ignore[arg-type]


def _speed(modality: Modality, backbone: Any, prep: Any, sources: Sequence[Any]) -> float:
    """Inputs per second, measured on the first few (after one warm-up batch of two) in PyTorch:
    a cautious estimate, as the whole extraction may run in a faster engine."""
    options: dict[str, Any] = {"flip": False, "batch_size": TIMING_SAMPLE, "desc": f"{backbone.name} timing"}
    modality.encode(backbone, prep, list(sources[:2]), **options)
    sample = list(sources[:TIMING_SAMPLE])
    started = time.perf_counter()
    modality.encode(backbone, prep, sample, **options)
    return len(sample) / max(time.perf_counter() - started, 1e-9)


def _uncached(modality: Modality, backbone: Any, prep: Any, splits: DataSplits) -> int:
    """How many inputs still need extracting: a split whose features are cached costs nothing."""
    from .training.features import cached_path

    parts = (splits.train.sources, splits.val.sources)
    return sum(len(p) for p in parts if not cached_path(modality, backbone, prep, p, False).is_file())


def _skip_reason(needed_s: float, share_s: float | None, spent_s: float) -> str | None:
    if share_s is None or spent_s + needed_s <= share_s:
        return None
    return f"extraction needs about {needed_s:.0f} s, past its {share_s:.0f} s share of --time-budget"


def score_candidate(
    name: str, modality: Modality, config: TrainConfig, splits: DataSplits, share_s: float | None
) -> Candidate:
    """One candidate's row; any failure is a skipped row, never an error."""
    from .backbones import BackboneError, create_backbone
    from .runtime.device import resolve_device

    row, started = Candidate(name), time.perf_counter()
    try:
        backbone = create_backbone(name)
        backbone.body.to(resolve_device(config.device))
        prep = modality.preprocessing(config, backbone, splits)
        row.input_size = getattr(prep, "input_size", None) or getattr(prep, "max_length", None)
        row.images_per_s = _speed(modality, backbone, prep, splits.train.sources)
        params = sum(p.numel() for p in backbone.body.parameters())
        row.cost = float(params * (row.input_size or 1) ** 2)
        needed = _uncached(modality, backbone, prep, splits) / row.images_per_s
        if (reason := _skip_reason(needed, share_s, time.perf_counter() - started)) is not None:
            row.why = reason
            return row
        train_x, train_y, train_s = _features(modality, backbone, prep, splits.train)
        val_x, val_y, val_s = _features(modality, backbone, prep, splits.val)
        n = len(splits.train) + len(splits.val)
        row.images_per_s = _extraction_speed(row.images_per_s, n, [train_s, val_s])
        row.linear, row.knn = probe_scores(train_x, train_y, val_x, val_y)
        row.linear_se, row.knn_se = binomial_se(row.linear, len(val_y)), binomial_se(row.knn, len(val_y))
        row.status = "scored"
    except BackboneError as err:  # not installed, no weights offline: its message says what to install
        row.why = f"unavailable: {err}"
    except Exception as err:  # noqa: BLE001 - a failing candidate never fails the pick
        row.why = f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return row


def choose(rows: list[Candidate]) -> Candidate | None:
    """The best score, or the cheapest candidate within one standard error of it."""
    scored = [r for r in rows if r.status == "scored"]
    if not scored:
        return None
    best = max(scored, key=lambda r: r.score)  # the first listed wins a tie
    close = [r for r in scored if r.score >= best.score - best.score_se]
    chosen = min(close, key=lambda r: (r.cost or 0.0, -r.score))
    chosen.status = "chosen"
    if chosen is best or chosen.score >= best.score:
        chosen.why = "best probe score" + (", cheapest within one SE" if len(close) > 1 else "")
    else:
        chosen.why = (
            f"cheaper, within one standard error of {best.backbone} "
            f"({chosen.score:.3f} vs {best.score:.3f} +/- {best.score_se:.3f})"
        )
    for r in scored:
        if r is not chosen:
            r.why = "within one SE but costlier" if any(r is c for c in close) else "lower score"
    return chosen


def pick_splits(config: PickConfig, modality: Modality, train_config: TrainConfig) -> DataSplits:
    """A stratified, seeded subset of the training data and at most VAL_PER_CLASS per class of validation."""
    splits = modality.load_splits(train_config)
    task = task_of(splits)
    if task.name != "single":
        raise ConfigError(
            f"graft pick scores single-label classification; {config.data} is a {task.name} task"
        )
    train = splits.train.subset(task.training_subset(splits.train.labels, config.per_class, 0))
    val = splits.val.subset(task.validation_subset(splits.val.labels, VAL_PER_CLASS, 0))
    return replace(splits, train=train, val=val)


def run_pick(config: PickConfig, log: Log = print) -> dict[str, Any]:
    """Score every candidate and choose; returns the table and the choice (see the module's doc)."""
    from .runtime.device import resolve_device
    from .runtime.precision import resolve_precision, use_precision

    started = time.perf_counter()
    train_config = TrainConfig(data=config.data, **config.options)
    modality = detect(config.data, config=train_config).modality
    splits = pick_splits(config, modality, train_config)
    names = config.candidates or default_candidates(modality)
    clock = Clock.start(config, started)  # the one reader of a --time-budget
    share = clock.seconds / len(names) if clock.on and names else None
    rows = []
    with use_precision(resolve_precision(train_config.precision, resolve_device(train_config.device))):
        for name in names:
            log(f"pick: {name} ...")
            rows.append(score_candidate(name, modality, train_config, splits, share))
    chosen = choose(rows)
    if chosen is None:
        reasons = "; ".join(f"{r.backbone}: {r.why}" for r in rows)
        raise ConfigError(f"graft pick: no candidate could be scored ({reasons})")
    return {
        "chosen": chosen.backbone,
        "flag": pin_flag(chosen.backbone, config.options.get("image_size")),
        "train_examples": len(splits.train),
        "val_examples": len(splits.val),
        "time_budget": clock.seconds,
        "seconds": round(time.perf_counter() - started, 2),
        "candidates": [vars(r) | {"score": r.score if r.status != "skipped" else None} for r in rows],
    }


def pin_flag(backbone: str, image_size: int | None) -> str:
    return f"--backbone {backbone}" + (f" --image-size {image_size}" if image_size else "")


def _cell(value: float | None, se: float | None) -> str:
    return "-" if value is None else f"{value:.3f} +/- {se or 0.0:.3f}"


def format_table(result: dict[str, Any]) -> list[str]:
    """The pick's table as printed lines, then the flag that pins the choice."""
    lines = [f"{'backbone':24} {'input':>5} {'img/s':>7} {'linear':>15} {'k-NN':>15}  result"]
    for r in result["candidates"]:
        speed = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
        lines.append(
            f"{r['backbone']:24} {r['input_size'] or '-':>5} {speed:>7} "
            f"{_cell(r['linear'], r['linear_se']):>15} {_cell(r['knn'], r['knn_se']):>15}  "
            f"{r['status']}{': ' + r['why'] if r['why'] else ''}"
        )
    lines.append(
        f"{result['train_examples']} training / {result['val_examples']} validation examples, "
        f"{result['seconds']:.0f} s. Pin this choice: {result['flag']}"
    )
    return lines
