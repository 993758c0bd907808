"""Load a run folder and predict: `graft.load(run_dir).predict(["cat.jpg"])`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .backbones import Preprocessing, TextPreprocessing, create_backbone
from .backbones._text import load_tokenizer, rebuild_text
from .bundle import TOKENIZER_DIR, read_meta, read_weights
from .data.images import UnreadableImage
from .data.pipeline import Source, iterate_batches, normalize
from .heads import GraftModel, HeadSpec, build_head
from .train import autocast, default_device


class Predictor:
    """A trained graft model: preprocessing, network and class names, ready to predict."""

    def __init__(
        self,
        model: GraftModel,
        preprocessing: Preprocessing,
        classes: Sequence[str],
        meta: dict[str, Any],
        device: torch.device,
    ) -> None:
        self.model = model.to(device).eval()
        self.preprocessing = preprocessing
        self.classes_ = tuple(classes)
        self.meta = meta
        self.device = device

    def _batches(self, inputs: Sequence[Source], batch_size: int):
        inputs = _as_list(inputs)
        workers = 0 if len(inputs) <= 4 * batch_size else None  # worker start-up costs more than small jobs
        for batch in iterate_batches(inputs, self.preprocessing, batch_size, workers=workers):
            if batch.failures:
                raise UnreadableImage(batch.failures[0][1])
            yield normalize(batch.images.to(self.device), self.preprocessing)

    def preprocess(self, inputs: Sequence[Source], batch_size: int = 64) -> np.ndarray:
        """The float32 NCHW array the network takes (resized, cropped, normalised)."""
        arrays = [x.contiguous().cpu().numpy() for x in self._batches(inputs, batch_size)]
        return np.concatenate(arrays) if arrays else np.zeros((0, 3, 1, 1), np.float32)

    @torch.inference_mode()
    def predict_proba(self, inputs: Sequence[Source], batch_size: int = 64) -> np.ndarray:
        out = []
        for x in self._batches(inputs, batch_size):
            with autocast(self.device):
                out.append(self.model(x).float().softmax(1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)), np.float32)

    def predict(self, inputs: Sequence[Source], batch_size: int = 64) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(inputs, batch_size).argmax(1)]


def _as_list(inputs: Any) -> list[Source]:
    if isinstance(inputs, str | Path | Image.Image) or (
        isinstance(inputs, np.ndarray)
        and inputs.ndim in (2, 3)
        and inputs.dtype == np.uint8
        and inputs.shape[-1] in (1, 3, 4)
    ):
        return [inputs]
    return list(inputs)


class TextPredictor:
    """A trained graft text model: tokenizer, network and class names, ready to predict."""

    def __init__(
        self,
        model: GraftModel,
        tokenizer: Any,
        preprocessing: TextPreprocessing,
        classes: Sequence[str],
        meta: dict[str, Any],
        device: torch.device,
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.classes_ = tuple(classes)
        self.meta = meta
        self.device = device

    def preprocess(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Token ids per text (unpadded), truncated to the length the model was trained with."""
        from .text import tokenize

        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        return tokenize(self.tokenizer, texts, self.preprocessing.max_length)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        from .text import predict_ids

        ids = self.preprocess(texts)
        if not ids:
            return np.zeros((0, len(self.classes_)), np.float32)
        logits = predict_ids(self.model, ids, self.preprocessing.pad_id, batch=batch_size)
        return logits.softmax(1).numpy()

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(texts, batch_size).argmax(1)]


def build_model(meta: dict[str, Any], run_dir: Path | None = None) -> GraftModel:
    """The bundle's architecture with random weights: no download, whatever the backbone's source."""
    spec = HeadSpec.parse(meta["head"]["spec"], meta["head"].get("dropout", 0.0))
    if meta.get("modality", "image") == "text":
        prep = TextPreprocessing.from_dict(meta["preprocessing"])
        body = rebuild_text(meta["backbone"]["config"], prep)
        width = int(meta["backbone"]["num_features"])
        return GraftModel(body, build_head(spec, width, len(meta["classes"])))
    backbone = create_backbone(meta["backbone"]["name"], pretrained=False)
    return GraftModel(backbone.body, build_head(spec, backbone.num_features, len(meta["classes"])))


def load(run_dir: str | Path, device: str | torch.device | None = None) -> Predictor | TextPredictor:
    """Rebuild a trained model from `model.safetensors` + `graft.json`; nothing is unpickled."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    model = build_model(meta)
    model.load_state_dict(read_weights(run_dir), strict=True)
    device = torch.device(device) if device else default_device()
    if meta.get("modality", "image") == "text":
        prep = TextPreprocessing.from_dict(meta["preprocessing"])
        tokenizer = load_tokenizer(run_dir / TOKENIZER_DIR)
        return TextPredictor(model, tokenizer, prep, meta["classes"], meta, device)
    return Predictor(model, Preprocessing.from_dict(meta["preprocessing"]), meta["classes"], meta, device)
