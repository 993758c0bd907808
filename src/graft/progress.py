"""Progress: a tqdm bar on a terminal, a plain line every `every` seconds otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from tqdm.auto import tqdm


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "img", every: float = 30.0) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done = 0
        self.started = self.last = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False) if sys.stderr.isatty() else None

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            print(
                f"{self.desc}: {self.done}/{self.total} {self.unit} ({rate:.0f} {self.unit}/s)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()
