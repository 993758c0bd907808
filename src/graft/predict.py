"""Load a run folder and predict: `graft.load(run_dir).predict(["cat.jpg"])`.

One `Predictor` for every modality: the modality supplies the input side (decoding and resizing
images, tokenising texts); the network, the device and the class names are the same for all.
Nothing here imports a training module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bundle import read_meta, read_weights
from .compute import forward_all, resolve_device
from .errors import BundleError
from .heads import GraftModel, HeadSpec, build_head
from .modalities import get_modality
from .modalities.base import InputPipeline, Modality


class Predictor:
    """A trained graft model: input pipeline, network and class names, ready to predict."""

    def __init__(
        self,
        model: GraftModel,
        modality: Modality,
        pipeline: InputPipeline,
        classes: Sequence[str],
        meta: dict[str, Any],
        device: torch.device,
    ) -> None:
        self.model = model.to(device).eval()
        self.modality = modality
        self.pipeline = pipeline
        self.preprocessing = getattr(pipeline, "prep", None)
        self.classes_ = tuple(classes)
        self.meta = meta
        self.device = device

    def preprocess(self, inputs: Any) -> Any:
        """What the network takes: a float32 NCHW array for images, token ids per text."""
        return self.pipeline.preprocess(inputs)

    def predict_proba(self, inputs: Any, batch_size: int = 64) -> np.ndarray:
        items = self.pipeline.as_list(inputs)
        if not items:
            return np.zeros((0, len(self.classes_)), np.float32)
        logits = forward_all(self.model, self.pipeline.batches(items, batch_size, self.device), len(items))
        return logits.softmax(1).numpy()

    def predict(self, inputs: Any, batch_size: int = 64) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(inputs, batch_size).argmax(1)]


def build_model(meta: dict[str, Any]) -> GraftModel:
    """The bundle's architecture with random weights: no download, whatever the backbone's source."""
    modality = get_modality(meta.get("modality", "image"))  # bundles before 0.1 text support: images
    spec = HeadSpec.parse(meta["head"]["spec"], meta["head"].get("dropout", 0.0))
    body, width = modality.rebuild_body(meta)
    return GraftModel(body, build_head(spec, width, len(meta["classes"])))


def load(run_dir: str | Path, device: str | torch.device | None = None) -> Predictor:
    """Rebuild a trained model from `model.safetensors` + `graft.json`; nothing is unpickled."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    modality = get_modality(meta.get("modality", "image"))
    model = build_model(meta)
    try:
        model.load_state_dict(read_weights(run_dir), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise BundleError(f"{run_dir}: the weights do not match graft.json ({first})") from None
    prep = modality.preprocessing_from_dict(meta["preprocessing"])
    pipeline = modality.input_pipeline(prep, run_dir=run_dir)
    return Predictor(model, modality, pipeline, meta["classes"], meta, resolve_device(device))
