"""The serve suite's client side: an asyncio load generator (httpx) at N concurrent clients, a
/health poller every 0.2 s and an RSS sampler of the server process and its children, all running
while the load does; one row of figures per load."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEALTH_EVERY_S = 0.2
RSS_EVERY_S = 0.25
RSS_FROM_REQUEST = 500  # RSS growth is measured from after this many requests to the end


@dataclass(frozen=True)
class Body:
    content: bytes
    headers: dict[str, str]


@dataclass
class Answered:
    """Each request's status (an int, `timeout` or the transport error's name) and latency."""

    statuses: list[Any] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, status: Any, seconds: float) -> None:
        self.statuses.append(status)
        self.seconds.append(seconds)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


async def _drive(
    url: str, bodies: list[Body], clients: int, total: int, timeout_s: float, answered: Answered
) -> None:
    """`total` POSTs from `clients` concurrent clients, each sending the next body when answered."""
    import httpx

    counter = itertools.count()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:

        async def one_client() -> None:
            while (i := next(counter)) < total:
                body, started = bodies[i % len(bodies)], time.perf_counter()
                try:
                    answer = await client.post(url, content=body.content, headers=body.headers)
                    status: Any = answer.status_code
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.TransportError as err:
                    status = type(err).__name__
                answered.add(status, time.perf_counter() - started)

        await asyncio.gather(*(one_client() for _ in range(clients)))


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants (Linux /proc), in MB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        found = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        total += int(found[0]) if found else 0
    return total / 1024


class Watcher:
    """A thread polling /health every 0.2 s and sampling the server's RSS while the load runs."""

    def __init__(self, base: str, pid: int, answered: Answered) -> None:
        self.base, self.pid, self.answered = base, pid, answered
        self.health_s: list[float] = []
        self.health_failed = 0
        self.rss: list[tuple[float, int, float]] = []  # (seconds, requests answered, MB)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.started = time.perf_counter()

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()

    def _watch(self) -> None:
        import httpx

        next_health = next_rss = time.perf_counter()
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                now = time.perf_counter()
                if now >= next_rss:
                    self.rss.append((now - self.started, len(self.answered.statuses), rss_mb(self.pid)))
                    next_rss = now + RSS_EVERY_S
                if now >= next_health:
                    self._poll(client)
                    next_health = now + HEALTH_EVERY_S
                self.stop.wait(0.01)
        self.rss.append((time.perf_counter() - self.started, len(self.answered.statuses), rss_mb(self.pid)))

    def _poll(self, client: Any) -> None:
        started = time.perf_counter()
        try:
            ok = client.get(f"{self.base}/health").status_code == 200
        except Exception:  # noqa: BLE001 - a failed health check is counted, not raised
            ok = False
        self.health_s.append(time.perf_counter() - started)
        self.health_failed += not ok

    def rss_figures(self, total: int) -> dict[str, Any]:
        """RSS growth from the first sample after RSS_FROM_REQUEST answers (half the load when it is
        smaller) to the end, and the samples over time (at most 12, in seconds and MB)."""
        after = min(RSS_FROM_REQUEST, total // 2)
        base = next((mb for _, done, mb in self.rss if done >= after), self.rss[-1][2])
        step = max(1, len(self.rss) // 12)
        over_time = [[round(t, 1), round(mb, 1)] for t, _, mb in self.rss[::step]]
        return {"rss_growth_mb": round(self.rss[-1][2] - base, 1), "rss_growth_from_request": after,
                "rss_end_mb": round(self.rss[-1][2], 1), "rss_mb_over_time": over_time}  # fmt: skip


def measure(
    base: str, pid: int, bodies: list[Body], clients: int, total: int, timeout_s: float
) -> dict[str, Any]:
    """One load: `total` requests from `clients` clients, with the server watched meanwhile."""
    done = Answered()
    with Watcher(base, pid, done) as watcher:
        started = time.perf_counter()
        asyncio.run(_drive(f"{base}/predict", bodies, clients, total, timeout_s, done))
        wall = time.perf_counter() - started
    by_status = Counter(str(s) for s in done.statuses)
    ok = [t for s, t in zip(done.statuses, done.seconds, strict=True) if s == 200]
    busy = [t for s, t in zip(done.statuses, done.seconds, strict=True) if s == 503]
    return {
        "clients": clients, "requests": total, "ok": len(ok),
        "errors": {s: n for s, n in sorted(by_status.items()) if s != "200"},
        "client_timeouts": by_status.get("timeout", 0),
        "requests_per_s": round(len(ok) / wall, 2),
        "p50_ms": _ms(statistics.median(ok) if ok else None), "p99_ms": _ms(percentile(ok, 0.99)),
        "p99_503_ms": _ms(percentile(busy, 0.99)), "max_503_ms": _ms(max(busy) if busy else None),
        "health_p99_ms": _ms(percentile(watcher.health_s, 0.99)), "health_polls": len(watcher.health_s),
        "health_failed": watcher.health_failed, **watcher.rss_figures(total),
    }  # fmt: skip
