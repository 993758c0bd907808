"""What the user asks for (`TrainConfig`, frozen, written to report.json as given) and what graft
resolved it to (`Plan`: modality, strategy, epochs, batch size, LR, device, preprocessing).

Every option is a dataclass field whose metadata carries its help text (and choices), as
Hugging Face's `TrainingArguments` does: the command line is generated from these fields
(`cli.py`), so a default lives in exactly one place.
"""

from __future__ import annotations

import contextvars
import importlib.util
import math
import numbers
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from .errors import ConfigError, GraftError


def option(default: Any, help: str, **meta: Any) -> Any:
    """A config field with its help text; `choices`, `metavar`, `group`, `parse` and
    `default_means` (words shown after the default) go to the CLI; `minimum`/`maximum` are checked."""
    return field(default=default, metadata={"help": help, **meta})


def parse_duration(text: str | float | None) -> float | None:
    """'3300', '30m', '1h', '90s' -> seconds (positive and finite)."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    raw = str(text).strip().lower()
    try:
        seconds = float(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"bad --time-budget {text!r}: use positive seconds, or minutes/hours as 30m, 1h")
    return seconds


def parse_feature_layers(given: str | int) -> str:
    """'auto', or a number of layers (4, '4') -> '4'."""
    text = str(given).strip().lower()
    if text != "auto" and not (text.isdigit() and int(text) >= 1) or isinstance(given, bool):
        raise ConfigError(f"--feature-layers must be auto or a number of layers, got {given!r}")
    return text if text == "auto" else str(int(text))


TRACKER_CHOICES = ("tensorboard", "mlflow", "csv")  # graft.training.trackers
# the packages each needs, all installed by its extra (MLflow's default store is a SQLite database)
TRACKER_EXTRAS = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic")}


def parse_trackers(given: str | list[str] | tuple[str, ...] | None) -> str | None:
    """'TensorBoard, csv' (or a list of names) -> 'tensorboard,csv': each once, in the order given."""
    if given is None:
        return None
    parts = given.split(",") if isinstance(given, str) else [str(part) for part in given]
    names = list(dict.fromkeys(part.strip().lower() for part in parts if part.strip()))
    unknown = [name for name in names if name not in TRACKER_CHOICES]
    if unknown:
        raise ConfigError(
            f"unknown --log-to {unknown[0]!r}; choose from {', '.join(TRACKER_CHOICES)}, "
            "several comma-separated (tensorboard,csv)"
        )
    return ",".join(names) or None


STRATEGY_CHOICES = ("auto", "linear", "finetune", "gradual")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")  # resolved by graft.runtime.precision.resolve_precision
TASK_CHOICES = ("auto", "single", "multi", "regression")  # graft.tasks


@dataclass(frozen=True)
class TrainConfig:
    data: str = field(
        metadata={
            "help": "images: a folder (class subfolders, train/ [val/] [test/], or a labels.csv/.parquet), "
            "a table whose column holds image paths, or `cifar10`; texts: a .csv/.tsv/.jsonl/.parquet/"
            ".feather file, a folder with train.csv [dev.csv] "
            "[test.csv], or <class>/*.txt; either: a Hugging Face dataset folder (save_to_disk)",
            "positional": True,
        }
    )
    val: str | None = option(
        None, "validation folder or file (default: val/, dev.csv, ... beside DATA, else a split)"
    )
    test: str | None = option(None, "test folder or file, evaluated once at the end")
    data_root: str | None = option(None, "where `cifar10` is read from or downloaded to")
    backbone: str | None = option(
        None,
        "see `graft backbones`; also any torchvision name, timm/<name>, hf/<hub id> or a local model "
        "folder, or `auto`: picked on the data by frozen-feature probes of the candidates (graft pick) "
        "within a quarter of --time-budget (default: efficientnet_lite0 for images, minilm for text)",
    )
    weights: str | None = option(
        None, "local .pth/.safetensors weights for --backbone, or `random` to train it from scratch"
    )
    strategy: str = option(
        "auto",
        "auto: finetune when there are >= 20 examples per class and its default epochs fit the time "
        "budget (15 min if none), else linear; linear: frozen backbone, cached features, trained head; "
        "finetune: the head first (a probe on cached features), then everything with discriminative "
        "LRs; gradual: ULMFiT gradual unfreezing",
        choices=STRATEGY_CHOICES,
    )
    head: str = option("linear", "linear, or mlp:W1[,W2...] (e.g. mlp:4096,4096)")
    dropout: float = option(0.0, "dropout before each layer of the head")
    epochs: int | None = option(
        None,
        "epochs (default: the modality's and strategy's, see the README); finetune: the epochs that train "
        "the backbone, after the head-only --freeze-epochs",
    )
    batch_size: int | None = option(None, "batch size (default: the modality's and strategy's)")
    lr: float | None = option(None, "the head's learning rate (default: the modality's and strategy's)")
    weight_decay: float = option(0.05, "AdamW weight decay (not on norms and biases)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss")
    class_weights: str = option(
        "none", "auto: weigh the loss by inverse class frequency (imbalanced data)", choices=("none", "auto")
    )
    image_size: int | None = option(
        None, "images: input size in pixels (default: the backbone's)", group="image"
    )
    flip_features: bool = option(
        False,
        "images: average each image's features with its mirror image's (2x extraction time)",
        group="image",
    )
    val_fraction: float = option(0.1, "share of the training data held out for validation when none is given")
    seed: int = option(0, "seed of the split, the initialisation and the batch order")
    out: str | None = option(None, "run folder (default: runs/<data>-<backbone>-<strategy>-<time>)")
    freeze_epochs: int | None = option(
        None, "finetune: head-only epochs first (default 1 for images, 0 for text)", metavar="N"
    )
    lr_mult: float = option(10.0, "head LR / earliest layer group's LR, geometric in between")
    # LP-FT (Kumar et al. 2022): after the probe the head has converged, and full-size steps on it
    # pull the pretrained features off before they recover (the first unfrozen epoch fell below
    # the probe). fastai's fine_tune likewise halves its rate once unfrozen and gives the body
    # 1/100 of it; with 0.1 and --lr-mult 10 the body gets lr/10 (top) .. lr/100 (stem).
    lr_after_probe: float = option(
        0.1,
        "finetune after the head-only probe: the head's peak LR as a fraction of --lr (the backbone's "
        "groups scale down from there by --lr-mult)",
    )
    # with the top half of MiniLM training, a step is ~1.5x faster; on TREC-6 and SST-2 that bought
    # 1.5x the updates in the same time and no better accuracy (CHANGELOG.md), so all train
    train_groups: int | None = option(
        None,
        "fine-tune only the top N layer groups of the backbone (default: all); the groups below stay "
        "frozen and cost no backward pass",
        metavar="N",
    )
    # fastai's tta / timm's --tta. Flip averaging gained 0.6 to 2.0 points on every fine-tuned
    # CIFAR-10 bundle measured (`python -m bench levers --only tta`) at 2x the prediction cost;
    # `auto` keeps it only where the user's validation set shows a gain, since a mirror image means
    # something else in some data (text in images, left and right).
    tta: str = option(
        "auto",
        "images, fine-tuning: test-time flip averaging: auto (kept when validation shows a gain beyond "
        "noise), flip, none",
        choices=("auto", "flip", "none"),
        group="image",
    )
    # WiSE-FT (Wortsman et al. 2022) is off by default: side by side on 6 datasets of both
    # modalities (`python -m bench levers --only datasets`; docs/numbers.md) no mix beat the
    # fine-tuned end on validation, so it cost validation passes and changed nothing; it stays
    # for data where it may pay
    interpolate: str = option(
        "off",
        "fine-tuning after a probe: mix the probe's and the fine-tuned weights by the share that scores "
        "best on validation (auto, WiSE-FT), or keep the better of the two (off)",
        choices=("auto", "off"),
    )
    # progressive resizing did not win consistently side by side (CHANGELOG.md: +2.6 points on
    # one CIFAR-10 subset, -1.4 on another, 15% less fine-tuning time), so it is not the default
    resize: str = option(
        "fixed",
        "images, fine-tuning: fixed (the full size every epoch) or progressive (training crops grow "
        "from 2/3 of --image-size to all of it over the unfrozen epochs; not under --time-budget)",
        choices=("progressive", "fixed"),
        group="image",
    )
    augment: str = option(
        "light",
        "images, fine-tuning: none, light (random-resized-crop + flip), strong (+ TrivialAugment)",
        choices=("none", "light", "strong"),
        group="image",
    )
    # frozen: pretrained BatchNorm normalises with its running statistics, also in trained groups
    # (Keras' fine-tuning guide; torchvision's FrozenBatchNorm2d). Small data otherwise shifts
    # the statistics the head was trained on, and momentum-0.01 TF-ported BN barely re-learns them.
    bn: str = option(
        "frozen",
        "pretrained BatchNorm: keep its running statistics while scale and shift train (frozen), or use "
        "and update batch statistics (trainable)",
        choices=("frozen", "trainable"),
    )
    patience: int | None = option(
        None, "stop after N epochs without a better validation accuracy", metavar="N"
    )
    time_budget: float | None = option(
        None, "finish within this many seconds (also 30m, 1h)", parse=parse_duration, metavar="DURATION"
    )
    resume: bool = option(False, "continue the interrupted run in --out (same command)")
    overwrite: bool = option(False, "replace the run already in --out (else it is refused)")
    # the checkpoint is as large as the model and only --resume reads it: gone once the bundle is
    keep_checkpoint: bool = option(
        False, "keep checkpoint.safetensors/.json in --out after a finished run (they are removed by default)"
    )
    log_to: str | None = option(
        None,
        "experiment trackers, comma-separated: tensorboard (event files in <run>/tensorboard), mlflow "
        "(where MLflow logs by default, ./mlflow.db, or $MLFLOW_TRACKING_URI), csv (<run>/metrics.csv); "
        "the first two are extras",
        parse=parse_trackers,
        metavar="TRACKERS",
    )
    device: str = option("auto", "auto (a CUDA GPU when present, else the CPU), cpu, cuda, cuda:N or mps")
    precision: str = option(
        "auto",
        "arithmetic: auto (bf16 on GPUs and CPUs with native bf16, fp16 on older GPUs, else fp32), fp32, "
        "bf16 or fp16 (autocast; weights stay fp32)",
        choices=PRECISION_CHOICES,
    )
    devices: int = option(
        1,
        "processes training data-parallel on this machine: one per GPU, or CPU processes (gloo); "
        "--batch-size stays the global batch (extra distributed; several machines: accelerate launch)",
        metavar="N",
    )
    engine: str = option(
        "auto",
        "who runs frozen-feature extraction on the CPU: auto (ONNX Runtime when installed, measured "
        "faster and matching PyTorch), torch or onnxruntime",
        choices=("auto", "torch", "onnxruntime"),
    )
    text_column: str = option(
        "text",
        "text: column(s) of a table holding the text: text, or title,body (a DataFrame's or dataset's "
        "input column, images too)",
        group="text",
    )
    image_column: str | None = option(
        None,
        "images: the column of a table holding image paths (absolute, or relative to the table); "
        "default: the one column whose values are mostly paths of existing image files",
        group="image",
    )
    label_column: str = option(
        "label",
        "column of a table holding the label (several, comma-separated: one 0/1 column per label for "
        "multi-label, or one per target for regression)",
    )
    task: str = option(
        "auto",
        "what to predict: single (one class), multi (several labels an example), regression (numbers); "
        "auto: several 0/1 label columns or labels holding --label-separator are multi, numbers with "
        "a fraction regression (integers stay classes), else single",
        choices=TASK_CHOICES,
    )
    label_separator: str = option("|", "multi-label: what separates an example's labels in one column")
    pooling: str = option(
        "mean", "text: how token vectors pool into one", choices=("mean", "cls"), group="text"
    )
    feature_layers: str = option(
        "auto",
        "text: the last N encoder layers, each pooled, concatenated into the features; auto: the "
        "linear probe tries 1 and 4 (while 4 layers' features fit 1 GiB) and keeps 4 where it beats 1 "
        "on validation by more than its noise (fine-tuning trains on the last layer)",
        metavar="auto|N",
        group="text",
        parse=parse_feature_layers,
    )
    pair_encoding: str = option(
        "auto",
        "text, sentence pairs (two --text-column): cross (the tokenizer's pair through one encoder "
        "pass), bi (each text alone through the same encoder, compared: Sentence-BERT), or auto: "
        "trains both and keeps the better on validation (Spearman for a score, else the task's metric)",
        choices=("auto", "bi", "cross"),
        group="text",
    )
    max_length: int | None = option(
        None, "text: tokens per text (default: the 99th percentile of the training texts)", group="text"
    )
    adapt_lm: int = option(
        0,
        "text: N epochs of masked-LM training on the task's texts before classification (ULMFiT)",
        metavar="N",
        group="text",
    )
    unlabelled: str | None = option(
        None, "text: more texts for --adapt-lm (a .txt, one per line, or a table)", group="text"
    )

    def __post_init__(self) -> None:
        """Wherever a config is built (the CLI, `graft.Classifier`, a script), its values are
        checked here: types and choices of every field, durations parsed, ranges; each a one-line
        ConfigError naming the option."""
        check_fields(self)
        self.check()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_extras(self) -> None:
        """Each --log-to tracker's library is installed, else a one-line ConfigError naming its
        extra: found, not imported (that waits for the run), so it costs nothing before training.
        Not part of `check`: a saved config stays loadable where the library is not installed."""
        for name in (self.log_to or "").split(","):
            packages = TRACKER_EXTRAS.get(name, ())
            if any(importlib.util.find_spec(package) is None for package in packages):
                extra = f"pip install 'graft-learn[{name}]'"
                raise ConfigError(f"--log-to {name} needs the {name} extra: {extra}")

    def check(self) -> None:
        """Option values that cannot work, caught before any data is read."""
        if self.train_groups is not None and self.train_groups < 1:
            raise ConfigError("--train-groups must be at least 1; for the head alone use --strategy linear")
        if self.resume and not self.out:
            raise ConfigError("--resume needs the --out folder of the interrupted run")
        for name in ("epochs", "batch_size", "image_size", "max_length", "patience", "devices"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name in ("freeze_epochs", "adapt_lm"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")
        for name in ("lr", "lr_mult", "lr_after_probe"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.backbone == "auto" and (self.weights or self.devices > 1 or self.resume):
            raise ConfigError(
                "--backbone auto picks among pretrained candidates in one process: --weights, --devices "
                "and --resume need the backbone named (graft pick prints the flag that pins it)"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be 0 or more, got {self.weight_decay}")


def check_fields(config: Any) -> None:
    """Each field of a frozen config dataclass (TrainConfig, graft.options): parsed where it has
    a parser, then its type, choices and range; each a one-line ConfigError naming the option."""
    for f in fields(config):
        value = getattr(config, f.name)
        if "parse" in f.metadata and isinstance(value, str | numbers.Real | list | tuple):
            value = f.metadata["parse"](value)  # "30m" -> 1800.0; a number is checked
            object.__setattr__(config, f.name, value)
        _check_type(f, value)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"unknown {_flag(f.name)} {value!r}; choose one of {', '.join(choices)}")
        _check_range(f, value)


def _check_range(f: Any, value: Any) -> None:
    """`minimum` and `maximum` in a field's metadata (either or both) bound a number given."""
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if value is None or (low is None or value >= low) and (high is None or value <= high):
        return
    bounds = f"in [{low}, {high}]" if low is not None and high is not None else ""
    bounds = bounds or (f"at least {low}" if low is not None else f"at most {high}")
    raise ConfigError(f"{_flag(f.name)} must be {bounds}, got {value}")


