"""Progress: a tqdm bar on a terminal, a plain line every `every` seconds otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from tqdm.auto import tqdm

from .distributed import ranks


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "img", every: float = 30.0) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done = 0
        self.extra = ""
        self.started = self.last = time.perf_counter()
        self.quiet = not ranks.is_main()  # in a multi-process run, rank 0 shows progress
        shown = sys.stderr.isatty() and not self.quiet
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False) if shown else None

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every and self.done < self.total and not self.quiet:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            speed = f"{rate:.1f} {self.unit}/s" if rate >= 1 else f"{1 / max(rate, 1e-9):.1f} s/{self.unit}"
            extra = f", {self.extra}" if self.extra else ""
            print(
                f"{self.desc}: {self.done}/{self.total} {self.unit} ({speed}{extra})",
                file=sys.stderr,
                flush=True,
            )

    def note(self, text: str) -> None:
        """A short status shown beside the bar (and in the periodic lines)."""
        self.extra = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
