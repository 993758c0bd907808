"""`graft pick DATA` and `graft train --backbone auto`: which backbone suits *this* data? Each
candidate's frozen features on a stratified subset of the training data (cached as training caches
them), scored on the validation split by a linear probe (logistic regression) and a k-NN probe,
each with the binomial standard error of its accuracy. A candidate's score is the better of its two
probes; the best score wins, but a cheaper candidate (fewer parameters x pixels, a FLOPs proxy)
wins when its score is within one standard error of the best: on a small validation set such a
difference is noise.

Candidates: `--candidates a,b,c`, else the packaged backbones of the data's modality (offline:
EfficientNet-Lite0/1/2 for images, each at its native size unless --image-size is given; MiniLM for
texts) and, when online, the modality's short online list for the device. Every candidate's speed
is timed on a few inputs first; under a time budget the subset per class is then sized so that all
of them fit it (`size_per_class`); without one, so that all of them together take about what the
cheapest would take for all the data, i.e. one more linear probe (`affordable_size`). A candidate that is not
installed, fails to build or extract, or whose extraction cannot finish in its share of the
budget (an equal share each) is skipped with one line saying why; it never fails the pick.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._net import can_reach
from .config import TrainConfig
from .data.splits import DataSplits, Labelled
from .errors import ConfigError
from .modalities import Modality, detect
from .modalities.base import Features
from .tasks import get_task
from .training.budget import Clock
from .training.features import KnownRows

VAL_PER_CLASS = 100  # validation examples per class the probes are scored on
KNN_NEIGHBOURS = 5
TIMING_SAMPLE = 16  # inputs encoded first to measure a candidate's speed before committing to it
# the subset sizes (training examples per class) a budget chooses among: a repeated pick under a
# similar budget lands on the same size, so its features come from the cache
PER_CLASS_LADDER = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000)
# graft pick without a budget spends at least this long extracting: below it, the process start and
# building the candidates (about 7 s for the three packaged image ones, 2 cores) dominate anyway,
# and a smaller subset would only make a small data set's scores noisier
MIN_ALLOWANCE_S = 15.0
SIZING_MARGIN = 0.7  # of the budget left after timing, for extraction: the probes and loading take the rest
AUTO = "auto"  # `--backbone auto`: the pick chooses
PICK_SHARE = 0.25  # of --time-budget that `--backbone auto`'s pick may take, from the run's start
ONLINE_HOST = "huggingface.co"  # where timm's and the hub's weights come from

Log = Callable[[str], None]


@dataclass(frozen=True)
class PickConfig:
    data: str
    candidates: tuple[str, ...] | None = None  # None: the modality's packaged (and online) backbones
    time_budget: float | None = None  # seconds for the whole pick; each candidate an equal share
    per_class: int | None = None  # examples per class (None: sized to the budget, or to one probe's time)
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


@dataclass
class _Trial:
    """A candidate built and timed (`backbone` None: skipped), then scored on the subset."""

    row: Candidate
    backbone: Any = None
    prep: Any = None
    features: list[tuple[Sequence[Any], Features]] = field(default_factory=list)


@dataclass
class Picked:
    """The pick's table and choice (`result`), the chosen backbone as built, and its features on
    the pick's inputs (training extracts only the others)."""

    result: dict[str, Any]
    backbone: Any
    known: KnownRows | None


def binomial_se(accuracy: float, n: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / n) if n else 0.0


def default_candidates(modality: Modality) -> tuple[str, ...]:
    """The packaged backbones of `modality`, installed or not (a missing one is listed as such)."""
    return tuple(modality.packaged_backbones)


def device_kind(config: TrainConfig) -> str:
    """Which of a modality's online lists suits the device: "gpu" or "cpu"."""
    from .runtime.device import resolve_device

    return "cpu" if resolve_device(config.device).type == "cpu" else "gpu"


