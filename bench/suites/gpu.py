"""One table from one run: how close graft's data path and training come to the network's own speed
on this device, and the anchors beside it.

    python -m bench gpu                 # a GPU: full CIFAR-10 at 224 px, TREC-6; about 6 minutes
    python -m bench gpu --small         # any machine (a CPU): small subsets at 96 px, a few minutes
    python -m bench gpu --only network levers --devices 2

It measures an installed graft (the default tree is `installed`: build and install a wheel first);
each case (network, levers, graft, loop, text) runs as its own process, prints each row as it is
measured and hands it to the harness at once; peak GPU memory is reset before each row.

Rows (images or texts per second; accuracy on the test split):
- network alone, forward: EfficientNet-Lite0 (packaged weights) on batches already on the device,
  `--precision auto`'s autocast, channels_last, inference mode: the limit of extraction;
- network alone, train step: forward + backward + AdamW (fused on CUDA), same batches: the limit
  of fine-tuning;
- levers (graft's GPU defaults, each beside its alternative): the network-only train step at batch
  64 / 128 / 256 (does a larger batch pay?), AdamW unfused against fused, and on CUDA
  torch.compile with its compile time (`--skip compile` leaves it out);
- graft extraction and graft fine-tuning: one `graft train DATA --test TEST --time-budget T` process
  (defaults otherwise), from its report.json: training + validation images / extraction seconds, and
  per fine-tuning epoch images / training seconds (the median over whole epochs); its test accuracy;
- hand-written loop: torchvision ImageFolder + DataLoader (a worker per core but one, pinned,
  persistent), RandomResizedCrop + flip, the same network and precision, AdamW, `--loop-epochs`
  epochs; its last epoch's images/s and test accuracy (the anchor a user would write);
- TREC-6: graft's defaults, and a Hugging Face `Trainer` (3 epochs, 2e-5, batch 16) on the packaged
  MiniLM, wall seconds and test accuracy (`--small`: 600 training questions, one Trainer epoch).
- no host waits: on CUDA, a short `graft train` under GRAFT_SYNC_DEBUG=1 (an error row if PyTorch
  caught the host waiting for the GPU inside a training epoch).
GPU utilisation is sampled from `nvidia-smi` every 0.5 s while graft trains; peak GPU memory is the
in-process rows' `torch.cuda.max_memory_allocated`. Needs no internet: graft, the packaged-weight
wheels, the CIFAR-10 JPEGs (`.cache/data/cifar10`, or `--data`) and TREC-6 (`../shared/data/text`,
or `--trec`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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
        self.per_class = 100 if small else None  # None: all 5,000
        self.test_per_class = 50 if small else None
        self.budget = args.time_budget or (60 if small else 150)
        self.loop_epochs = args.loop_epochs or (1 if small else 2)
        self.timed_steps = 5 if small else 30
        self.trec_rows = 600 if small else None
        self.trainer_epochs = 1 if small else 3
        self.devices = args.devices


def network_rows(s: Settings, device: Any) -> list[dict[str, Any]]:
    import torch

    from graft.backbones import create_backbone

    precision = _runtime("resolve_precision")("auto", device)
    backbone = create_backbone("efficientnet_lite0")
    model = torch.nn.Sequential(backbone.body, torch.nn.Flatten(), torch.nn.Linear(backbone.num_features, 10))
    model = model.to(device=device, memory_format=torch.channels_last)
    x = torch.randn(s.batch, 3, s.size, s.size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (s.batch,), device=device)

    def timed(step: Any) -> float:
        for _ in range(3):
            step()
        _sync(device)
        started = time.perf_counter()
        for _ in range(s.timed_steps):
            step()
        _sync(device)
        return s.batch * s.timed_steps / (time.perf_counter() - started)

    model.eval()
    with _runtime("use_precision")(precision):

        def forward() -> None:
            with torch.inference_mode(), _runtime("autocast")(device):
                model(x)

        _reset_peak(device)
        forward_rate = timed(forward)
        forward_peak = _peak_gb(device)
        model.train()
        fused = {"fused": True} if device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)

        what = f"batch {s.batch}, {s.size} px, {precision.name}, channels_last"
        first = _done({"row": "network alone: forward", "rate": forward_rate, "setting": what,
                       "peak_gb": forward_peak})  # fmt: skip
        _reset_peak(device)
        step_rate = timed(lambda: _train_step(model, optimizer, x, y, device))
    return [first, _done({"row": "network alone: train step", "rate": step_rate, "setting": what,
                          "peak_gb": _peak_gb(device)})]  # fmt: skip


def _train_step(model: Any, optimizer: Any, x: Any, y: Any, device: Any) -> None:
    """One forward + backward + AdamW step at the current precision's autocast."""
    import torch


    with _runtime("autocast")(device):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def lever_rows(s: Settings, device: Any, compile_too: bool) -> list[dict[str, Any]]:
    """The levers graft's GPU defaults rest on, each beside its alternative in this one run: the
    network-only train step at batch 64 / 128 / 256 (does the larger batch pay?), AdamW unfused
    against fused, and torch.compile with its compile time counted (first step included)."""
    import torch

    from graft.backbones import create_backbone

    precision = _runtime("resolve_precision")("auto", device)
    backbone = create_backbone("efficientnet_lite0")
    net = torch.nn.Sequential(backbone.body, torch.nn.Flatten(), torch.nn.Linear(backbone.num_features, 10))
    net = net.to(device=device, memory_format=torch.channels_last).train()
    rows: list[dict[str, Any]] = []

    def rate(model: Any, batch: int, fused: bool, warm: int = 3) -> tuple[float, float]:
        _reset_peak(device)
        x = torch.randn(batch, 3, s.size, s.size, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, fused=fused)

        def step() -> None:
            _train_step(model, optimizer, x, y, device)

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

    fused = device.type == "cuda"
    with _runtime("use_precision")(precision):
        for batch in (64, 128, 256):
            value, _ = rate(net, batch, fused)
            optimizer = "fused AdamW" if fused else "AdamW"
            row = {"row": f"lever: train step, batch {batch}", "rate": value, "setting": optimizer}
            rows.append(_done({**row, "peak_gb": _peak_gb(device)}))
        if fused:
            value, _ = rate(net, s.batch, fused=False)
            name = f"lever: train step, batch {s.batch}"
            rows.append(_done({"row": name, "rate": value, "setting": "AdamW unfused"}))
        if compile_too:
            rows.append(_done(_compiled_row(s, net, rate, fused)))
    return rows


