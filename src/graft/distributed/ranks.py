"""Who this process is among several (rank, world size), joining the process group, and the few
values the processes agree on (`from_main`, `gather_objects`, `any_process`, `sum_all`).
"""

from __future__ import annotations

import math
import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: `is_main` costs nothing to torch-free commands
    import torch

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

        # mixed precision stays graft's own (runtime.precision.autocast, one path for every run)
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




# --------------------------------------------------------------------------- per process


def rank_seed(seed: int) -> int:
    """This process's seed for random augmentation and dropout: rank 0 keeps `seed` (a single
    process is rank 0), the others get their own streams."""
    return seed + rank() * RANK_SEED_STRIDE


def local_batch_size(batch_size: int) -> int:
    """Examples per process in a global batch of `batch_size` (the largest part)."""
    return math.ceil(batch_size / world_size())


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
