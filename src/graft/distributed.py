"""Several processes, one training run: data parallelism on Hugging Face Accelerate (the
`distributed` extra) over torch.distributed. Nothing here communicates by itself: Accelerate sets
up the process group (gloo on CPUs, NCCL on GPUs, with a timeout on every collective), its
`prepare_model` wraps the model in DistributedDataParallel (gradients all-reduced in backward),
and its collectives (`broadcast_object_list`, `gather_object`, `reduce`) carry the few values the
processes must agree on.

Two ways in: `graft train --devices N` (`launch`: N processes on this machine, through
torch.distributed's elastic launcher, the one under `accelerate launch` and torchrun), or any
launcher that sets WORLD_SIZE/RANK (`accelerate launch -m graft train ...`, several machines).
Either way `setup` joins the group. In a single process every helper is a no-op, accelerate is
never imported, and training is exactly what it was.

What is shared out: each global batch (`--batch-size` is the global batch) is split between the
processes (`shard`, `shard_loader`), validation batches are split and their outputs gathered
(`compute.forward_all(across_ranks=True)`), frozen-feature extraction is split and merged
(`training/features.py`). Rank 0 alone writes files (checkpoints, the cache, report and bundle).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DistributedError, GraftError

if TYPE_CHECKING:  # torch is imported where it is used: `is_main` costs nothing to torch-free commands
    import torch
    from torch import nn

TIMEOUT_ENV = "GRAFT_DIST_TIMEOUT"  # seconds a collective waits for the other processes
DEFAULT_TIMEOUT_S = 600.0
RANK_SEED_STRIDE = 1 << 32  # rank r's random streams start r strides after rank 0's (rank 0: as alone)

_state: dict[str, Any] = {}  # this process's Accelerator and the devices of all processes, once set up


# --------------------------------------------------------------------------- who am I


def launched() -> bool:
    """Whether a launcher started this process as one of several (WORLD_SIZE > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def _group() -> Any:
    """torch.distributed when this process is in a process group (it is never without its import)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    """Processes in the run (1 alone, or before `setup`)."""
    dist = _group()
    return dist.get_world_size() if dist is not None else 1


def rank() -> int:
    dist = _group()
    return dist.get_rank() if dist is not None else 0


def is_main() -> bool:
    """Rank 0: the process that logs and writes files. Before `setup`, what the launcher says."""
    if _group() is not None:
        return rank() == 0
    return not launched() or _env_int("RANK", 0) == 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: give the collective timeout in seconds, e.g. 600")
    return seconds


def _require_accelerate() -> None:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ConfigError(
            "several processes need Hugging Face Accelerate: pip install 'graft-learn[distributed]'"
        ) from None


# --------------------------------------------------------------------------- joining the group


def setup(device: torch.device) -> torch.device:
    """Under a launcher: join the process group through Accelerate and return this process's device
    (its own GPU, cuda:LOCAL_RANK, or the CPU). Alone: `device`, untouched."""
    if not launched():
        return device
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"several processes run on CUDA GPUs or CPUs, not {device.type}: use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index > 0:
        raise ConfigError(
            f"--device {device}: with several processes each takes its own GPU; choose them with "
            "CUDA_VISIBLE_DEVICES and use --device cuda"
        )
    if "accelerator" not in _state:
        import torch

        _require_accelerate()
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        # mixed precision stays graft's own (compute.autocast, one path for every run)
        accelerator = Accelerator(
            cpu=device.type == "cpu",
            mixed_precision="no",
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_seconds()))],
        )
        _state["accelerator"] = accelerator
        here = torch.device("cpu") if accelerator.device.type == "cpu" else accelerator.device
        _state["device"] = here
        _state["devices"] = gather_objects(str(here))
    return _state["device"]


def describe(device: torch.device) -> dict[str, Any]:
    """For report.json: how many processes, over which backend, on which devices."""
    dist = _group()
    if dist is None:
        return {"world_size": 1, "backend": None, "devices": [str(device)]}
    return {"world_size": world_size(), "backend": dist.get_backend(), "devices": _state.get("devices", [])}


def check_devices(devices: int) -> None:
    """Under a launcher, --devices says nothing new: it may only repeat the number of processes."""
    if launched() and devices not in (1, _env_int("WORLD_SIZE", 1)):
        raise ConfigError(
            f"--devices {devices}, but the launcher started {_env_int('WORLD_SIZE', 1)} processes: "
            "leave --devices out under accelerate launch or torchrun"
        )


# --------------------------------------------------------------------------- sharing data out


def rank_seed(seed: int) -> int:
    """This process's seed for random augmentation and dropout: rank 0 keeps `seed` (a single
    process is rank 0), the others get their own streams."""
    return seed + rank() * RANK_SEED_STRIDE


def shard(batch: Sequence[int]) -> list[int]:
    """This process's part of a global batch of indices: every `world_size`-th one from its rank
    (equal parts, and length-sorted text batches stay balanced). A batch smaller than the number
    of processes is repeated so that every process has at least one example."""
    n = world_size()
    batch = list(batch)
    if n == 1:
        return batch
    if len(batch) < n:
        batch = (batch * n)[:n]
    return batch[rank() :: n]


def local_batch_size(batch_size: int) -> int:
    """Examples per process in a global batch of `batch_size` (the largest part)."""
    return math.ceil(batch_size / world_size())


class _ShardedBatches:
    """A DataLoader batch sampler: the global batches of `batches`, this process's part of each."""

    def __init__(self, batches: Any) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return (shard(batch) for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def shard_loader(loader: Any) -> Any:
    """`loader` itself alone; with several processes, a loader of this process's part of each of its
    global batches. The batch order comes from the same generator (and seed) in every process, so
    the parts are disjoint. The sharded loader is made once per loader and kept (its workers
    persist across epochs as the loader's would)."""
    if world_size() == 1:
        return loader
    sharded = getattr(loader, "_graft_sharded", None)
    if sharded is None:
        from torch.utils.data import DataLoader

        options: dict[str, Any] = {}
        if loader.num_workers:
            options = dict(
                persistent_workers=loader.persistent_workers,
                prefetch_factor=loader.prefetch_factor,
                worker_init_fn=loader.worker_init_fn,
            )
        sharded = DataLoader(
            loader.dataset,
            batch_sampler=_ShardedBatches(loader.batch_sampler),
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            generator=loader.generator,
            **options,
        )
        loader._graft_sharded = sharded
    return sharded


def split_range(n: int) -> tuple[int, int]:
    """This process's contiguous part [start, stop) of n items (frozen-feature extraction)."""
    size, r = world_size(), rank()
    return n * r // size, n * (r + 1) // size


# --------------------------------------------------------------------------- agreeing


def _device() -> torch.device | str:
    return _state.get("device", "cpu")


def gather_objects(value: Any) -> list[Any]:
    """Every process's `value`, in rank order, in every process."""
    if _group() is None:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def from_main(value: Any) -> Any:
    """Rank 0's `value`, in every process."""
    if _group() is None:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def any_process(flag: bool) -> bool:
    """True in every process when it is true in any (a stop decided on one process's clock)."""
    if _group() is None:
        return flag
    return sum_all(float(flag))[0] > 0


def sum_all(*values: float) -> list[float]:
    if _group() is None:
        return list(values)
    import torch
    from accelerate.utils import reduce

    return reduce(torch.tensor(values, dtype=torch.float64, device=_device()), "sum").tolist()


class DataParallel:
    """What the loop trains and agrees on. Alone (or `enabled=False`: the same work in every
    process, e.g. a head on cached features), the model itself and no communication. Otherwise
    DistributedDataParallel through `Accelerator.prepare_model`, over the parameters that train in
    the current stage (wrapped again when a stage changes them: gradual unfreezing), each process
    with its own random streams, the learning rate from rank 0's schedule (a time budget follows
    rank 0's clock) and a stop when any process stops."""

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        self.model = model
        self.active = enabled and _group() is not None
        self.wrapped: nn.Module | None = None
        self.trains: tuple[bool, ...] = ()

    def seed(self, seed: int) -> int:
        return rank_seed(seed) if self.active else seed

    def wrap(self) -> nn.Module:
        if not self.active:
            return self.model
        trains = tuple(p.requires_grad for p in self.model.parameters())
        if self.wrapped is None or trains != self.trains:
            self.close()
            self.wrapped, self.trains = _state["accelerator"].prepare_model(self.model), trains
        return self.wrapped

    def lr(self, lr: float) -> float:
        if not self.active:
            return lr
        import torch
        from accelerate.utils import broadcast

        return float(broadcast(torch.tensor([lr], dtype=torch.float64, device=_device()), from_process=0))

    def stop(self, stop: bool) -> bool:
        return any_process(stop) if self.active else stop

    def totals(self, loss_sum: float, seen: int) -> tuple[float, int]:
        if not self.active:
            return loss_sum, seen
        total, count = sum_all(loss_sum, seen)
        return total, int(count)

    def close(self) -> None:
        if self.wrapped is not None:
            self.wrapped = None
            _state["accelerator"].free_memory()  # drops its reference to the old wrapper


# --------------------------------------------------------------------------- launching


def available(device: torch.device) -> tuple[int, str]:
    """How many processes this machine takes on `device`, and what they are (for messages)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.device_count(), "CUDA GPU(s)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores, "CPU core(s)"


def check_launch(processes: int, device: torch.device) -> None:
    """Before any process starts: the extra is installed, the machine has the devices, the port is free."""
    _require_accelerate()
    timeout_seconds()  # a bad GRAFT_DIST_TIMEOUT is one error here, not one per process
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--devices runs on CUDA GPUs or CPUs, not {device.type}: use --device cpu")
    if device.type == "cuda" and device.index is not None:
        raise ConfigError(
            f"--devices {processes} uses one GPU per process from cuda:0; choose the GPUs with "
            "CUDA_VISIBLE_DEVICES and use --device cuda"
        )
    have, what = available(device)
    if processes > have:
        more = " (accelerate launch runs on several machines)" if device.type == "cuda" else ""
        raise ConfigError(f"--devices {processes}: this machine has {have} {what}; use at most {have}{more}")
    port = _env_int("MASTER_PORT", 0)
    if port and _port_in_use(port):
        raise ConfigError(
            f"port {port} (MASTER_PORT) is in use by another program: set MASTER_PORT to a free port, "
            "or unset it and graft picks one"
        )


def _port_in_use(port: int) -> bool:
    from accelerate.utils import is_port_in_use

    return is_port_in_use(port)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """What the processes inherit; put back afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def launch(
    entry: Callable[..., Any],
    args: tuple[Any, ...],
    processes: int,
    device: torch.device,
    log: Callable[[str], None] | None = None,
) -> Any:
    """`entry(log, *args)` in `processes` processes on this machine (one per GPU, or CPU processes
    with gloo), started by torch.distributed's elastic launcher, the one `accelerate launch` and
    torchrun use: a process that fails or dies stops the others at once. Returns rank 0's result.
    Rank 0's `log` lines reach `log` here. A failure is raised as one line: the process's own
    graft error, else a `DistributedError` naming the process (a bug's traceback printed first)."""
    import multiprocessing

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_launch(processes, device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // processes)
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    if device.type == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id="graft",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_env_int('MASTER_PORT', 0)}",  # 0: a free port, picked when bound
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    queue = multiprocessing.get_context("spawn").Queue() if log is not None else None
    reader = _forward_lines(queue, log) if queue is not None and log is not None else None
    quiet = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)  # failures are reported here, once, as one line
    try:
        with _environment(env):
            results = elastic_launch(config, _process)(entry, queue, *args)
    except ChildFailedError as err:
        raise _failure(err, processes) from None
    except SignalException as err:
        raise KeyboardInterrupt from err
    except RuntimeError as err:  # the rendezvous port was taken between the check and the bind
        if "address already in use" in str(err).lower() or "errno: 98" in str(err).lower():
            raise ConfigError(
                "the port the processes meet on is in use: set MASTER_PORT to a free port"
            ) from None
        raise
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
        if queue is not None and reader is not None:
            queue.put(None)
            reader.join(timeout=10)  # a process killed mid-line may leave the queue locked
    return results[0]


