"""Every subcommand's options beyond `TrainConfig`'s, one frozen dataclass each, as Hugging Face's
`HfArgumentParser` reads them: a field's metadata carries its help (its default is shown from the
field), choices, metavar, nargs, range and whether it is positional. `cli.add_arguments` turns
them into argparse options and the Python entry points (`export`, `serve`, `evaluate_folder`,
`find_lr`, `CompareConfig`, `run_demo`) take their defaults from them, so each default is written
once. Built, they check themselves as `TrainConfig` does: one-line `ConfigError`s naming the option.

Light on purpose (no torch): `graft <command> --help` imports this module.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .config import PRECISION_CHOICES, TrainConfig, check_fields, option
from .errors import ConfigError

ENGINE_CHOICES = ("auto", "torch", "onnxruntime")  # graft.runtime.engine
METHODS = ("linear", "finetune", "scratch")  # graft compare's methods, in the order they are shown
RUN_DIR_HELP = "a run folder (graft.json + model.safetensors)"

# compare: the training options that apply to every run it makes
COMPARE_OPTIONS = (
    "data", "test", "val", "data_root", "image_size", "val_fraction", "device", "text_column",
    "label_column", "max_length", "time_budget", "batch_size", "tta", "task", "label_separator",
    "image_column",
)  # fmt: skip
# pick: the options that change which data is scored and how candidates see it
PICK_OPTIONS = (
    "data", "val", "data_root", "image_size", "val_fraction", "device", "text_column", "label_column",
    "max_length", "time_budget", "label_separator", "image_column", "precision",
)  # fmt: skip
# lr-find: the options that change what the range test measures
LR_FIND_OPTIONS = (
    "data", "val", "data_root", "backbone", "weights", "strategy", "head", "dropout", "image_size",
    "flip_features", "batch_size", "val_fraction", "seed", "device", "text_column", "label_column",
    "pooling", "max_length", "augment", "precision", "train_groups", "bn", "image_column",
)  # fmt: skip


def positional(help: str, **meta: Any) -> Any:
    """A positional argument (required unless it has `nargs`): its help; `nargs`, `metavar`."""
    return field(metadata={"help": help, "positional": True, **meta})


# Shared flags: a factory each (a dataclass field cannot be shared), so the text is written once.
def json_flag() -> Any:
    return option(False, "print one JSON object as the last line of stdout")


def precision_flag() -> Any:
    return option(
        "auto",
        "arithmetic: auto (bf16 on GPUs and CPUs with native bf16, else fp32), fp32 (what an export's "
        "parity check compares against), bf16 or fp16",
        choices=PRECISION_CHOICES,
    )


def text_column_flag() -> Any:
    """eval/predict on a table whose columns are named unlike the training table's."""
    return option(None, "text model: the table's text column (default: the training one)")


def image_column_flag() -> Any:
    return option(
        None, "image model: the table's column of image paths (default: the training one, else the one found)"
    )


def label_column_flag() -> Any:
    return option(None, "text model: the table's label column (default: the training one)")


