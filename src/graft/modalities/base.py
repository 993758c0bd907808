"""The `Modality` interface (its registry: `registry.py`). A modality knows its data and its
inputs: how to find and read labelled examples, how they become model inputs (decoded and
augmented images, tokenised and length-bucketed texts), what to freeze beyond the backbone's layer
groups, and how a saved bundle takes new inputs. Everything else in graft (recipes, the loop, the
report, the bundle) is the same for every modality and never asks which one it has.

Adding a modality (audio, tables) is one file here, registered in `registry.py` (or by a plugin through
`register_modality`), plus a backbone file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]
Log = Callable[[str], None]


@dataclass(frozen=True)
class StrategyDefaults:
    epochs: int
    lr: float
    batch_size: int
    freeze_epochs: int = 0


@dataclass(frozen=True)
class Defaults:
    """A modality's training defaults (README tables) and the rules that stretch them."""

    strategies: dict[str, StrategyDefaults]
    # fine-tuning quality follows the number of updates, not epochs: small datasets get more epochs
    # up to max_default_epochs, until min_finetune_steps updates (0: epochs are taken as they are)
    min_finetune_steps: int = 0
    max_default_epochs: int = 20
    warmup_share: float = 0.25  # of the fine-tuning steps: one-cycle warm-up


@dataclass
class Features:
    values: np.ndarray  # float32 (N, D); rows of unreadable inputs are zero
    ok: np.ndarray  # bool (N,): False where the input could not be read
    failures: dict[int, str]  # index -> reason
    seconds: float  # extraction time (0 on a cache hit)
    cached: bool
    engine: dict[str, Any] | None = None  # graft.runtime.engine.EngineChoice of the extraction, when run
    reused: int = 0  # rows taken from an earlier extraction (`--backbone auto`'s pick), not encoded


