"""Fail fast when offline: one cheap probe instead of a download that hangs or retries."""

from __future__ import annotations

import os
import socket
from functools import lru_cache

_OFFLINE_VARS = ("GRAFT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline_forced() -> bool:
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes"} for v in _OFFLINE_VARS)


@lru_cache(maxsize=32)
def _probe(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def can_reach(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True when `host` accepts a TCP connection within `timeout` seconds."""
    return not offline_forced() and _probe(host, port, timeout)