@dataclass(frozen=True)
class Options:
    """A subcommand's options. `config_fields`: the TrainConfig fields it also takes (generated
    from TrainConfig), with `config_defaults` where its defaults differ from training's and
    `config_help` where their meaning does."""

    config_fields: ClassVar[tuple[str, ...]] = ()
    config_defaults: ClassVar[dict[str, Any]] = {}
    config_help: ClassVar[dict[str, str]] = {}  # where a shared option means something else here

    def __post_init__(self) -> None:
        check_fields(self)  # types, choices, ranges: as TrainConfig checks itself
        self.check()

    def check(self) -> None:
        """What the fields' metadata cannot say; nothing by default."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Any:
        """The options as parsed by the command line (a field argparse did not set keeps its default)."""
        given = vars(args)
        return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})


@dataclass(frozen=True)
class TrainOptions(Options):
    """`graft train`: every TrainConfig field, then these."""

    config_fields: ClassVar[tuple[str, ...]] = tuple(f.name for f in fields(TrainConfig))
    json: bool = json_flag()


@dataclass(frozen=True)
class EvalOptions(Options):
    run_dir: str = positional(RUN_DIR_HELP)
    data: str = positional("labelled data of the same kind as the run's training data")
    text_column: str | None = text_column_flag()
    image_column: str | None = image_column_flag()
    label_column: str | None = label_column_flag()
    precision: str = precision_flag()
    json: bool = json_flag()


@dataclass(frozen=True)
class PredictOptions(Options):
    run_dir: str = positional(RUN_DIR_HELP)
    inputs: list[str] = positional("image files, or texts for a text model", nargs="*", metavar="INPUT")
    input: str | None = option(
        None,
        "a table (.csv/.tsv/.jsonl/.parquet/.feather): a text model reads its text column, an image model "
        "its column of image paths (relative to the table); or a .txt file, one input per line",
    )
    top_k: int | None = option(
        None,
        "labels per input, most probable first (default: 1 class; multi-label: every label over its "
        "threshold, at most this many)",
        minimum=1,
    )
    engine: str = option(
        "auto",
        "who runs the network on the CPU: auto (ONNX Runtime for big jobs when measured faster), "
        "torch or onnxruntime",
        choices=ENGINE_CHOICES,
    )
    text_column: str | None = text_column_flag()
    image_column: str | None = image_column_flag()
    label_column: str | None = label_column_flag()
    precision: str = precision_flag()
    json: bool = json_flag()


@dataclass(frozen=True)
class LrFindOptions(Options):
    """`graft lr-find`: the TrainConfig fields that change what the range test measures, then these."""

    config_fields: ClassVar[tuple[str, ...]] = LR_FIND_OPTIONS
    config_defaults: ClassVar[dict[str, Any]] = {"strategy": "linear"}
    steps: int = option(100, "steps of the range test", minimum=1)
    out: str = option("lr-find", "folder for lr_find.png and lr_find.json")
    json: bool = json_flag()


@dataclass(frozen=True)
class ExportOptions(Options):
    run_dir: str = positional(RUN_DIR_HELP)
    format: str = option("onnx", "export format")  # checked by the exporters' registry
    out: str | None = option(None, "output file (default: RUN_DIR/model.onnx)")
    samples: int = option(32, "inputs the parity check compares on")
    json: bool = json_flag()

    def check(self) -> None:
        if self.samples < 1:  # as the exporter says it (graft.export.onnx), before anything loads
            raise ConfigError("--samples must be at least 1: the parity check is what makes the export safe")


@dataclass(frozen=True)
class ReportOptions(Options):
    run_dir: str = positional("a run folder")
    json: bool = json_flag()


@dataclass(frozen=True)
class CompareOptions(Options):
    """`graft compare`: the training options every run shares (TrainConfig's), then these, kept as
    the user typed them (`parse_sizes`, `parse_methods` and `parse_backbones` read them)."""

    config_fields: ClassVar[tuple[str, ...]] = COMPARE_OPTIONS
    config_help: ClassVar[dict[str, str]] = {
        "time_budget": "finish the whole compare within this many seconds (also 30m, 1h): a tenth (at "
        "least 5 s) is kept for its own work, and each run gets an equal share of what is left when it "
        "starts, less what its method's runs went over theirs (the default: no limit, but scratch gets "
        "the seconds fine-tuning took on the same subset, or 3 minutes without fine-tuning)",
    }
    labels_per_class: str = option(
        "10,50,250,all",
        "data sizes: examples per class (multi-label: per label; regression: per target decile)",
    )
    methods: str = option(",".join(METHODS), "")
    backbones: str | None = option(None, "comma-separated backbones (default: the modality's)")
    seeds: int = option(1, "subsets drawn per size", minimum=1)
    out: str = option("runs/compare", "output folder")
    json: bool = json_flag()

    def check(self) -> None:
        parse_sizes(self.labels_per_class)
        parse_methods(self.methods)


@dataclass(frozen=True)
class PickOptions(Options):
    """`graft pick`: the data options training takes, then these."""

    config_fields: ClassVar[tuple[str, ...]] = PICK_OPTIONS
    config_help: ClassVar[dict[str, str]] = {
        "time_budget": "finish the pick within this many seconds (also 30m, 1h): each candidate gets an "
        "equal share, and one whose feature extraction cannot finish in it is skipped",
        "image_size": "images: every candidate's input size in pixels (default: each one's native size)",
    }
    candidates: str | None = option(
        None, "comma-separated backbones to score (default: the installed packaged ones of the data's kind)"
    )
    per_class: int | None = option(
        None,
        "training examples per class each candidate is scored on (default: as many as --time-budget "
        "lets every candidate read, else as many as all of them read in the time the cheapest "
        "would take for all the data: about one more linear probe)",
        minimum=2,
    )
    json: bool = json_flag()


@dataclass(frozen=True)
class ServeOptions(Options):
    run_dir: str = positional("a run folder")
    # 127.0.0.1: a model is not published to the network by accident
    host: str = option("127.0.0.1", "address to bind", default_means="this machine")
    port: int = option(8000, "", minimum=0, maximum=65535)
    precision: str = precision_flag()
    token: str | None = option(
        None, "require Authorization: Bearer TOKEN on /predict and /metrics (default: $GRAFT_SERVE_TOKEN)"
    )
    insecure: bool = option(False, "allow a network --host without a token (an open endpoint)")
    # default: the modality's `serve_batch` (32 images, 64 texts: measured, docs/guide/export-serve.md);
    # 5 ms is about 1% of one image's latency and lets concurrent requests meet in a batch
    max_batch: int | None = option(
        None,
        "inputs per batch across requests, a text request counting its texts (default: 32 images, 64 texts)",
        minimum=1,
    )
    max_wait_ms: float = option(5.0, "how long a request waits for others to join its batch", minimum=0)
    max_queue: int = option(256, "requests waiting for a batch; past it: 503 with Retry-After", minimum=1)
    request_timeout: float = option(
        30.0, "seconds a request may wait for its answer; past it: 504", minimum=0.001
    )
    engine: str = option(
        "auto",
        "who runs the network on the CPU: auto (raced at start-up at --max-batch inputs: ONNX Runtime "
        "when its outputs match fp32 PyTorch and it is faster), torch or onnxruntime",
        choices=ENGINE_CHOICES,
    )


@dataclass(frozen=True)
class BackbonesOptions(Options):
    json: bool = json_flag()


@dataclass(frozen=True)
class DemoConfig(Options):
    """What `graft demo` runs (`demo.run_demo`)."""

    labels_per_class: int = option(10, "training images per class", minimum=1)
    # digits are 8x8: 96 px keeps the demo fast; the backbone trained at 224
    image_size: int = option(96, "input size in pixels", minimum=1)
    seed: int = option(0, "seed of the subset and training")
    out: str | None = option(None, "run folder (default: runs/demo)")


@dataclass(frozen=True)
class DemoOptions(DemoConfig):
    json: bool = json_flag()


# each subcommand's options, in the order `graft --help` lists the subcommands
COMMAND_OPTIONS: dict[str, type[Options]] = {
    "train": TrainOptions,
    "eval": EvalOptions,
    "predict": PredictOptions,
    "lr-find": LrFindOptions,
    "export": ExportOptions,
    "report": ReportOptions,
    "compare": CompareOptions,
    "pick": PickOptions,
    "serve": ServeOptions,
    "backbones": BackbonesOptions,
    "demo": DemoOptions,
}


def parse_sizes(text: str) -> tuple[int | None, ...]:
    """'10,50,all' -> (10, 50, None): labels per class of each data size (None: all)."""
    sizes: list[int | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            sizes.append(None)
        elif part.isdigit() and int(part) > 0:
            sizes.append(int(part))
        else:
            raise ConfigError(
                f"bad --labels-per-class {text!r}: use positive integers and 'all', e.g. 10,50,all"
            )
    return tuple(sizes)


def parse_methods(text: str) -> tuple[str, ...]:
    """'linear, finetune' -> ('linear', 'finetune'), each one of METHODS."""
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if not methods or set(methods) - set(METHODS):
        raise ConfigError(f"bad --methods {text!r}: choose from {', '.join(METHODS)}")
    return methods


def parse_candidates(text: str | None) -> tuple[str, ...] | None:
    """'a, b' -> ('a', 'b'); none given -> None: the modality's packaged backbones."""
    names = tuple(b.strip() for b in (text or "").split(",") if b.strip())
    return names or None


def parse_backbones(text: str | None) -> tuple[str | None, ...]:
    """'a,b' -> ('a', 'b'); none given -> (None,): the modality's default backbone."""
    return tuple(b.strip() for b in text.split(",")) if text else (None,)
