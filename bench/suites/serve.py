"""`graft serve` under load: requests per second and latency with N concurrent clients.

    python -m bench serve [--clients 1 4 16] [--requests 40] [--run RUN_DIR]

The server is one `graft serve RUN --port P` process of the tree (cold cache); each client posts
the same small JPEG as multipart `file` to /predict, one request after another, `--requests` each.
A row per client count: requests/s over the wall time of all clients, the median and 95th
percentile latency, failed requests, and the server's peak RSS (VmHWM). Without `--run` a linear
probe of the packaged EfficientNet-Lite0 on 16 generated images is trained first (seconds).
To add a case (texts as JSON, several workers), add a function to CASES.
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.suites import Context

BOUNDARY = "graft-bench-boundary"


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="a row per count")
    group.add_argument("--requests", type=int, default=40, help="requests per client")
    group.add_argument("--run", type=Path, help="a run folder to serve (default: train a tiny image probe)")


def _jpeg(colour: tuple[int, int, int], size: int = 64) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def tiny_run(ctx: Context) -> Path:
    data = ctx.work / "data"
    for label, colour in {"blue": (40, 60, 200), "red": (200, 40, 40)}.items():
        (data / label).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            (data / label / f"{i}.jpg").write_bytes(_jpeg((colour[0] + i, colour[1], colour[2])))
    out = ctx.work / "run"
    args = ["train", str(data), "--strategy", "linear", "--image-size", "64"]
    ctx.graft(*args, "--out", str(out), "--overwrite").check()
    return out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _multipart(image: bytes) -> bytes:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()  # fmt: skip
    return head + image + f"\r\n--{BOUNDARY}--\r\n".encode()


def _post(url: str, body: bytes) -> float | None:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()
    except (urllib.error.URLError, TimeoutError):
        return None
    return time.perf_counter() - started


def _wait_healthy(base: str, server: Any, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"graft serve exited {server.returncode} before it answered")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    raise RuntimeError(f"graft serve did not answer {base}/health within {seconds:.0f} s")


def _peak_rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(found[0]) / 1024 if found else None


def _load(url: str, body: bytes, clients: int, requests: int) -> dict[str, Any]:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(lambda _: _post(url, body), range(clients * requests)))
    wall = time.perf_counter() - started
    latencies = sorted(t for t in done if t is not None)
    p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else None
    return {"row": f"{clients} client(s)", "clients": clients, "requests": len(done),
            "failed": done.count(None), "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p95_ms": round(1000 * p95, 1) if p95 is not None else None}  # fmt: skip


def images(ctx: Context) -> list[dict[str, Any]]:
    """An image model: requests/s and latency of /predict for each client count."""
    run_dir = ctx.options.run or tiny_run(ctx)
    port = _free_port()
    log = ctx.work / "serve.log"
    server = ctx.start("serve", str(run_dir), "--port", str(port), cache=ctx.work / "cache", log=log)
    base, rows = f"http://127.0.0.1:{port}", []
    try:
        started = time.perf_counter()
        _wait_healthy(base, server)
        ready = time.perf_counter() - started
        body = _multipart(_jpeg((120, 80, 40), 160))
        for clients in ctx.options.clients:
            row = _load(f"{base}/predict", body, clients, ctx.options.requests)
            rows.append({**row, "ready_s": round(ready, 2)})
            print(rows[-1], flush=True)
        for row in rows:
            row["server_peak_rss_mb"] = _peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


CASES = {"images": images}