def candidate_names(modality: Modality, kind: str, log: Log) -> tuple[str, ...]:
    """The packaged backbones, then (online only) the modality's online list for the device kind;
    offline, the online ones are skipped with one line."""
    names = default_candidates(modality)
    online = tuple(n for n in modality.online_backbones.get(kind, ()) if n not in names)
    if online and not can_reach(ONLINE_HOST):
        log(
            f"pick: the online candidates ({', '.join(online)}) are skipped: offline (GRAFT_OFFLINE or "
            f"HF_HUB_OFFLINE is set, or {ONLINE_HOST} cannot be reached)"
        )
        return names
    return names + online


def size_per_class(seconds: float | None, needs: Mapping[int, Sequence[float]], ceiling: int | None) -> int:
    """Training examples per class each candidate is scored on. Without a budget (`seconds` None),
    `ceiling` or the smallest size. Under one, among the sizes of `needs` (each size: every candidate's
    seconds to extract what it lacks of that subset and the validation inputs), the largest at
    which the most candidates fit an equal share of SIZING_MARGIN x `seconds` (none fits: the
    smallest); at most `ceiling`.
    A larger budget, a larger subset."""
    if seconds is None or not needs:
        return ceiling or min(needs, default=PER_CLASS_LADDER[0])
    sizes = [k for k in needs if ceiling is None or k <= ceiling] or [min(needs)]
    share = SIZING_MARGIN * max(seconds, 0.0) / max(1, max(len(v) for v in needs.values()))
    fitting = {k: sum(s <= share for s in needs[k]) for k in sizes}
    most = max(fitting.values())
    return max(k for k in sizes if fitting[k] == most) if most else min(sizes)


def affordable_size(needs: Mapping[int, Sequence[float]], allowance_s: float) -> int:
    """Without --time-budget or --per-class: the largest size at which every candidate together
    extracts what it lacks within `allowance_s` (`one_probe_seconds`: the pick then costs about
    one more linear probe, whatever the data's size; at least MIN_ALLOWANCE_S), else the
    smallest. A user who wants more data scored gives a budget or --per-class."""
    allowance_s = max(allowance_s, MIN_ALLOWANCE_S)
    fitting = [k for k, seconds in needs.items() if sum(seconds) <= allowance_s]
    return max(fitting) if fitting else min(needs)


def one_probe_seconds(trials: Sequence[_Trial], splits: DataSplits) -> float:
    """The cheapest candidate's seconds to extract all the training and validation inputs at its
    timed speed: what a linear probe of it on the data would spend."""
    cheapest = min(trials, key=lambda t: t.row.cost or 0.0)
    return (len(splits.train) + len(splits.val)) / (cheapest.row.images_per_s or 1e-9)


def ladder(smallest_class: int, ceiling: int | None) -> list[int]:
    """The subset sizes a budget chooses among: PER_CLASS_LADDER below the smallest class (a
    subset cannot take more of every class) and `ceiling`, then the cap itself."""
    cap = min(smallest_class, ceiling) if ceiling else smallest_class
    return [k for k in PER_CLASS_LADDER if k < cap] + [max(1, cap)]


def _needs(
    trials: Sequence[_Trial],
    modality: Modality,
    splits: DataSplits,
    sizes: Sequence[int],
    look_up: bool = True,
) -> dict:
    """Each size's seconds per candidate: what it lacks of that subset and of validation, at its
    timed speed (features in the cache cost nothing: a repeated pick reads them back); without
    `look_up`, as if nothing were cached (no fingerprint of every subset's files)."""
    from .training.features import cached_path, has_entries

    val_print = modality.fingerprint(splits.val.sources)
    cold = not look_up or not any(has_entries(t.backbone) for t in trials)
    needs = {}
    for k in sizes:
        train = _train_subset(splits, k)
        if cold:
            needs[k] = [(len(train) + len(splits.val)) / (t.row.images_per_s or 1e-9) for t in trials]
            continue
        train_print = modality.fingerprint(train.sources)
        row = []
        for t in trials:
            parts = ((train.sources, train_print), (splits.val.sources, val_print))
            lacking = sum(
                len(sources)
                for sources, inputs in parts
                if not cached_path(modality, t.backbone, t.prep, sources, False, inputs=inputs).is_file()
            )
            row.append(lacking / (t.row.images_per_s or 1e-9))
        needs[k] = row
    return needs


