"""ONNX: `graft export RUN --format onnx` (the graph itself: graft.predict.graph; predicting from it:
graft.predict.onnx_predictor, `graft.load("model.onnx")`).

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
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bundle import atomic_write, save_folder
from ..errors import ConfigError, GraftError
from ..modalities.base import Modality
from ..options import ExportOptions
from ..predict.graph import (
    onnx_model_bytes,
    require_onnx,
    signature_for,
)
from ..predict.onnx_predictor import OnnxPredictor, from_graph, load_onnx  # noqa: F401
from .base import Exporter, ExportError, Log

OPSET = 17
TOLERANCE = 1e-4  # max |p_onnx - p_torch| over the parity samples
PARITY_BATCH = 8  # small batches: several batch sizes and text lengths go through the dynamic axes


def _torch_predictor(run_dir: Path) -> Any:
    from ..predict.predictor import load

    return load(run_dir, device="cpu", runtime="torch", precision="fp32")  # like with like: ONNX is fp32


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
    difference = difference / predictor.task.output_scale()
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
    checked = from_graph(blob, predictor.meta, run_dir, "cpu")
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


ONNX = Exporter(
    name="onnx",
    suffix=".onnx",
    export=export_onnx,
    description="ONNX (opset 17) for onnxruntime and other runtimes; probabilities out",
)
