"""What every predictor answers, and the one way graft opens an onnxruntime session
(`onnx_session`), whatever runs the network: PyTorch (`predict.Predictor`),
onnxruntime fed by graft's input pipeline (`onnx_predictor.OnnxPredictor`), or an exported image
model without PyTorch (`light.ExportedImagePredictor`). Each runtime implements one method,
`outputs_or_skip` (the task's activated outputs, a NaN row for an input it could not read); here,
once, a DataFrame or Dataset is read by the columns the model was trained on (`read_inputs`) and
the task turns the outputs into `outputs`, `predict_proba` and `predict`. Imports neither torch
nor training code, so the torch-free path can use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.frames import is_dataframe, is_hf_dataset, table_inputs
from ..errors import UnreadableImage


def onnx_session(
    source: bytes | Path, *, cuda: bool = False, threads: int | None = None, spin: bool = True
) -> Any:
    """An onnxruntime session on the CPU (first the GPU with `cuda`, when onnxruntime has one),
    logging errors only (graft prints its own summary). `threads`, `spin`: for a session that
    shares the cores with decoding workers (graft.runtime.engine), idle threads sleep instead of spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    graph = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(graph, options, providers=providers)


class Answers:
    """`outputs`, `predict_proba` and `predict` from the runtime's `predict_proba_or_skip`."""

    classes_: tuple[str, ...]
    task: Any  # graft.tasks.Task
    meta: dict[str, Any]  # graft.json

    def outputs_or_skip(self, inputs: Any, batch_size: int = 64) -> tuple[np.ndarray, dict[int, str]]:
        """The runtime's part: the task's outputs per input (probabilities or values), a NaN row
        for each input that could not be read, and its position -> a one-line reason."""
        raise NotImplementedError

    def read_inputs(self, inputs: Any) -> Any:
        """A pandas DataFrame's or `datasets` Dataset's inputs, one per row, from the columns the
        model was trained on (as training read them); any other inputs as they are."""
        if is_dataframe(inputs) or is_hf_dataset(inputs):
            return table_inputs(inputs, self.meta)
        return inputs

    def predict_proba_or_skip(self, inputs: Any, batch_size: int = 64) -> tuple[np.ndarray, dict[int, str]]:
        """The task's outputs per input (probabilities or values), a NaN row for each input that
        could not be read, and its position -> a one-line reason."""
        return self.outputs_or_skip(self.read_inputs(inputs), batch_size)

    def outputs(self, inputs: Any, batch_size: int = 64) -> np.ndarray:
        """The task's outputs per input: class or label probabilities, or predicted values; the
        first unreadable input raises `UnreadableImage` naming it."""
        out, failures = self.predict_proba_or_skip(inputs, batch_size)
        if failures:
            raise UnreadableImage(failures[min(failures)])
        return out

    def predict_proba(self, inputs: Any, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (single-label: they sum to 1), or each label's (multi-label)."""
        self.task.has_probabilities()
        return self.outputs(inputs, batch_size)

    def predict(self, inputs: Any, batch_size: int = 64) -> Any:
        """Single-label: a class name per input; multi-label: a tuple of label names per input;
        regression: the predicted numbers (one column per target)."""
        return self.task.decide(self.outputs(inputs, batch_size), self.classes_)