def _size(
    ready: Sequence[_Trial],
    modality: Modality,
    splits: DataSplits,
    left: float | None,
    per_class: int | None,
    allowance: float,
) -> int:
    """The subset per class: --per-class without a budget; else sized to the budget left
    (`size_per_class`) or, without one, to one probe's time (`affordable_size`)."""
    if left is None and per_class is not None:
        return per_class
    smallest = int(np.bincount(np.asarray(splits.train.labels, dtype=np.int64)).min())
    sizes = ladder(smallest, per_class)
    if left is None:  # the same timed speeds give the same size again, so its features are cached
        needs = _needs(ready, modality, splits, sizes, look_up=False)
        return affordable_size(needs, allowance) if needs else PER_CLASS_LADDER[0]
    return size_per_class(left, _needs(ready, modality, splits, sizes), per_class)


def _train_subset(splits: DataSplits, per_class: int) -> Labelled:
    return splits.train.subset(get_task("single").training_subset(splits.train.labels, per_class, 0))


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


def _features(modality: Modality, backbone: Any, prep: Any, data: Labelled) -> Features:
    """Cached frozen features of `data` (flip-free: as training extracts by default)."""
    from .training.features import cached_features

    return cached_features(modality, backbone, data.sources, prep, desc=f"{backbone.name} features")


def _usable(feats: Features, data: Labelled) -> tuple[np.ndarray, np.ndarray]:
    return feats.values[feats.ok], np.asarray(data.labels)[feats.ok]


def _extraction_speed(sample_speed: float, n: int, parts: list[Features]) -> float:
    """The whole extraction's inputs/s when it ran (in the engine the job got: ONNX Runtime where
    that pays on a CPU), else the sample's."""
    seconds = [None if f.cached or f.seconds <= 0 else f.seconds for f in parts]
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


def _skip_reason(needed_s: float, share_s: float | None) -> str | None:
    if share_s is None or needed_s <= share_s:
        return None
    return f"extraction needs about {needed_s:.0f} s, past its {share_s:.0f} s share of --time-budget"


def _failure(err: Exception) -> str:
    from .backbones import BackboneError

    if isinstance(err, BackboneError):  # not installed, no weights offline: its message says what to install
        return f"unavailable: {err}"
    return f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _trial(name: str, modality: Modality, config: TrainConfig, splits: DataSplits, device: Any) -> _Trial:
    """`name` built, on the device, and timed on a few training inputs; any failure (a missing
    wheel, a download that fails) is a skipped row, never an error."""
    from .backbones import create_backbone

    trial = _Trial(Candidate(name))
    row = trial.row
    try:
        backbone = create_backbone(name)
        if backbone.modality != modality.name:
            row.why = f"unavailable: a {backbone.modality} model, and the data holds {modality.unit}"
            return trial
        backbone.body.to(device)
        prep = modality.preprocessing(config, backbone, splits)
        row.input_size = getattr(prep, "input_size", None) or getattr(prep, "max_length", None)
        row.images_per_s = _speed(modality, backbone, prep, splits.train.sources)
        row.cost = float(sum(p.numel() for p in backbone.body.parameters()) * (row.input_size or 1) ** 2)
        trial.backbone, trial.prep = backbone, prep
    except Exception as err:  # noqa: BLE001 - a failing candidate never fails the pick
        row.why = _failure(err)
    return trial


