"""The ONNX graph of a graft model, shared by `graft export` (graft.export.onnx) and prediction on
onnxruntime (graft.predict.onnx_predictor): what the graph takes, per modality (`Signature`: images' float32
NCHW `pixel_values`; texts' int64 `input_ids` and `attention_mask`), what it gives, per task (the
activated outputs, named by `Task.outputs_are`), and the graph itself, traced from a predictor with
graft's metadata (`onnx_model_bytes`). Neither prediction nor export is imported here."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..errors import ConfigError
from ..modalities.base import Modality
from ..tasks import Task

OUTPUT = "probabilities"  # the output's name when the task's outputs are probabilities
EXPORT_FORMAT = 1  # of the graft.* metadata; bump when its meaning changes
EXTRA_HINT = "pip install 'graft-learn[onnx]'"


def require_onnx() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or a one-line ConfigError naming the extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ConfigError(f"ONNX needs the `onnx` extra ({err.name} is missing): {EXTRA_HINT}") from None
    return onnx, onnxruntime


def require_runtime() -> Any:
    """onnxruntime alone: loading an exported model does not need the `onnx` package."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"ONNX models run on onnxruntime: {EXTRA_HINT}") from None
    return onnxruntime


# --------------------------------------------------------------------------- per-modality inputs


class _ImageOutputs(nn.Module):
    """Normalised NCHW images -> the task's outputs (class probabilities, label probabilities or
    values in the data's units: `Task.activate`, traced into the graph)."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.task.activate(self.model(pixel_values))


class _TextOutputs(nn.Module):
    """(input_ids, attention_mask) -> the task's outputs. graft's text body masks `ids != pad_id`
    itself; positions the caller masks out become padding, so both conventions agree."""

    def __init__(self, model: nn.Module, pad_id: int, task: Task) -> None:
        super().__init__()
        self.model, self.pad_id, self.task = model, pad_id, task

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids = torch.where(attention_mask.bool(), input_ids, torch.full_like(input_ids, self.pad_id))
        return self.task.activate(self.model(ids))


def output_name(task: Task) -> str:
    """The graph's output: `probabilities` (the name exports have always had), or `values`."""
    return task.outputs_are if task.outputs_are != "probabilities" else OUTPUT


@dataclass(frozen=True)
class Signature:
    """How one modality's model inputs become ONNX inputs, and back at prediction time."""

    inputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    wrap: Callable[[nn.Module, Any, Task], nn.Module]  # (graft model, preprocessing, task) -> outputs
    example: Callable[[Any], tuple[torch.Tensor, ...]]  # tracing inputs
    feeds: Callable[[torch.Tensor, Any], dict[str, np.ndarray]]  # a pipeline batch -> session inputs
    synthetic: Callable[[Any, int], list[Any]]  # parity inputs when the run's data is not here
    describe: Callable[[Any], dict[str, str]]  # input name -> what it holds (metadata)


def _image_feeds(batch: torch.Tensor, prep: Any) -> dict[str, np.ndarray]:
    # the pipeline hands channels_last tensors: onnxruntime wants plain C order
    return {"pixel_values": np.ascontiguousarray(batch.float().cpu().numpy())}


