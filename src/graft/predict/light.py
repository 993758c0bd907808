"""Prediction without PyTorch: an image run's exported `model.onnx` on ONNX Runtime, with the
preprocessing in Pillow and numpy.

Importing torch, torchvision and timm takes seconds (about 3 s on 2 AVX2 cores), which is most of
`graft predict RUN one.jpg`. When the run folder holds a `model.onnx` written by `graft export`
from exactly these weights (the SHA-256 of `model.safetensors` recorded in its embedded graft.json
equals the run's), `graft predict` answers from it and never imports torch. The pixels are the
ones training evaluated on: `load_rgb` and `resize_center_crop` are the functions every image path
of graft uses, and the normalisation is the same float32 arithmetic. Every task: the graph's one
output is what `Task.activate` gives (class or label probabilities, regression's values in the
data's units), and the task rebuilt from the bundle (`graft.tasks`, which imports torch only to
train) turns it into `predict`'s rows and answers, as on the PyTorch path. Anything else (a text
model, no or a stale export, no onnxruntime) returns None and the PyTorch predictor runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import META_FILE, WEIGHTS_FILE, read_meta, shown_classes, verify_bundle
from ..data.image_sets import image_paths_in
from ..data.images import IMAGE_EXTENSIONS, image_files_below, load_rgb, resize_center_crop
from ..errors import UnreadableImage
from ..tasks import task_from_meta
from .answers import Answers, onnx_session

EXPORTED = "model.onnx"
INPUT = "pixel_values"


class _ImageFiles:
    """What `graft predict` asks of a modality, for image files."""

    name = "image"
    unit = "images"

    def accepts(self, item: Any) -> bool:
        return Path(str(item)).suffix.lower() in IMAGE_EXTENSIONS and Path(str(item)).is_file()

    def inputs_of_folder(self, folder: Path) -> list[str]:
        return image_files_below(folder)

    def inputs_of_file(self, path: Path, meta: dict[str, Any]) -> list[str]:
        return image_paths_in(path, meta.get("recipe", {}).get("image_column"))


class _Float32:
    """What `Predictor.precision` says, for a model that runs in float32 (no torch imported)."""

    name = "fp32"
    reason = "the run's exported model.onnx computes in fp32"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


class ExportedImagePredictor(Answers):
    """`outputs_or_skip` (and so `outputs` / `predict_proba` / `predict`) from an exported image model."""

    runtime = "onnx"
    engine_choice = {"name": "onnxruntime", "reason": "the run's exported model.onnx, without PyTorch"}
    precision = _Float32()

    def __init__(self, session: Any, meta: dict[str, Any]) -> None:
        self.session = session
        self.meta = meta
        self.modality = _ImageFiles()
        self.classes_ = shown_classes(meta)
        self.task = task_from_meta(meta)  # what it predicts: one class, several labels, numbers
        self.output = session.get_outputs()[0].name  # the task's: probabilities or values
        prep = meta["preprocessing"]
        self.input_size = int(prep["input_size"])
        self.resize_size = int(np.floor(self.input_size / float(prep["crop_pct"])))
        self.interpolation = str(prep.get("interpolation", "bicubic"))
        # the same float32 arithmetic as graft.data.pipeline.normalize
        self.mean = (np.asarray(prep["mean"], np.float32) * 255).reshape(1, 3, 1, 1)
        self.std = (np.asarray(prep["std"], np.float32) * 255).reshape(1, 3, 1, 1)

    def _pixels(self, source: Any) -> np.ndarray:
        image = load_rgb(source, self.resize_size)
        return resize_center_crop(image, self.resize_size, self.input_size, self.interpolation)

    def outputs_or_skip(
        self, inputs: Sequence[Any], batch_size: int = 32
    ) -> tuple[np.ndarray, dict[int, str]]:
        """The task's outputs per input (probabilities or values; NaN rows for unreadable ones) and
        position -> one-line reason."""
        items = list(inputs)
        proba = np.full((len(items), len(self.classes_)), np.nan, np.float32)
        failures: dict[int, str] = {}
        for start in range(0, len(items), batch_size):
            rows, arrays = [], []
            for i in range(start, min(len(items), start + batch_size)):
                try:
                    arrays.append(self._pixels(items[i]))
                    rows.append(i)
                except UnreadableImage as err:
                    failures[i] = str(err)
            if rows:
                batch = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32)
                proba[rows] = self.session.run([self.output], {INPUT: (batch - self.mean) / self.std})[0]
        return proba, failures


def load_exported(run_dir: str | Path) -> ExportedImagePredictor | None:
    """The run's `model.onnx` as a torch-free predictor, or None when it cannot stand in for the
    run's weights (see the module docstring). The bundle itself is verified as `graft.load` does."""
    run_dir = Path(run_dir)
    exported = run_dir / EXPORTED
    if not exported.is_file() or not (run_dir / META_FILE).is_file():
        return None
    meta = read_meta(run_dir)
    if meta.get("modality", "image") != "image" or "integrity" not in meta:
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    verify_bundle(run_dir, meta)
    try:
        session = onnx_session(exported)
        embedded = json.loads(session.get_modelmeta().custom_metadata_map.get("graft.bundle", "{}"))
    except Exception:  # noqa: BLE001 - an unreadable export is ignored: the weights are the truth
        return None
    recorded = (meta["integrity"].get("files") or {}).get(WEIGHTS_FILE)
    if not recorded or (embedded.get("integrity") or {}).get("files", {}).get(WEIGHTS_FILE) != recorded:
        return None  # exported from other weights (an older run in this folder)
    return ExportedImagePredictor(session, meta)