class TrainingSet(Protocol):
    """Training examples prepared once (decoded, tokenised), served as batches on the device."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def steps_per_epoch(self, batch_size: int) -> int: ...

    def batches(self, batch_size: int, seed: int, device: torch.device) -> Callable[[int], Iterator[Batch]]:
        """epoch -> batches; order and augmentation are functions of (seed, epoch), so a resumed
        run sees the same batches."""
        ...

    def plain_inputs(self, limit: int, device: torch.device) -> Iterator[torch.Tensor]:
        """Up to `limit` un-augmented inputs (for the head's feature statistics)."""
        ...

    def grow_inputs(self, epochs: int, model: nn.Module) -> str | None:
        """Progressive resizing where the modality has it and `model` takes smaller inputs: over
        `epochs` epochs the training inputs grow to the full size. Returns what the log says, or
        None (inputs keep their size)."""
        ...

    def timing_batches(self, batch_size: int, device: torch.device, count: int) -> list[Batch]:
        """A few typical training batches, to time steps on."""
        ...

    def close(self) -> None:
        """Release what serving batches holds (loader workers kept across epochs)."""
        ...


class EvalSet(Protocol):
    """Evaluation examples prepared once; batches are (input positions, inputs on the device)."""

    labels: torch.Tensor
    sources: Sequence[Any]  # the examples behind the rows (unreadable ones left out)

    def __len__(self) -> int: ...

    def batches(
        self, device: torch.device, batch_size: int = 128
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class InputPipeline(Protocol):
    """A bundle's input side: raw inputs (files, arrays, texts) -> batches the network takes."""

    def batches(
        self,
        inputs: Sequence[Any],
        batch_size: int,
        device: torch.device,
        on_failure: Callable[[int, str], None] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(positions, model inputs); an input that cannot be read goes to `on_failure(position,
        reason)` when given, else raises."""
        ...

    def preprocess(self, inputs: Any) -> Any: ...

    def as_list(self, inputs: Any) -> list[Any]: ...


class Modality(Protocol):
    name: str  # "image", "text": written into bundles and reports
    unit: str  # "images", "texts": for messages
    size_option: str  # the option that makes each input cheaper (advice): "--image-size", "--max-length"
    default_backbone: str
    packaged_backbones: tuple[str, ...]  # offline candidates of `graft pick`, cheapest first
    # online candidates of `graft pick` by device kind ("cpu", "gpu"), tried only when online
    online_backbones: dict[str, tuple[str, ...]]
    defaults: Defaults
    request_field: str  # what `graft serve` takes: "file" (an uploaded image) or "texts" (JSON)
    serve_batch: int  # `graft serve --max-batch`'s default: inputs per batch across requests
    mirrors: bool  # inputs have a mirror image to average predictions with (--tta)
    # a batch of model inputs -> its mirror image (images: left-right), or None without one
    mirror: Callable[[torch.Tensor], torch.Tensor] | None

    def inputs_in(self, path: Path, config: Any = None) -> list[str]:
        """The files (or rows' file) under `path` this modality would read: detection counts them.
        `config` (a TrainConfig, or None: the defaults) names a table's columns."""
        ...

    def inputs_of_folder(self, folder: Path) -> list[Any]:
        """What `graft predict FOLDER` predicts: the inputs in the folder."""
        ...

    def inputs_of_file(self, path: Path, meta: dict[str, Any]) -> list[Any]:
        """What `graft predict --input FILE` predicts: a table's input column (the bundle's
        `meta` names it), or a plain file's lines."""
        ...

    def accepts(self, item: Any) -> bool:
        """Whether one in-memory input (an array, a PIL image, a string) is this modality's."""
        ...

    def read_upload(self, data: bytes, name: str, prep: Any = None) -> Any:
        """One input from the bytes of a file uploaded to `graft serve` (request_field "file"):
        what `accepts` takes (given the model's preprocessing `prep`, as far along it as the input
        can go before batching); a DataError saying what to send when the bytes are not one.
        It runs in a thread of its own, beside the batch: no PyTorch ops (serve/batching.py says
        why), Pillow or NumPy only."""
        ...

    def example_input(self) -> Any:
        """One small input `accepts` takes: what `graft serve` warms the model with."""
        ...

    def check(self, config: Any) -> None:
        """Options that do not apply to this modality."""
        ...

    def load_splits(self, config: Any) -> Any: ...

    def read_labelled(
        self, path: str | Path, meta: dict[str, Any], classes: Sequence[str]
    ) -> tuple[Any, list]: ...

    def evaluation_split(self, path: Path, classes: Sequence[str]) -> tuple[Path, str] | None:
        """A root laid out as training data is (train/ val/ test/, train.csv dev.csv test.csv):
        its test split, else its validation split, and that split's name; None otherwise."""
        ...

    def preprocessing(self, config: Any, backbone: Any, splits: Any) -> Any: ...

    def adaptation_corpus(self, config: Any, splits: Any) -> list[Any]:
        """Inputs for --adapt-lm (ULMFiT's middle stage); a modality without one raises ConfigError."""
        ...

    def feature_layer_choices(self, config: Any, backbone: Any, n_examples: int) -> tuple[int, ...]:
        """How many of the body's last layers the linear probe on `n_examples` may pool into its
        features, chosen on validation (`training.probe.linear_probe`); () when there is no choice to make."""
        ...

    def use_feature_layers(self, backbone: Any, prep: Any, layers: int) -> Any:
        """The body set to pool its last `layers` layers; returns the preprocessing that records it."""
        ...

    def feature_choice_name(self, prep: Any, layers: int) -> str:
        """For people: what a choice of `feature_layer_choices` gives the probe."""
        ...

    def lr_mult(self, prep: Any) -> float | None:
        """Fine-tuning's --lr-mult for these features where the modality has its own default (None:
        --lr-mult's)."""
        ...

    def fine_tunes_from_probe(self, prep: Any) -> bool:
        """Whether fine-tuning on these features must continue from the probe's head even where
        the modality's fine-tuning otherwise starts its head afresh."""
        ...

    def apply_preprocessing(self, backbone: Any, prep: Any) -> None:
        """The body set to compute the features `prep` records (its layers, its encoding)."""
        ...

    def encoding_choices(self, config: Any, prep: Any) -> tuple[str, ...]:
        """Ways to encode the inputs that the runner trains side by side, keeping the better on
        validation (text: a sentence pair as a cross- or a bi-encoder); () when there is no choice."""
        ...

    def use_encoding(self, config: Any, backbone: Any, prep: Any, splits: Any, encoding: str) -> Any:
        """The body set to encode inputs as `encoding` (one of `encoding_choices`) says; returns the
        preprocessing that records it."""
        ...

    def extra_frozen(self, backbone: Any) -> list[nn.Parameter]: ...

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module: ...

    def training_set(
        self, config: Any, backbone: Any, prep: Any, data: Any, skipped: list
    ) -> TrainingSet: ...

    def eval_set(self, backbone: Any, prep: Any, data: Any, skipped: list) -> EvalSet: ...

    def preparation_seconds(self, prep: Any, sources: Sequence[Any]) -> float:
        """Seconds per input of preparing fine-tuning's training set (decoding images once), for
        --time-budget's plan; 0 when it is already prepared or costs nothing to speak of."""
        ...

    def encode(
        self,
        backbone: Any,
        prep: Any,
        sources: Sequence[Any],
        *,
        flip: bool,
        batch_size: int,
        desc: str,
        engine: str = "auto",
    ) -> Features:
        """Frozen features of `sources`; `engine` (auto, torch, onnxruntime) runs the forward pass
        where the modality supports more than PyTorch (see graft.runtime.engine)."""
        ...

    def fingerprint(self, sources: Sequence[Any]) -> str: ...

    def show(self, source: Any) -> dict[str, str]:
        """One example as people see it in a report: {"image": data URI} or {"text": ...}."""
        ...

    def bundle_extras(self, backbone: Any) -> dict[str, Any]:
        """What the bundle needs beyond weights to rebuild the body offline (a text encoder's config)."""
        ...

    def bundle_assets(self, backbone: Any) -> dict[str, Callable[[Path], None]]:
        """Folders written beside the weights (a tokenizer), by name."""
        ...

    def rebuild_body(self, meta: dict[str, Any]) -> tuple[nn.Module, int]:
        """The bundle's body with random weights, and its feature width: no download."""
        ...

    def input_pipeline(self, prep: Any, backbone: Any = None, run_dir: Path | None = None) -> InputPipeline:
        """The input side for prediction, from a live backbone or a saved run folder."""
        ...

    def preprocessing_from_dict(self, d: dict[str, Any]) -> Any: ...