def _score(trial: _Trial, modality: Modality, splits: DataSplits, share_s: float | None) -> None:
    """The trial's probes on the subset, unless its extraction cannot finish in `share_s`."""
    row, backbone, prep = trial.row, trial.backbone, trial.prep
    try:
        needed = _uncached(modality, backbone, prep, splits) / (row.images_per_s or 1e-9)
        if (reason := _skip_reason(needed, share_s)) is not None:
            row.why = reason
            return
        train = _features(modality, backbone, prep, splits.train)
        val = _features(modality, backbone, prep, splits.val)
        (train_x, train_y), (val_x, val_y) = _usable(train, splits.train), _usable(val, splits.val)
        n = len(splits.train) + len(splits.val)
        row.images_per_s = _extraction_speed(row.images_per_s or 0.0, n, [train, val])
        row.linear, row.knn = probe_scores(train_x, train_y, val_x, val_y)
        row.linear_se, row.knn_se = binomial_se(row.linear, len(val_y)), binomial_se(row.knn, len(val_y))
        row.status = "scored"
        trial.features = [(splits.train.sources, train), (splits.val.sources, val)]
    except Exception as err:  # noqa: BLE001 - a failing candidate never fails the pick
        row.why = _failure(err)


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


def scores_single_label(splits: DataSplits) -> bool:
    """The pick's probes score single-label classification."""
    return (splits.task if isinstance(splits.task, str) else splits.task.name) == "single"


def _val_subset(splits: DataSplits) -> Labelled:
    task = get_task("single")
    return splits.val.subset(task.validation_subset(splits.val.labels, VAL_PER_CLASS, 0))


def pick_on(
    splits: DataSplits,
    modality: Modality,
    config: TrainConfig,
    names: Sequence[str],
    clock: Clock,
    per_class: int | None,
    log: Log,
) -> Picked:
    """Every candidate built and timed; the subset sized (`size_per_class`, on what `clock` has
    left); each scored in an equal share of what is left; the choice (`choose`)."""
    from .runtime.device import resolve_device

    started, device = time.perf_counter(), resolve_device(config.device)
    val = _val_subset(splits)
    trials = []
    for name in names:
        left = clock.left()
        if left is not None and left <= 0:  # building and timing it would only overrun the budget
            trials.append(_Trial(Candidate(name, why="the time budget's share was spent before it")))
            continue
        log(f"pick: {name} ...")
        trials.append(_trial(name, modality, config, replace(splits, val=val), device))
    ready = [t for t in trials if t.backbone is not None]
    allowance = one_probe_seconds(ready, splits) if ready else 0.0  # all of the validation split
    splits = replace(splits, val=val)
    chosen_per_class = _size(ready, modality, splits, clock.left(), per_class, allowance)
    subset = replace(splits, train=_train_subset(splits, chosen_per_class))
    left = clock.left()
    share = max(0.0, left) / len(ready) if left is not None and ready else None
    for trial in ready:
        _score(trial, modality, subset, share)
    return _picked(trials, subset, chosen_per_class, config, modality, time.perf_counter() - started)


def _picked(
    trials: list[_Trial],
    subset: DataSplits,
    per_class: int,
    config: TrainConfig,
    modality: Modality,
    seconds: float,
) -> Picked:
    from .training.features import known_rows

    rows = [t.row for t in trials]
    chosen = choose(rows)
    if chosen is None:
        reasons = "; ".join(f"{r.backbone}: {r.why}" for r in rows)
        raise ConfigError(f"graft pick: no candidate could be scored ({reasons})")
    winner = next(t for t in trials if t.row is chosen)
    result = {
        "chosen": chosen.backbone,
        "why": chosen.why,
        "flag": pin_flag(chosen.backbone, config.image_size),
        "per_class": per_class,
        "unit": modality.unit,  # what the extraction speed counts: images or texts
        "train_examples": len(subset.train),
        "val_examples": len(subset.val),
        "seconds": round(seconds, 2),
        "candidates": [vars(r) | {"score": r.score if r.status != "skipped" else None} for r in rows],
    }
    known = known_rows(modality, winner.backbone, winner.prep, winner.features)
    return Picked(result, winner.backbone, known)