# numbers.Integral/Real: numpy's integers and floats (a scikit-learn parameter grid) count as numbers
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (numbers.Integral,),
    "float": (numbers.Real,),
    "str": (str,),
    "bool": (bool, np.bool_),
}


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


# a flag, and the word after it (its value, when `_is_value` says so)
_FLAG = re.compile(r"--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?: ('[^']*'|[^\s;,()]+))?")


def python_spelling(message: str) -> str:
    """A message that names options as flags (`--val`, `--bn 'frozn'`), as the Python API names
    them (`val=`, `bn='frozn'`; a switch as `overwrite=True`). Other words stay."""
    by_name = {f.name: f for f in fields(TrainConfig)}

    def parameter(match: re.Match[str]) -> str:
        name, word = match.group(1).replace("-", "_"), match.group(2)
        if name not in by_name:
            return match.group(0)
        if word is not None and _is_value(by_name[name], word):
            return f"{name}={word}"
        rest = f" {word}" if word is not None else ""
        return (f"{name}=True" if str(by_name[name].type) == "bool" else f"{name}=") + rest

    spelled = _FLAG.sub(parameter, message)
    return re.sub(r"\b(\w+)=\.\.\. / \1=", r"\1=...", spelled)  # "text_column=... / --text-column"


def _is_value(f: Any, word: str) -> bool:
    """Whether the word after an option's flag is its value (`--bn 'x'`, `--out runs/a`, `--tta
    flip`, `--log-to mlflow`) rather than the message going on (`--epochs must`)."""
    if word.startswith("'") or "/" in word or re.fullmatch(r"-?[0-9][0-9.e+-]*", word):
        return True
    if word in (f.metadata.get("choices") or ()):
        return True
    try:
        return "parse" in f.metadata and f.metadata["parse"](word) is not None
    except (ConfigError, ValueError):
        return False


