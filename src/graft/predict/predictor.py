"""Load a run folder and predict: `graft.load(run_dir).predict(["cat.jpg"])`.

One `Predictor` for every modality: the modality supplies the input side (decoding and resizing
images, tokenising texts); the network, the device and the class names are the same for all.
Nothing here imports a training module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..bundle import META_FILE, read_meta, read_weights, shown_classes, verify_bundle
from ..errors import BundleError, ConfigError
from ..heads import GraftModel, HeadSpec, build_head
from ..modalities import get_modality
from ..modalities.base import InputPipeline, Modality
from ..options import PredictOptions
from ..runtime.device import resolve_device
from ..runtime.inference import forward_all
from ..runtime.precision import Precision, resolve_precision, use_precision
from ..tasks import task_from_meta
from .answers import Answers

if TYPE_CHECKING:
    from .onnx_predictor import OnnxPredictor


def _on_onnxruntime(path: Path, device: str | torch.device | None) -> OnnxPredictor:
    """An exported `.onnx` file, or a run folder: its fresh `model.onnx`, else its graph built in
    memory from the weights (as `graft export` builds it, without writing it)."""
    from .graph import onnx_model_bytes, require_onnx, require_runtime
    from .onnx_predictor import fresh_export, from_graph, load_onnx

    require_runtime()
    if not path.is_dir() or fresh_export(path) is not None:
        return load_onnx(path, device)
    require_onnx()
    in_torch = load(path, device="cpu", runtime="torch", precision="fp32")  # like with like: fp32
    return from_graph(onnx_model_bytes(in_torch, assets=""), in_torch.meta, path, device)


class Predictor(Answers):
    """A trained graft model: input pipeline, network and class names, ready to predict."""

    def __init__(
        self,
        model: GraftModel,
        modality: Modality,
        pipeline: InputPipeline,
        classes: Sequence[str],
        meta: dict[str, Any],
        device: torch.device,
        engine: str = "auto",
        precision: Precision | None = None,
    ) -> None:
        self.model = modality.prepare_model(model, device).eval()
        self.modality = modality
        self.pipeline = pipeline
        self.preprocessing = getattr(pipeline, "prep", None)
        self.classes_ = tuple(classes)
        self.meta = meta
        self.device = device
        # bf16 on a CPU with native bf16 or a GPU (`auto`); graft.load(..., precision="fp32") for
        # the probabilities an fp32 export or another machine gives
        self.precision = precision or resolve_precision("auto", device)
        self.engine = engine  # auto, torch or onnxruntime: see graft.runtime.engine
        self.engine_choice: dict[str, Any] | None = None  # what the last prediction ran on
        self.settled: Any = None  # a forward raced once (`settle_engine`) that runs every batch
        self.task = task_from_meta(meta)  # what it predicts: one class, several labels, numbers

    def _forward_all(self, batches: Any, n: int) -> torch.Tensor:
        def record(choice: Any) -> None:
            self.engine_choice = choice.to_dict()

        with use_precision(self.precision):
            return forward_all(
                self.model, batches, n, engine=self.engine, on_engine=record, chosen=self.settled
            )

    def settle_engine(self, inputs: Any) -> dict[str, Any]:
        """Race the engines (`graft.runtime.engine`, parity judged at fp32) once, on `inputs`: as many
        as will run together (a server's --max-batch). Every later prediction runs on the winner, so
        a server repays an export whatever its batch size. Returns the choice (`engine_choice`)."""
        from ..runtime.engine import EngineChoice, choose_engine

        items = self.pipeline.as_list(self.read_inputs(inputs))
        _, x = next(iter(self.pipeline.batches(items, len(items), self.device)))
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            reason = f"the engine race runs image models; {self.modality.unit} run on PyTorch"
            choice = EngineChoice("torch", reason, torch_precision=self.precision.name)
        else:
            with use_precision(self.precision):
                forward, choice = choose_engine(self.model, x, len(items), self.engine, serving=True)
            self.settled = forward
        self.engine_choice = choice.to_dict() | {"batch": len(items)}
        return self.engine_choice

    def preprocess(self, inputs: Any) -> Any:
        """What the network takes: a float32 NCHW array for images, token ids per text."""
        return self.pipeline.preprocess(self.read_inputs(inputs))

    def encode(self, texts: Any, batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        """Sentence embeddings, as Sentence-BERT's `encode` gives them: each text's pooled vector
        from the model's encoder (fine-tuned, if it was), L2-normalised unless `normalize=False`. For
        a model trained on pairs with --pair-encoding bi, the cosine of two texts' embeddings is the
        similarity the model was trained on. Text models only."""
        embeddings = getattr(self.pipeline, "embeddings", None)
        if embeddings is None:
            raise ConfigError(f"encode is for text models; this is a {self.modality.name} model")
        with use_precision(self.precision):
            out = embeddings(self.model.body, texts, batch_size, self.device)
        if normalize and out.numel():
            out = torch.nn.functional.normalize(out, dim=1)
        return out.numpy()

    def logits_or_skip(self, inputs: Any, batch_size: int = 64) -> tuple[np.ndarray, dict[int, str]]:
        """The head's raw outputs; an unreadable input does not stop the others: its row is NaN and
        `failures` maps its position to a one-line reason."""
        items = self.pipeline.as_list(self.read_inputs(inputs))
        failures: dict[int, str] = {}
        out = np.full((len(items), len(self.classes_)), np.nan, np.float32)
        if not items:
            return out, failures
        batches = self.pipeline.batches(items, batch_size, self.device, on_failure=failures.__setitem__)
        logits = self._forward_all(batches, len(items))
        if logits.numel():
            done = np.setdiff1d(np.arange(len(items)), np.fromiter(failures, int, len(failures)))
            out[done] = logits[torch.as_tensor(done)].numpy()
        return out, failures

    def outputs_or_skip(self, inputs: Any, batch_size: int = 64) -> tuple[np.ndarray, dict[int, str]]:
        """Like `outputs` (probabilities or values), but an unreadable input does not stop the
        others: its row is NaN and `failures` maps its position to a one-line reason."""
        logits, failures = self.logits_or_skip(inputs, batch_size)
        return self.task.activate(torch.from_numpy(logits)).numpy(), failures


def build_model(meta: dict[str, Any]) -> GraftModel:
    """The bundle's architecture with random weights: no download, whatever the backbone's source."""
    modality = get_modality(meta.get("modality", "image"))  # bundles before 0.1 text support: images
    spec = HeadSpec.parse(meta["head"]["spec"], meta["head"].get("dropout", 0.0))
    body, width = modality.rebuild_body(meta)
    flip = bool(meta["head"].get("flip_average", False))
    outputs = task_from_meta(meta).outputs()
    return GraftModel(body, build_head(spec, width, outputs), flip, modality.mirror)


RUNTIMES = ("torch", "onnx")


def load(
    run_dir: str | Path,
    device: str | torch.device | None = None,
    runtime: str = "torch",
    engine: str = PredictOptions.engine,
    precision: str = PredictOptions.precision,
) -> Predictor | OnnxPredictor:
    """Rebuild a trained model from `model.safetensors` + `graft.json`; nothing is unpickled.
    An exported `.onnx` file, or `runtime="onnx"`, predicts through onnxruntime instead (the same
    `predict` / `predict_proba` / `preprocess` API; `graft.export.onnx`; always fp32). With the
    torch runtime, `engine` (auto, torch, onnxruntime) says who runs big CPU jobs (`graft.runtime.engine`)
    and `precision` (auto, fp32, bf16, fp16) its arithmetic: `auto` is bf16 on GPUs and CPUs with
    native bf16, else fp32, whatever the run trained with; `Predictor.precision` says which."""
    run_dir = Path(run_dir)
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}: use {' or '.join(RUNTIMES)}")
    if runtime == "onnx" or run_dir.suffix == ".onnx":
        if precision not in ("auto", "fp32"):
            raise ConfigError(f"precision {precision!r}: an ONNX model runs in fp32 (use auto or fp32)")
        return _on_onnxruntime(run_dir, device)
    meta = read_meta(run_dir)
    verify_bundle(run_dir, meta)
    modality = get_modality(meta.get("modality", "image"))
    model = build_model(meta)
    try:
        model.load_state_dict(read_weights(run_dir), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise BundleError(f"{run_dir}: the weights do not match graft.json ({first})") from None
    prep = modality.preprocessing_from_dict(meta["preprocessing"])
    pipeline = modality.input_pipeline(prep, run_dir=run_dir)
    device = resolve_device(device)
    classes = shown_classes(meta, run_dir / META_FILE)  # display_names, where graft.json has them
    chosen = resolve_precision(precision, device)
    return Predictor(model, modality, pipeline, classes, meta, device, engine, chosen)
