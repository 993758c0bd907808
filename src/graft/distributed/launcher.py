"""`graft train --devices N`: N processes on this machine through torch.distributed's elastic
launcher (the one under `accelerate launch` and torchrun); only the runner uses it."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DistributedError, GraftError
from .ranks import TIMEOUT_ENV, _env_int, _group, _require_accelerate, timeout_seconds

if TYPE_CHECKING:  # torch is imported where it is used: `is_main` costs nothing to torch-free commands
    import torch


# --------------------------------------------------------------------------- launching


def available(device: torch.device) -> tuple[int, str]:
    """How many processes this machine takes on `device`, and what they are (for messages)."""
    if device.type == "cuda":
        from ..runtime.capabilities import cuda_capabilities

        return cuda_capabilities().device_count, "CUDA GPU(s)"
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
    from torch.distributed.launcher.api import elastic_launch

    check_launch(processes, device)
    config, env = _launch_config(processes, device)
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


def _launch_config(processes: int, device: torch.device) -> tuple[Any, dict[str, str]]:
    """The elastic launcher's settings (one node, `processes` spawned processes, no restarts) and the
    environment the processes start with (their share of the cores' threads)."""
    from torch.distributed.launcher.api import LaunchConfig

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
    return config, env


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
    from .. import errors

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