def _kept(name: str, why: str, config: TrainConfig, log: Log) -> Picked:
    """`--backbone auto` without a pick: `name`, and why, in one line."""
    from .backbones import create_backbone

    flag = pin_flag(name, config.image_size)
    log(f"backbone auto -> {name}: {why}; pin it with {flag}")
    return Picked({"chosen": name, "why": why, "flag": flag, "candidates": []}, create_backbone(name), None)


def pick_for_training(
    config: TrainConfig, modality: Modality, splits: DataSplits, clock: Clock, log: Log
) -> Picked:
    """`graft train --backbone auto`: the pick on the training data within `clock` (PICK_SHARE of
    --time-budget; without one, a subset sized to one probe's time), its table logged with the
    flag that pins the choice. One candidate (text offline: MiniLM alone is packaged) or a task
    the probes cannot score keeps that backbone or the default, said in one line."""
    names = candidate_names(modality, device_kind(config), log)
    alone = None
    if len(names) == 1:
        alone = f"{names[0]} is the only {modality.name} candidate here (offline, only it is packaged)"
    elif not scores_single_label(splits):
        names, alone = (modality.default_backbone,), "the pick scores single-label classification only"
    if alone is not None:
        return _kept(names[0], alone, config, log)
    try:
        picked = pick_on(splits, modality, config, names, clock, None, log)
    except ConfigError as err:  # nothing scored (all skipped, or the share spent): a run goes on
        return _kept(modality.default_backbone, f"{err}; the default kept", config, log)
    for line in format_table(picked.result):
        log(line)
    chosen = picked.result
    log(f"backbone auto -> {chosen['chosen']}: {chosen['why']}; pin it with {chosen['flag']}")
    return picked


def run_pick(config: PickConfig, log: Log = print) -> dict[str, Any]:
    """`graft pick`: score every candidate and choose; returns the table and the choice."""
    from .runtime.device import resolve_device
    from .runtime.precision import resolve_precision, use_precision

    started = time.perf_counter()
    train_config = TrainConfig(data=config.data, **config.options)
    modality = detect(config.data, config=train_config).modality
    splits = modality.load_splits(train_config)
    if not scores_single_label(splits):
        raise ConfigError(f"graft pick scores single-label classification; {config.data} is not one")
    clock = Clock.start(config, started)  # the one reader of a --time-budget
    names = config.candidates or candidate_names(modality, device_kind(train_config), log)
    with use_precision(resolve_precision(train_config.precision, resolve_device(train_config.device))):
        picked = pick_on(splits, modality, train_config, names, clock, config.per_class, log)
    seconds = round(time.perf_counter() - started, 2)
    return picked.result | {"time_budget": clock.seconds, "seconds": seconds}


def pin_flag(backbone: str, image_size: int | None) -> str:
    return f"--backbone {backbone}" + (f" --image-size {image_size}" if image_size else "")


def _cell(value: float | None, se: float | None) -> str:
    return "-" if value is None else f"{value:.3f} +/- {se or 0.0:.3f}"


def format_table(result: dict[str, Any]) -> list[str]:
    """The pick's table as printed lines, then the flag that pins the choice."""
    speed_header = f"{result.get('unit', 'img')}/s"
    lines = [f"{'backbone':24} {'input':>5} {speed_header:>8} {'linear':>15} {'k-NN':>15}  result"]
    for r in result["candidates"]:
        speed = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
        lines.append(
            f"{r['backbone']:24} {r['input_size'] or '-':>5} {speed:>8} "
            f"{_cell(r['linear'], r['linear_se']):>15} {_cell(r['knn'], r['knn_se']):>15}  "
            f"{r['status']}{': ' + r['why'] if r['why'] else ''}"
        )
    lines.append(
        f"{result['train_examples']} training / {result['val_examples']} validation examples, "
        f"{result['seconds']:.0f} s. Pin this choice: {result['flag']}"
    )
    return lines
