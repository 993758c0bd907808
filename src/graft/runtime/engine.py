"""Which engine runs a frozen network's forward pass on the CPU: PyTorch eager or ONNX Runtime.

Frozen-feature extraction and `graft predict` run a network that does not train, many times. On a
CPU, ONNX Runtime runs the same graph about 2-3x faster than PyTorch eager (EfficientNet-Lite0 at
224 px on 2 AVX2 cores: 60 vs 29 images/s, `python -m bench speed --only throughput`). So, per job:

- a GPU (or MPS) keeps PyTorch, with its autocast;
- on the CPU, when onnxruntime is installed (extra `onnx`) and the job is big enough to repay an
  export (about a second for a small CNN), the network is exported once (torch's TorchScript
  exporter, opset 17, dynamic batch) and cached under GRAFT_CACHE_DIR/engines by a digest of its
  weights and input shape, so later jobs skip the export;
- the choice is measured, never assumed: both engines run the same first images, ONNX Runtime is
  kept only when its outputs match fp32 PyTorch's within PARITY_TOLERANCE (relative to the largest
  output: like with like, whatever precision the job runs at) and it is at least 10% faster than the
  PyTorch configuration that would otherwise run (bf16 autocast on a CPU with native bf16, fp32
  elsewhere: `runtime.precision.current_precision`). Otherwise PyTorch runs, and
  `EngineChoice.reason` says why.

`EngineChoice` is what report.json records (`features_engine`).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .device import module_device
from .precision import FP32, autocast, current_precision, use_precision

# A float32 graph run by another engine differs by reassociation only: ~1e-5 of the output scale
# (measured 1e-5 on Lite0 features). 1e-3 leaves room for other architectures while still refusing
# a wrong graph, whose outputs differ by the scale itself.
PARITY_TOLERANCE = 1e-3
# Below this many inputs an export (about 1 s for a small CNN, more for big ones) is not repaid
# unless an exported graph is already cached: at 2x, 128 images at 224 px save about 2 s.
MIN_INPUTS_TO_EXPORT = 128
PROBE_IMAGES = 4  # images each engine runs (3 times) to compare outputs and speed
MIN_SPEEDUP = 1.1
OPSET = 17

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EngineChoice:
    name: str  # "torch" or "onnxruntime"
    reason: str
    max_abs_diff: float | None = None  # ONNX Runtime vs fp32 PyTorch on the probe images
    speedup: float | None = None  # PyTorch time (at `torch_precision`) / ONNX Runtime time, probe images
    export_seconds: float = 0.0
    parity_precision: str = "fp32"  # what ONNX Runtime's outputs were compared against
    torch_precision: str = "fp32"  # the PyTorch configuration it raced (and that runs if it loses)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Whole:
    """One extraction done in parts (`part_of`): its size, and the engines chosen for it so far."""

    n_inputs: int
    chosen: dict[tuple, tuple[Forward, EngineChoice]] = field(default_factory=dict)


# --time-budget's timing sample and its chunks are small parts of one extraction: they run on the
# engine the whole would, chosen (exported, raced) once
_WHOLE: ContextVar[_Whole | None] = ContextVar("graft_engine_whole", default=None)


@contextmanager
def part_of(n_inputs: int) -> Iterator[None]:
    """Extractions inside are parts of one of (at least) `n_inputs` inputs: the engine is chosen as
    for that many, once for each network and input shape, and kept for every part."""
    token = _WHOLE.set(_Whole(n_inputs))
    try:
        yield
    finally:
        _WHOLE.reset(token)


def torch_forward(module: nn.Module, precision: Any = None) -> Forward:
    """PyTorch eager at `precision` (a `runtime.precision.Precision`; default: the current one)."""
    device = module_device(module)
    precision = precision or current_precision()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with use_precision(precision), torch.inference_mode(), autocast(device):
            return module(x.to(device)).flatten(1).float()

    return forward


def choose_engine(
    module: nn.Module, example: torch.Tensor, n_inputs: int, engine: str = "auto", serving: bool = False
) -> tuple[Forward, EngineChoice]:
    """The forward pass for `module` (in eval mode) on inputs shaped like `example` (a real batch,
    already normalised), and why that engine. `engine`: auto, torch or onnxruntime. `serving`: for
    a server, which runs batch after batch for as long as it is up, so an export is repaid whatever
    `n_inputs`, and the engines race on the whole `example` (the batch size it serves)."""
    whole = _WHOLE.get()
    if whole is None or serving:
        return _choose(module, example, n_inputs, engine, serving)
    key = (id(module), tuple(example.shape[1:]), engine, current_precision().name)
    if key not in whole.chosen:
        whole.chosen[key] = _choose(module, example, max(n_inputs, whole.n_inputs), engine)
    return whole.chosen[key]


def _choose(
    module: nn.Module, example: torch.Tensor, n_inputs: int, engine: str, serving: bool = False
) -> tuple[Forward, EngineChoice]:
    precision = current_precision()
    eager = torch_forward(module, precision)

    def keep_torch(reason: str) -> tuple[Forward, EngineChoice]:
        return eager, EngineChoice("torch", reason, torch_precision=precision.name)

    if engine == "torch":
        return keep_torch("--engine torch")
    if module_device(module).type != "cpu":
        return keep_torch(f"runs on {module_device(module).type}")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return keep_torch("onnxruntime is not installed (pip install 'graft-learn[onnx]')")
    path = _cache_path(module, example)
    repaid = serving or n_inputs >= MIN_INPUTS_TO_EXPORT or (path is not None and path.is_file())
    if engine == "auto" and not repaid:
        return keep_torch(f"{n_inputs} inputs do not repay an ONNX export")
    try:
        graph, export_seconds = _exported(module, example, path)
        session = _session(graph)
    except Exception as err:  # noqa: BLE001 - any exporter/runtime failure leaves PyTorch in charge
        reason = f"ONNX export failed ({type(err).__name__}: {(str(err) or '?').splitlines()[0][:120]})"
        return keep_torch(reason)
    if len(session.get_inputs()) != 1:  # the trace lost the input: a graph of constants
        return keep_torch("the exported graph does not take the input")
    fast = _ort_forward(session)
    probe = example if serving else example[:PROBE_IMAGES]
    try:
        (torch_s, want), (ort_s, got) = _race(eager, fast, probe)
        if precision.name != FP32.name:  # parity like with like: ONNX Runtime computes in fp32
            want = torch_forward(module, FP32)(probe)
    except Exception as err:  # noqa: BLE001 - a graph the runtime cannot run leaves PyTorch in charge
        return keep_torch(f"ONNX Runtime failed ({type(err).__name__})")
    diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    scale = max(1.0, float(want.abs().max()))
    speedup = torch_s / max(ort_s, 1e-9)
    choice = EngineChoice(
        "onnxruntime", "", diff, round(speedup, 2), round(export_seconds, 2), torch_precision=precision.name
    )
    if diff > PARITY_TOLERANCE * scale:
        choice.name, choice.reason = "torch", f"ONNX Runtime differs from fp32 PyTorch by {diff:.2g}"
        return eager, choice
    if engine == "auto" and speedup < MIN_SPEEDUP:
        choice.name, choice.reason = (
            "torch",
            f"ONNX Runtime is not faster here than PyTorch {precision.name} ({speedup:.2f}x)",
        )
        return eager, choice
    choice.reason = (
        f"{speedup:.1f}x PyTorch {precision.name}'s speed, outputs within {diff:.1g} of fp32 PyTorch"
    )
    return fast, choice


def _race(
    first: Forward, second: Forward, x: torch.Tensor, rounds: int = 2
) -> list[tuple[float, torch.Tensor]]:
    """(best seconds, output) of each forward on `x`: a warm-up each (one-off set-up in both
    engines), then `rounds` alternating timed calls, so a burst of load on a shared machine
    does not decide for one engine."""
    outputs = [first(x), second(x)]
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, forward in enumerate((first, second)):
            started = time.perf_counter()
            outputs[i] = forward(x)
            best[i] = min(best[i], time.perf_counter() - started)
    return list(zip(best, outputs, strict=True))


def _ort_forward(session: Any) -> Forward:
    name = session.get_inputs()[0].name

    def forward(x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(None, {name: array})[0]).flatten(1)

    return forward


def _session(graph: bytes | Path) -> Any:
    from ..predict.answers import onnx_session

    # the threads PyTorch would have used; idle ones sleep: the decode workers share these cores
    return onnx_session(graph, threads=torch.get_num_threads(), spin=False)


def _weights_digest(module: nn.Module, example: torch.Tensor) -> str:
    h = hashlib.sha256(f"{type(module).__qualname__}|{tuple(example.shape[1:])}|{torch.__version__}".encode())
    for name, tensor in list(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _cache_path(module: nn.Module, example: torch.Tensor) -> Path | None:
    from ..cache import cache_dir, usable_folder

    folder = cache_dir() / "engines"
    if not usable_folder(folder, quiet=True):  # the feature cache has warned about it already
        return None
    return folder / f"{_weights_digest(module, example)}-opset{OPSET}.onnx"


def _exported(module: nn.Module, example: torch.Tensor, path: Path | None) -> tuple[bytes | Path, float]:
    """The ONNX graph of `module`: read from the cache, or exported (and cached when possible)."""
    if path is not None and path.is_file():
        return path, 0.0
    started = time.perf_counter()
    blob = _export(module, example)
    seconds = time.perf_counter() - started
    if path is None:
        return blob, seconds
    from ..bundle import atomic_write

    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))
    except OSError:
        return blob, seconds  # a full cache costs the next job an export, nothing more
    return path, seconds


def _export(module: nn.Module, example: torch.Tensor) -> bytes:
    x = example[:1].detach().cpu().contiguous()
    training = module.training
    module.eval()
    try:
        return onnx_bytes(module, (x,), ["x"], ["y"], {"x": {0: "n"}, "y": {0: "n"}})
    finally:
        module.train(training)


def onnx_bytes(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> bytes:
    """`module` traced to ONNX (opset 17) by torch's TorchScript exporter: exact for graft's
    branch-free networks and needing no onnxscript. Shared by the engine and `graft export`."""
    buffer = io.BytesIO()
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            module,
            inputs,
            buffer,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            **legacy,
        )
    return buffer.getvalue()