def _forward_lines(queue: Any, log: Callable[[str], None]) -> Any:
    import threading

    def forward() -> None:
        for line in iter(queue.get, None):
            log(line)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    return thread


def _process(entry: Callable[..., Any], queue: Any, *args: Any) -> Any:
    """One launched process: rank 0 logs (through the launcher's queue), the others stay quiet."""
    import multiprocessing
    import warnings

    # started by spawn, this process would spawn its loader workers too (a fresh interpreter each,
    # seconds apiece): back to the platform's default, as in a process torchrun starts
    multiprocessing.set_start_method(None, force=True)
    main = _env_int("RANK", 0) == 0
    if not main:
        warnings.simplefilter("ignore")  # rank 0 says it once
    log = queue.put if main and queue is not None else _silent
    try:
        return entry(log, *args)
    finally:
        dist = _group()
        if dist is not None:
            dist.destroy_process_group()


def _silent(line: str) -> None:
    pass


_CONSEQUENCES = ("closed by peer", "connection reset", "broken pipe", "remote worker crashing")


def _root_failure(err: Any) -> tuple[int, Any]:
    """The failure that started it: the earliest one that is not a lost connection to a process that
    failed first (one that dies without an error file can be noticed after its peers' errors)."""
    failures = sorted(getattr(err, "failures", {}).items(), key=lambda item: item[1].timestamp)
    causes = [(r, f) for r, f in failures if not any(c in str(f.message).lower() for c in _CONSEQUENCES)]
    return (causes or failures)[0] if failures else err.get_first_failure()


def _failure(err: Any, processes: int) -> GraftError:
    import sys

    from . import errors

    failed, failure = _root_failure(err)
    data = failure.message if isinstance(failure.message, dict) else {"message": failure.message}
    message = str(data.get("message") or "")
    first = message.splitlines()[0] if message else ""
    kind, _, text = first.partition(": ")
    known = getattr(errors, kind, None)
    if isinstance(known, type) and issubclass(known, GraftError):
        return known(text)  # the process's own one-line error, as a single process says it
    who = f"process {failed} of {processes}"
    if failure.exitcode < 0:
        what = f"{who} was killed ({failure.signal_name()})"
    elif "timed out" in message.lower() or "timeout" in message.lower():
        what = (
            f"{who} waited {timeout_seconds():.0f}s for the others and gave up ({TIMEOUT_ENV}): "
            "another process hung or died"
        )
    elif first and not first.startswith("To enable traceback"):
        trace = (data.get("extraInfo") or {}).get("py_callstack")
        if trace:  # a bug: its traceback, as a single process shows it
            print(trace.rstrip("\n"), file=sys.stderr)
        what = f"{who} failed: {first}"
    else:
        what = f"{who} exited with code {failure.exitcode}"
    return DistributedError(f"{what}; the other processes were stopped")