def _synthetic_images(prep: Any, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    size = prep.input_size
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _describe_image(prep: Any) -> dict[str, str]:
    s = prep.input_size
    return {
        "pixel_values": f"float32 (batch, 3, {s}, {s}), RGB: short side resized to {prep.resize_size} "
        f"({prep.interpolation}, antialiased), center-cropped to {s}, scaled to [0, 1], then "
        f"(x - mean) / std per channel with mean {list(prep.mean)}, std {list(prep.std)}"
    }


def _text_example(prep: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((2, 8), prep.pad_id + 1, dtype=torch.long)  # any in-vocabulary id traces the same
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return torch.where(mask.bool(), ids, torch.full_like(ids, prep.pad_id)), mask


def _text_feeds(batch: torch.Tensor, prep: Any) -> dict[str, np.ndarray]:
    ids = batch.cpu().numpy().astype(np.int64)
    return {"input_ids": ids, "attention_mask": (ids != prep.pad_id).astype(np.int64)}


_SAMPLE_TEXTS = (
    "the film was a delight from start to finish",
    "a dull, overlong story with no ending",
    "what is the capital of australia ?",
    "how many moons does jupiter have ?",
    "great service and friendly staff",
    "the package arrived broken and late",
    "who wrote the origin of species ?",
    "an ordinary day",
)


def _synthetic_texts(prep: Any, n: int) -> list[Any]:
    texts = [_SAMPLE_TEXTS[i % len(_SAMPLE_TEXTS)] for i in range(n + 1)]
    return list(zip(texts[:-1], texts[1:], strict=True)) if prep.pairs else texts[:-1]


def _describe_text(prep: Any) -> dict[str, str]:
    common = f"int64 (batch, sequence), at most {prep.max_length} tokens, padded with id {prep.pad_id}"
    if prep.bi:
        common = (
            f"int64 (batch, 2 x length): a pair's first text's ids, then its second's, each padded "
            f"with id {prep.pad_id} to the same length (at most {prep.max_length} tokens)"
        )
    return {
        "input_ids": f"{common}: the tokenizer's ids (tokenizer files in graft.assets)",
        "attention_mask": "int64 (batch, sequence): 1 for tokens, 0 for padding",
    }


_SIGNATURES: dict[str, Signature] = {
    "image": Signature(
        inputs=("pixel_values",),
        dynamic_axes={"pixel_values": {0: "batch"}},
        wrap=lambda model, prep, task: _ImageOutputs(model, task),
        example=lambda prep: (torch.zeros(2, 3, prep.input_size, prep.input_size),),
        feeds=_image_feeds,
        synthetic=_synthetic_images,
        describe=_describe_image,
    ),
    "text": Signature(
        inputs=("input_ids", "attention_mask"),
        dynamic_axes={name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask")},
        wrap=lambda model, prep, task: _TextOutputs(model, prep.pad_id, task),
        example=_text_example,
        feeds=_text_feeds,
        synthetic=_synthetic_texts,
        describe=_describe_text,
    ),
}


def signature_for(modality: Modality) -> Signature:
    if modality.name not in _SIGNATURES:
        raise ConfigError(f"ONNX export does not handle {modality.name} models yet")
    return _SIGNATURES[modality.name]


def _trace(predictor: Any, signature: Signature) -> bytes:
    from ..runtime.engine import onnx_bytes

    wrapper = signature.wrap(predictor.model, predictor.preprocessing, predictor.task).eval()
    output = output_name(predictor.task)
    blob = onnx_bytes(
        wrapper,
        signature.example(predictor.preprocessing),
        list(signature.inputs),
        [output],
        {**signature.dynamic_axes, output: {0: "batch"}},
    )
    predictor.model.eval()  # the exporter restores the wrapper's mode; keep the model's explicit
    return blob


def metadata(predictor: Any, signature: Signature, assets: str) -> dict[str, str]:
    """The `graft.*` metadata: what another runtime needs to prepare inputs and name outputs."""
    prep = predictor.preprocessing
    prep_dict = prep.to_dict() | ({"resize_size": prep.resize_size} if hasattr(prep, "resize_size") else {})
    return {
        "graft.format": str(EXPORT_FORMAT),
        "graft.version": __version__,
        "graft.modality": predictor.modality.name,
        "graft.classes": json.dumps(list(predictor.classes_)),
        "graft.preprocessing": json.dumps(prep_dict),
        "graft.inputs": json.dumps(signature.describe(prep)),
        "graft.outputs": json.dumps({output_name(predictor.task): predictor.task.output_meaning}),
        "graft.assets": assets,  # folder beside the .onnx file holding the tokenizer ('' for none)
        "graft.bundle": json.dumps(predictor.meta),
    }


def onnx_model_bytes(predictor: Any, assets: str) -> bytes:
    """The predictor's network as a checked ONNX model with graft's metadata, serialised."""
    onnx, _ = require_onnx()
    signature = signature_for(predictor.modality)
    model = onnx.load_from_string(_trace(predictor, signature))
    onnx.helper.set_model_props(model, metadata(predictor, signature, assets))
    model.producer_name, model.producer_version = "graft", __version__
    model.doc_string = (
        f"graft {predictor.meta['backbone']['name']} {predictor.task.describe}: "
        f"{output_name(predictor.task)} over graft.classes"
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()
