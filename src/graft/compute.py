"""Deprecated: `graft.compute` moved to the package `graft.runtime`;
it still works for one release, with a DeprecationWarning."""

import importlib
import warnings
from typing import Any

from .runtime.device import (  # noqa: F401 - the old names, re-exported
    DEVICE_CHOICES,
    cuda_tuning,
    module_device,
    resolve_device,
    synchronize,
)
from .runtime.inference import (  # noqa: F401 - the old names, re-exported
    forward_all,
)
from .runtime.precision import (  # noqa: F401 - the old names, re-exported
    CPU_BF16_ENV,
    FP32,
    Precision,
    autocast,
    autocast_dtype,
    bf16_supported,
    cpu_has_native_bf16,
    cuda_has_native_bf16,
    current_precision,
    resolve_precision,
    use_precision,
)

warnings.warn(
    "graft.compute is deprecated: import from graft.runtime.device, graft.runtime.precision or "
    "graft.runtime.inference",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    """Any other name of the old module (a private one too), from where it lives now."""
    for where in ("graft.runtime.device", "graft.runtime.precision", "graft.runtime.inference",):
        module = importlib.import_module(where)
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
