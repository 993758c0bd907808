"""The serve suite's client side: an asyncio load generator (httpx) at N concurrent clients, a
/health poller every 0.2 s (a process of its own: the load generator's event loop neither delays
nor competes with it for the GIL) and an RSS sampler of the server process and its children, all
running while the load does; one row of figures per load."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import multiprocessing
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


def poll_health(host: str, port: int, polling: Any, stop: Any, out: Any) -> None:
    """GET /health every HEALTH_EVERY_S on one kept-alive connection (`polling` is set after the
    first) until `stop` is set; then (latencies in seconds, failures) into the pipe `out`."""
    seconds: list[float] = []
    failed = 0
    connection = http.client.HTTPConnection(host, port, timeout=30)
    while not seconds or not stop.wait(HEALTH_EVERY_S):
        started = time.perf_counter()
        try:
            connection.request("GET", "/health")
            answer = connection.getresponse()
            answer.read()
            failed += answer.status != 200
        except (OSError, http.client.HTTPException):  # counted, and a new connection next time
            failed += 1
            connection.close()
        seconds.append(time.perf_counter() - started)
        polling.set()
    out.send((seconds, failed))


class Watcher:
    """While the load runs: a process polling /health (`poll_health`) and a thread sampling the
    server's RSS with the count of requests answered so far."""

    def __init__(self, base: str, pid: int, answered: Answered) -> None:
        self.base, self.pid, self.answered = base, pid, answered
        self.health_s: list[float] = []
        self.health_failed = 0
        self.rss: list[tuple[float, int, float]] = []  # (seconds, requests answered, MB)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        context = multiprocessing.get_context("spawn")
        self.polling, self.stop_polling = context.Event(), context.Event()
        self.results, sent = context.Pipe(duplex=False)
        host, port = base.removeprefix("http://").split(":")
        polls = (host, int(port), self.polling, self.stop_polling, sent)
        self.poller = context.Process(target=poll_health, args=polls)
        self.started = time.perf_counter()

    def __enter__(self) -> Watcher:
        self.poller.start()
        self.polling.wait(60)  # the load starts once /health is being polled
        self.started = time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.stop_polling.set()
        if self.results.poll(60):  # a poll in flight ends within its 30 s timeout
            self.health_s, self.health_failed = self.results.recv()
        self.poller.join(timeout=5)
        if self.poller.is_alive():
            self.poller.terminate()
        self.thread.join()

    def _sample(self) -> None:
        while True:
            done = len(self.answered.statuses)
            self.rss.append((time.perf_counter() - self.started, done, rss_mb(self.pid)))
            if self.stop.wait(RSS_EVERY_S):
                break

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