def graft_rows(s: Settings, train: Path, test: Path, device: str) -> list[dict[str, Any]]:
    out = Path(tempfile.mkdtemp(prefix="gpu-bench-")) / "run"
    argv = ["train", str(train), "--test", str(test), "--device", device]
    argv += ["--image-size", str(s.size), "--time-budget", str(s.budget), "--out", str(out), "--json"]
    argv += ["--devices", str(s.devices)] if s.devices > 1 else []
    with tempfile.TemporaryDirectory() as cache, _UtilSampler() as util:
        done = graft_here(argv, Path(cache))
        wall = done.wall_s
    if done.returncode:
        raise SystemExit(f"graft train failed:\n{done.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    timing, data = report["timing"], report["data"]
    extract_rate = (data["train"] + data["val"]) / max(timing["feature_extraction_seconds"], 1e-9)
    batch = report["plan"]["batch_size"]
    epochs = [r for r in report["history"] if r.get("epoch", 0) > 0 and r.get("train_seconds")]
    steps = max(1, data["train"] // batch)
    whole = epochs[:-1] or epochs  # the deadline cuts the last epoch short: its seconds are partial
    rates = sorted(steps * batch / r["train_seconds"] for r in whole)
    tune_rate = rates[len(rates) // 2] if rates else float("nan")
    accuracy = report["test"]["accuracy"] if report["test"] else None
    what = f"--time-budget {s.budget:.0f}, {report['strategy']}, {report['plan']['precision']}"
    what += f", {wall:.0f} s wall"
    shutil.rmtree(out.parent, ignore_errors=True)
    return [
        {"row": "graft extraction (the probe)", "rate": extract_rate, "setting": what, "util": util.mean},
        {
            "row": "graft fine-tuning",
            "rate": tune_rate,
            "setting": f"batch {batch}, {len(epochs)} epoch(s)",
            "accuracy": accuracy,
            "util": util.mean,
        },
    ]


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
        return {**row, "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
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


def text_rows(s: Settings, trec: Path, device: str) -> list[dict[str, Any]]:
    from bench.baselines.hf_trainer import hf_trainer

    folder = trec
    if s.trec_rows:  # a small copy: the first rows of train.csv, all of test.csv
        folder = Path(tempfile.mkdtemp(prefix="trec-small-"))
        lines = (trec / "train.csv").read_text().splitlines(keepends=True)
        (folder / "train.csv").write_text("".join(lines[: s.trec_rows + 1]))
        shutil.copy(trec / "test.csv", folder / "test.csv")
    out = Path(tempfile.mkdtemp(prefix="gpu-bench-text-")) / "run"
    argv = ["train", str(folder / "train.csv")]
    argv += ["--test", str(folder / "test.csv"), "--device", device, "--out", str(out), "--json"]
    argv += ["--devices", str(s.devices)] if s.devices > 1 else []
    with tempfile.TemporaryDirectory() as cache:
        done = graft_here(argv, Path(cache))
        wall = done.wall_s
    if done.returncode:
        raise SystemExit(f"graft train (TREC-6) failed:\n{done.stderr[-3000:]}")
    graft_accuracy = json.loads(done.stdout.strip().splitlines()[-1])["test_accuracy"]
    history = json.loads((out / "report.json").read_text())["history"]
    epochs = ", ".join(f"{r['train_seconds']:.1f}" for r in history if r.get("epoch", 0) > 0)
    trainer = hf_trainer(folder, 0, epochs=s.trainer_epochs, use_cpu=device == "cpu")
    return [
        {
            "row": "TREC-6: graft defaults",
            "setting": f"{wall:.0f} s wall; fine-tuning epochs {epochs} s",
            "accuracy": graft_accuracy,
        },
        {
            "row": "TREC-6: transformers.Trainer",
            "setting": f"{trainer['wall_seconds']:.0f} s wall, {s.trainer_epochs} epoch(s)",
            "accuracy": trainer["test_accuracy"],
        },
    ]


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
    """torch.compile's train step; a compiler that is missing or fails is a row that says so."""
    import torch

    row = f"lever: train step, batch {s.batch}"
    if not hasattr(torch, "compile"):
        return {"row": row, "setting": "torch.compile: not in this torch"}
    try:
        value, first = rate(torch.compile(net), s.batch, fused)
    except Exception as error:  # inductor needs a compiler toolchain: its absence is a finding
        return {"row": row, "setting": f"torch.compile failed: {type(error).__name__}: {str(error)[:120]}"}
    return {"row": row, "rate": value, "setting": f"torch.compile, {first:.0f} s to compile and warm up"}


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


def _done(row: dict[str, Any]) -> dict[str, Any]:
    """A measured row: printed and handed to the harness at once (a later crash keeps it)."""
    cells = [row["row"], row.get("setting", ""), _cell(row.get("rate"), ",.0f")]
    cells += [_cell(row.get("accuracy"), ".4f"), _cell(row.get("util"), ".0f")]
    cells.append(_cell(row.get("peak_gb"), ".1f"))
    print("| " + " | ".join(cells) + " |", flush=True)
    emit(row)
    return row


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _cifar(args: argparse.Namespace, s: Settings) -> tuple[Path, Path]:
    if not (args.data / "train").is_dir():
        raise SystemExit(f"{args.data}/train is missing: unpack ../shared/data/cifar10-jpeg.tar.gz there")
    train = subset_folder(args.data / "train", s.per_class, f"gpu-train-{s.per_class}")
    return train, subset_folder(args.data / "test", s.test_per_class, f"gpu-test-{s.test_per_class}")


def measure(part: str, args: argparse.Namespace) -> None:
    """One case in this process: its rows, printed and emitted as each is measured."""
    import torch

    s, device = Settings(args), _device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: the fastest kernels are worth finding
    print("| row | setting | images/s | test accuracy | GPU util % | peak GPU GB |", flush=True)
    if part == "network":
        network_rows(s, device)
    elif part == "levers":
        compile_too = device.type == "cuda" and "compile" not in args.skip
        lever_rows(s, device, compile_too)
    elif part == "text":
        if not (args.trec / "train.csv").is_file():
            print(f"TREC-6 is missing ({args.trec}/train.csv): the text rows are not measured", flush=True)
            emit({"row": "TREC-6", "error": f"no data at {args.trec}"})
            return
        for row in text_rows(s, args.trec, str(device)):
            _done(row)
    else:
        train, test = _cifar(args, s)
        graft = part == "graft"
        rows = graft_rows(s, train, test, str(device)) if graft else [loop_row(s, train, test, device)]
        for row in rows:
            _done(row)
        if graft and device.type == "cuda":
            _done(sync_check_row(s, train, str(device)))


def add_arguments(group: Any) -> None:
    group.add_argument("--small", action="store_true", help="small subsets at 96 px: any machine, minutes")
    group.add_argument("--device", default="auto")
    group.add_argument("--devices", type=int, default=1, help="graft train --devices N for the graft rows")
    group.add_argument("--data", type=Path, default=DATA)
    group.add_argument("--trec", type=Path, default=TEXT / "trec6")
    group.add_argument("--image-size", type=int)
    group.add_argument("--batch-size", type=int)
    group.add_argument("--time-budget", type=float)
    group.add_argument("--loop-epochs", type=int)
    group.add_argument("--skip", nargs="*", default=[], choices=["compile"], help="leave torch.compile out")


def _forward(options: argparse.Namespace) -> list[str]:
    """The suite's options as the worker's command line."""
    argv = ["--device", options.device, "--devices", str(options.devices), "--data", str(options.data)]
    argv += ["--trec", str(options.trec), "--skip", *options.skip]
    for name in ("image_size", "batch_size", "time_budget", "loop_epochs"):
        if getattr(options, name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(getattr(options, name))]
    return [*argv, "--small"] if options.small else argv


def _case(part: str) -> Any:
    def case(ctx: Context) -> list[dict[str, Any]]:
        run = ctx.module("bench.suites.gpu", part, *_forward(ctx.options))
        return [{**row, "case_wall_s": round(run.wall_s, 1), "rc": run.returncode} for row in run.rows] or [
            {"error": f"exit {run.returncode}", "case_wall_s": round(run.wall_s, 1)}
        ]

    case.__doc__ = f"the {part} rows, in their own process"
    return case


CASES = {part: _case(part) for part in PARTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=PARTS)
    add_arguments(parser)
    args = parser.parse_args()
    measure(args.part, args)


if __name__ == "__main__":
    main()
