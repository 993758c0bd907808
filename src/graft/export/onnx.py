"""ONNX: `graft export RUN --format onnx` and `graft.load("model.onnx")` through onnxruntime.

The ONNX model takes exactly what `graft.load(run).preprocess(inputs)` gives (images: float32 NCHW,
resized, cropped and normalised; texts: the tokenizer's `input_ids` and `attention_mask`, int64)
and outputs class probabilities, with a dynamic batch axis (and sequence axis for texts).

Beside `model.onnx`, a text model's tokenizer goes to `model.assets/tokenizer/` (the run folder's
asset folders, copied as they are: JSON and text files the `tokenizers` library reads without
graft). The metadata (`graft.*` keys) holds the class names, the preprocessing, the inputs'
description, the graft version and the whole `graft.json`, so another runtime needs nothing else.

Every export is checked: onnxruntime and PyTorch, both in float32 (`graft.load(run,
precision="fp32")`; the default `graft.load(run)` runs bf16 on CPUs with native bf16), must agree
within 1e-4 on the class probabilities of up to 32 inputs (the run's validation data when it can
be read again, else synthetic inputs), or nothing is written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..bundle import META_FILE, atomic_write, save_folder, shown_classes
from ..compute import FP32
from ..errors import BundleError, ConfigError, GraftError
from ..modalities import get_modality
from ..modalities.base import InputPipeline, Modality
from ..options import ExportOptions
from ..tasks import Task, task_from_meta
from . import Exporter, ExportError, Log, register_exporter

OPSET = 17
TOLERANCE = 1e-4  # max |p_onnx - p_torch| over the parity samples
PARITY_BATCH = 8  # small batches: several batch sizes and text lengths go through the dynamic axes
OUTPUT = "probabilities"
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
    return "values" if task.name == "regression" else OUTPUT


OUTPUT_MEANING = {
    "single": "float32 (batch, classes): softmax, in graft.classes order",
    "multi": "float32 (batch, labels): each label's sigmoid probability, in graft.classes order; a label "
    "applies at or above its threshold (graft.bundle: task.state.thresholds)",
    "regression": "float32 (batch, targets): the predicted values in the data's units, in graft.classes "
    "order",
}


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


def _synthetic_texts(prep: Any, n: int) -> list[str]:
    return [_SAMPLE_TEXTS[i % len(_SAMPLE_TEXTS)] for i in range(n)]


def _describe_text(prep: Any) -> dict[str, str]:
    common = f"int64 (batch, sequence), at most {prep.max_length} tokens, padded with id {prep.pad_id}"
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


# --------------------------------------------------------------------------- onnxruntime predictor


class OnnxPredictor:
    """A graft model on onnxruntime: the same `predict` / `predict_proba` / `preprocess` API and
    `classes_` as `graft.predict.Predictor`; graft's own input pipeline feeds the session."""

    runtime = "onnx"

    def __init__(
        self, session: Any, meta: dict[str, Any], modality: Modality, pipeline: InputPipeline
    ) -> None:
        self.session = session
        self.meta = meta
        self.modality = modality
        self.pipeline = pipeline
        self.preprocessing = getattr(pipeline, "prep", None)
        self.classes_ = shown_classes(meta)
        self.signature = signature_for(modality)
        self.device = torch.device("cpu")  # where inputs are prepared; the session has its own
        self.precision = FP32  # the exported graph computes in float32
        self.task = task_from_meta(meta)
        self.output = output_name(self.task)

    def preprocess(self, inputs: Any) -> Any:
        """What the ONNX model takes: a float32 NCHW array for images, token ids per text."""
        return self.pipeline.preprocess(inputs)

    def outputs(self, inputs: Any, batch_size: int = 64) -> np.ndarray:
        """The task's outputs per input: class or label probabilities, or predicted values."""
        items = self.pipeline.as_list(inputs)
        out = np.zeros((len(items), len(self.classes_)), np.float32)
        if not items:
            return out
        for index, batch in self.pipeline.batches(items, batch_size, self.device):
            feeds = self.signature.feeds(batch, self.preprocessing)
            out[index.numpy()] = self.session.run([self.output], feeds)[0]
        return out

    def predict_proba(self, inputs: Any, batch_size: int = 64) -> np.ndarray:
        if self.task.name == "regression":
            raise ConfigError("a regression model predicts values, not probabilities: use predict")
        return self.outputs(inputs, batch_size)

    def predict_proba_or_skip(
        self, inputs: Any, batch_size: int = 64
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Like `predict_proba`, but an unreadable input does not stop the others: its row is NaN
        and `failures` maps its position to a one-line reason (as `Predictor`'s)."""
        items = self.pipeline.as_list(inputs)
        failures: dict[int, str] = {}
        out = np.full((len(items), len(self.classes_)), np.nan, np.float32)
        batches = self.pipeline.batches(items, batch_size, self.device, on_failure=failures.__setitem__)
        for index, batch in batches if items else ():
            feeds = self.signature.feeds(batch, self.preprocessing)
            out[index.numpy()] = self.session.run([self.output], feeds)[0]
        return out, failures

    def predict(self, inputs: Any, batch_size: int = 64) -> Any:
        return self.task.decide(self.outputs(inputs, batch_size), self.classes_)


def _session(model: bytes | Path, device: str | torch.device | None) -> Any:
    from ..compute import resolve_device

    ort = require_runtime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: graft prints its own summary
    providers = ["CPUExecutionProvider"]
    if resolve_device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as err:  # noqa: BLE001 - onnxruntime's errors are many and untyped: the file is bad
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BundleError(
            f"{model if isinstance(model, Path) else 'model'}: onnxruntime cannot load it ({first})"
        ) from None


def _onnx_predictor(session: Any, meta: dict[str, Any], asset_root: Path) -> OnnxPredictor:
    modality = get_modality(meta.get("modality", "image"))
    prep = modality.preprocessing_from_dict(meta["preprocessing"])
    return OnnxPredictor(session, meta, modality, modality.input_pipeline(prep, run_dir=asset_root))


def load_onnx(path: str | Path, device: str | torch.device | None = None) -> OnnxPredictor:
    """An exported `.onnx` file, or a run folder (its fresh `model.onnx`, else exported in memory)."""
    path = Path(path)
    require_runtime()
    if path.is_dir():
        return _load_run(path, device)
    if not path.is_file():
        raise BundleError(f"{path} does not exist")
    session = _session(path, device)
    props = session.get_modelmeta().custom_metadata_map
    if "graft.bundle" not in props:
        raise BundleError(f"{path} has no graft metadata: export it with `graft export RUN --format onnx`")
    assets = props.get("graft.assets", "")
    if assets and not (path.parent / assets).is_dir():
        raise BundleError(f"{path} needs the folder {assets}/ beside it (its tokenizer): copy it along")
    return _onnx_predictor(session, json.loads(props["graft.bundle"]), path.parent / assets)


def _load_run(run_dir: Path, device: str | torch.device | None) -> OnnxPredictor:
    exported = run_dir / "model.onnx"
    meta_file = run_dir / META_FILE
    if exported.is_file() and meta_file.is_file() and exported.stat().st_mtime >= meta_file.stat().st_mtime:
        return load_onnx(exported, device)
    require_onnx()
    predictor = _torch_predictor(run_dir)
    blob = onnx_model_bytes(predictor, assets="")  # the run folder holds the assets itself
    return _onnx_predictor(_session(blob, device), predictor.meta, run_dir)


# --------------------------------------------------------------------------- export


def _torch_predictor(run_dir: Path) -> Any:
    from ..predict import load

    return load(run_dir, device="cpu", runtime="torch", precision="fp32")  # like with like: ONNX is fp32


def _trace(predictor: Any, signature: Signature) -> bytes:
    from ..engine import onnx_bytes

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
        "graft.outputs": json.dumps({output_name(predictor.task): OUTPUT_MEANING[predictor.task.name]}),
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


def _spread(items: Sequence[Any], limit: int) -> list[Any]:
    """Up to `limit` items spread evenly over the sequence (every class of a sorted folder)."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def validation_inputs(run_dir: Path, modality: Modality, limit: int) -> tuple[list[Any], str]:
    """The run's validation inputs, read again with report.json's config (the bundle does not keep
    them), or ([], why not)."""
    from ..config import TrainConfig

    report = run_dir / "report.json"
    if not report.is_file():
        return [], "the run folder has no report.json"
    config = json.loads(report.read_text()).get("config") or {}
    data = config.get("data")
    if not data or not Path(data).exists():
        return [], f"its training data {data!r} is not on this machine"
    known = {f.name for f in fields(TrainConfig)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped files were reported at training time
            splits = modality.load_splits(TrainConfig(**{k: v for k, v in config.items() if k in known}))
    except (GraftError, OSError, TypeError, ValueError) as err:
        return (
            [],
            f"its data cannot be read again ({str(err).splitlines()[0] if str(err) else type(err).__name__})",
        )
    return _spread(splits.val.sources, limit), ""


def parity_inputs(run_dir: Path, predictor: Any, limit: int) -> tuple[list[Any], str]:
    """Up to `limit` inputs and a phrase saying what they are."""
    unit = predictor.modality.unit
    items, why = validation_inputs(run_dir, predictor.modality, limit)
    if items:
        return items, f"{len(items)} validation {unit} of the run"
    synthetic = signature_for(predictor.modality).synthetic(predictor.preprocessing, limit)
    return synthetic, f"{len(synthetic)} synthetic {unit} ({why})"


@torch.inference_mode()
def torch_probabilities(predictor: Any, items: Sequence[Any], batch_size: int = PARITY_BATCH) -> np.ndarray:
    """The reference: the graft model in float32 on the CPU (no autocast, unlike `predict_proba`)."""
    out = np.zeros((len(items), len(predictor.classes_)), np.float32)
    predictor.model.eval()
    for index, batch in predictor.pipeline.batches(items, batch_size, torch.device("cpu")):
        out[index.numpy()] = predictor.task.activate(predictor.model(batch).float())
    return out


def parity(predictor: Any, onnx_predictor: OnnxPredictor, items: Sequence[Any]) -> float:
    """max |p_onnx - p_torch| over the items' probabilities; regression's values in units of each
    target's training standard deviation, so one tolerance fits targets of any scale."""
    reference = torch_probabilities(predictor, items)
    difference = np.abs(onnx_predictor.outputs(items, batch_size=PARITY_BATCH) - reference)
    if predictor.task.name == "regression":
        difference = difference / np.asarray(predictor.task.state.get("std") or 1.0, dtype=np.float32)
    return float(difference.max())


def asset_folders(run_dir: Path, modality: Modality) -> list[Path]:
    """The bundle's asset folders (a text model's tokenizer/), by the names the modality writes;
    only the names are read, so no backbone is needed."""
    return [run_dir / name for name in sorted(modality.bundle_assets(None)) if (run_dir / name).is_dir()]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _copy_assets(folders: list[Path]) -> Callable[[Path], None]:
    def write(target: Path) -> None:
        for folder in folders:
            shutil.copytree(folder, target / folder.name)
        target.chmod(0o777 & ~_umask())  # a staging folder is private (0700); the export is to ship

    return write


def _write_model(blob: bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        tmp.write_bytes(blob)
        tmp.chmod(0o666 & ~_umask())  # a temporary file is private (0600); the export is to ship

    return write


def export_onnx(
    run_dir: Path, out: Path, *, samples: int = ExportOptions.samples, log: Log = lambda line: None
) -> dict[str, Any]:
    """Export, check parity on up to `samples` inputs, then write `out` (+ `<stem>.assets/`)."""
    if samples < 1:
        raise ConfigError("--samples must be at least 1: the parity check is what makes the export safe")
    started = time.perf_counter()
    require_onnx()
    predictor = _torch_predictor(run_dir)
    signature_for(predictor.modality)  # an unsupported modality fails before the slow tracing
    folders = asset_folders(run_dir, predictor.modality)
    assets = f"{out.stem}.assets" if folders else ""
    log(f"exporting {run_dir} ({predictor.modality.name}, {predictor.meta['backbone']['name']}) to ONNX")
    blob = onnx_model_bytes(predictor, assets)
    checked = _onnx_predictor(_session(blob, "cpu"), predictor.meta, run_dir)
    items, where = parity_inputs(run_dir, predictor, samples)
    diff = parity(predictor, checked, items)
    log(f"parity at fp32: max |p_onnx - p_torch| = {diff:.1e} on {where} (tolerance {TOLERANCE:.0e})")
    if not diff <= TOLERANCE:  # also catches NaN
        raise ExportError(
            f"parity check failed: onnxruntime and PyTorch probabilities differ by up to {diff:.1e} "
            f"(> {TOLERANCE:.0e}) on {where}; nothing was written"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if folders:  # assets first, the model last: a .onnx file always has its tokenizer beside it
        save_folder(out.parent, assets, _copy_assets(folders))
    atomic_write(out, _write_model(blob))
    return {
        "format": "onnx",
        "out": str(out),
        "assets": str(out.parent / assets) if assets else None,
        "bytes": len(blob),
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "parity_precision": "fp32",  # graft.load(run, precision="fp32") gives these probabilities
        "samples": len(items),
        "sample_source": where,
        "opset": OPSET,
        "seconds": round(time.perf_counter() - started, 2),
    }


register_exporter(
    Exporter(
        name="onnx",
        suffix=".onnx",
        export=export_onnx,
        description="ONNX (opset 17) for onnxruntime and other runtimes; probabilities out",
    )
)
