"""graft models on onnxruntime: `OnnxPredictor` (the same `predict` / `predict_proba` /
`preprocess` API and `classes_` as `graft.predict.Predictor`, graft's own input pipeline feeding
the session) and `load_onnx` (an exported `.onnx` file, or a run folder's fresh `model.onnx`).
The prediction side of ONNX: it imports neither the torch predictor (`predictor`) nor `graft.export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bundle import META_FILE, shown_classes
from ..errors import BundleError
from ..modalities import get_modality
from ..modalities.base import InputPipeline, Modality
from ..runtime.precision import FP32
from ..tasks import task_from_meta
from .answers import Answers, onnx_session
from .graph import output_name, require_runtime, signature_for


class OnnxPredictor(Answers):
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
        return self.pipeline.preprocess(self.read_inputs(inputs))

    def outputs_or_skip(self, inputs: Any, batch_size: int = 64) -> tuple[np.ndarray, dict[int, str]]:
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


def _session(model: bytes | Path, device: str | torch.device | None) -> Any:
    from ..runtime.device import resolve_device

    require_runtime()
    try:
        return onnx_session(model, cuda=resolve_device(device).type == "cuda")
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
    """An exported `.onnx` file, or a run folder's fresh `model.onnx` (`graft.load(run,
    runtime="onnx")` builds the graph in memory when there is none)."""
    path = Path(path)
    require_runtime()
    if path.is_dir():
        exported = fresh_export(path)
        if exported is None:
            raise BundleError(f"{path} has no model.onnx newer than its graft.json: graft export it first")
        path = exported
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


def fresh_export(run_dir: Path) -> Path | None:
    """The run folder's `model.onnx` when it was exported after its `graft.json` was written."""
    exported, meta_file = run_dir / "model.onnx", run_dir / META_FILE
    if exported.is_file() and meta_file.is_file() and exported.stat().st_mtime >= meta_file.stat().st_mtime:
        return exported
    return None


def from_graph(blob: bytes, meta: dict[str, Any], asset_root: Path, device: Any = None) -> OnnxPredictor:
    """A predictor on a graph built in memory (`graph.onnx_model_bytes`), its assets (a text
    model's tokenizer) under `asset_root`."""
    return _onnx_predictor(_session(blob, device), meta, asset_root)