_COMMAND_LINE = contextvars.ContextVar("graft_command_line", default=False)


@contextmanager
def on_command_line() -> Iterator[None]:
    """Inside, errors name options as flags, as the command line takes them (`graft.cli`)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


@contextmanager
def speaking_python() -> Iterator[None]:
    """Errors a user can fix (GraftError) raised inside, with their options named as the Python
    API's parameters (`python_spelling`), unless the command line called; same class, traceback."""
    try:
        yield
    except GraftError as err:
        if not _COMMAND_LINE.get() and err.args and isinstance(err.args[0], str):
            err.args = (python_spelling(err.args[0]), *err.args[1:])
        raise


def _check_type(f: Any, value: Any) -> None:
    """`value` has the field's declared type (`int | None`, `float`, ...): a number given as text,
    or a word where a number goes, is a one-line ConfigError, not a TypeError deep in a run."""
    declared = [part.strip() for part in str(f.type).split("|")]
    if value is None and "None" in declared:
        return
    allowed = tuple(t for part in declared for t in _TYPES.get(part, ()))
    if not allowed:
        return
    if isinstance(value, bool | np.bool_) and bool not in allowed:  # True is an int, not an epoch count
        allowed = ()
    if not isinstance(value, allowed):
        kind = " or ".join(p for p in declared if p != "None")
        raise ConfigError(f"{_flag(f.name)} must be {kind}, got {value!r}")


def config_fields() -> list[Any]:
    return list(fields(TrainConfig))


@dataclass(frozen=True)
class Plan:
    """What a run resolved the user's config to; report.json keeps it beside the config. Frozen:
    each stage that decides more (the strategy's defaults, `auto`'s choice, the probe's schedule,
    the time budget's subset, a batch that fits the GPU) makes a new plan with `replace` or
    `with_note`, and the job holds the latest."""

    modality: str
    backbone: str
    strategy: str
    strategy_reason: str
    epochs: int
    batch_size: int
    lr: float
    freeze_epochs: int
    device: str
    precision: str = "fp32"  # what --precision resolved to on `device` (runtime.precision.resolve_precision)
    precision_reason: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # where a default was stretched, and why

    def with_note(self, note: str) -> Plan:
        return replace(self, notes=(*self.notes, note))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"notes": list(self.notes)}
