"""`graft serve` under load, beside the offline throughput of the same run folder in the same run.

    python -m bench serve                                   # a smoke: a tiny image run, about a minute
    python -m bench serve [--only images text] [--clients 1 16 256] [--requests-total N]
                          [--files N] [--image-size 224] [--run RUN] [--text-run RUN] [--max-batch N]
                          [--max-queue N]

Each case trains a tiny run (or serves `--run` / `--text-run`), measures the OFFLINE throughput
first (`graft.load(run).predict_proba` on batches of 32 of the same inputs, 2 torch threads, on
each engine: the faster is the offline figure), then starts one `graft serve RUN` process of the
tree (cold cache; it races the engines at --max-batch and serves the winner), waits for /ready, and
loads it at each client count (asyncio + httpx, client timeout 30 s; `load.py`). A row per count:
req/s and inputs/s of 200s, p50/p99, errors by status, p99 and max latency of the 503s (at the
client, and in the server's access log: the client's adds the load generator's own queueing on the
same cores), client timeouts, /health p99 polled every 0.2 s during the load, RSS of the server
and its children sampled over time and its growth from after the first 500 requests to the end, the offline
figure and served/offline, and the engine the server chose and why.

- images: 500x375 JPEGs of varied content, one a request (multipart `file`); the run is a
  linear probe of the packaged EfficientNet-Lite0 at `--image-size` (64 for the smoke).
- text: 8 texts a request (JSON); the run is a linear probe of the packaged MiniLM.

The issue's targets (2 cores, alone on the machine), measured with:

    python -m bench serve --only images text --clients 1 16 256 --requests-total 2000 \
        --files 500 --image-size 224
    python -m bench serve --only images text --clients 16 --requests-total 5000 --files 500 \
        --image-size 224

images at 16 clients: served >= 0.8x offline, /health p99 <= 50 ms; 5,000 requests at 16 clients:
no errors, RSS growth <= 50 MB; 256 clients: only 200s and 503s, each 503 within 100 ms, no client
timeouts; texts: the same figures.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.suites import Context

BOUNDARY = "graft-bench-boundary"
TEXTS_PER_REQUEST = 8
PHOTO_SIZE = (500, 375)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--clients", type=int, nargs="+", default=[1, 16, 256], help="a row per count")
    group.add_argument("--requests-total", type=int, default=0,
                       help="requests at each client count (default: 2 a client, at least 32)")  # fmt: skip
    group.add_argument("--files", type=int, default=32, help="distinct images (texts: requests' worth)")
    group.add_argument("--image-size", type=int, default=64, help="the trained image run's input size")
    group.add_argument("--timeout", type=float, default=30.0, help="client timeout, seconds")
    group.add_argument("--run", type=Path, help="an image run folder to serve (default: train one)")
    group.add_argument("--text-run", type=Path, help="a text run folder to serve (default: train one)")
    group.add_argument("--max-batch", type=int, help="graft serve's --max-batch (default: graft's)")
    group.add_argument("--max-queue", type=int, help="graft serve's --max-queue (default: graft's; "
                       "below the client count, the 503s are measured)")  # fmt: skip


# --------------------------------------------------------------------------- inputs


def photo(rng: random.Random) -> Any:
    """A 500x375 picture of varied content: a gradient, shapes of random colours, noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    w, h = PHOTO_SIZE
    a, b = (np.array([rng.randrange(256) for _ in range(3)], np.float32) for _ in range(2))
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    pixels = a * (1 - ramp) + b * ramp + np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(3, 9)):
        x, y = rng.randrange(w), rng.randrange(h)
        box = (x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 150))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def write_photos(folder: Path, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng, paths = random.Random(seed), []
    for i in range(n):
        path = folder / f"{i:04d}.jpg"
        if not path.is_file():
            photo(rng).save(path, quality=90)
        paths.append(path)
    return paths


GOOD = ["great", "wonderful", "lovely", "excellent", "superb", "delightful", "moving", "sharp"]
BAD = ["awful", "terrible", "boring", "dreadful", "poor", "bad", "flat", "clumsy"]
NOUNS = ["movie", "film", "plot", "acting", "story", "ending", "score", "cast", "script", "pacing"]


def review(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["pos", "neg"])
    words = GOOD if label == "pos" else BAD
    text = f"the {rng.choice(NOUNS)} was {rng.choice(words)}" + "".join(
        f" and the {rng.choice(NOUNS)} {rng.choice(['felt', 'seemed', 'was'])} {rng.choice(GOOD + BAD)}"
        for _ in range(rng.randrange(0, 6))
    )
    return text, label


def _multipart(path: Path) -> bytes:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()  # fmt: skip
    return head + path.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()


# --------------------------------------------------------------------------- runs


def image_run(ctx: Context, photos: list[Path]) -> Path:
    if ctx.options.run:
        return ctx.options.run
    data = ctx.work / "train"
    for label, first in (("a", 0), ("b", 1)):  # any labels: the predictions' speed is measured
        (data / label).mkdir(parents=True, exist_ok=True)
        for path in photos[first:16:2]:
            target = data / label / path.name
            if not target.exists():
                target.symlink_to(path)
    out = ctx.work / "run"
    size = ["--image-size", str(ctx.options.image_size)]
    ctx.graft("train", str(data), "--strategy", "linear", *size, "--out", str(out), "--overwrite").check()
    return out


def text_run(ctx: Context) -> Path:
    if ctx.options.text_run:
        return ctx.options.text_run
    rng = random.Random(1)
    table = ctx.work / "reviews.csv"
    rows = ["text,label", *(f"{t},{label}" for t, label in (review(rng) for _ in range(60)))]
    table.write_text("\n".join(rows) + "\n")
    out = ctx.work / "run"
    ctx.graft("train", str(table), "--strategy", "linear", "--out", str(out), "--overwrite").check()
    return out


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(base: str, server: subprocess.Popen, seconds: float = 600) -> dict[str, Any]:
    """/health once /ready says yes (the engines raced and a batch run), or once /health answers
    for a server without /ready."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"graft serve exited {server.returncode} before it was ready")
        try:
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=2):
                    pass
            except urllib.error.HTTPError as error:  # a tree without /ready: alive is ready
                if error.code != 404:
                    raise
            with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                return json.loads(answer.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    raise RuntimeError(f"graft serve was not ready at {base}/ready within {seconds:.0f} s")


def _offline(ctx: Context, run: Path, inputs: list[Any], engines: list[str]) -> dict[str, Any]:
    listed = ctx.work / "inputs.json"
    listed.write_text(json.dumps([str(i) for i in inputs]))
    script = ["bench.suites.serve.offline", str(run), str(listed), "--batch", "32", "--threads", "2"]
    rows = ctx.module(*script, "--engines", *engines, cache=ctx.work / "cache").check().rows
    best = max(rows, key=lambda row: row["inputs_per_s"])
    calls = max(row.get("batch_calls_inputs_per_s", 0.0) for row in rows)
    return {"offline_inputs_per_s": best["inputs_per_s"], "offline_engine": best["ran_on"],
            "offline_by_engine": {row["engine"]: row["inputs_per_s"] for row in rows},
            "offline_batch_calls_inputs_per_s": calls}  # fmt: skip


def serve_rows(
    ctx: Context, run: Path, bodies: list[Any], per_request: int, offline: dict[str, Any]
) -> list[dict[str, Any]]:
    """The server of `run` loaded at each client count, a row each."""
    from bench.suites.serve.load import measure

    port, log = _free_port(), ctx.work / "serve.log"
    flags = [f"--{name.replace('_', '-')}={value}" for name in ("max_batch", "max_queue")
             if (value := getattr(ctx.options, name))]  # fmt: skip
    server = ctx.start("serve", str(run), "--port", str(port), *flags, cache=ctx.work / "cache", log=log)
    base, rows = f"http://127.0.0.1:{port}", []
    try:
        started = time.perf_counter()
        health = _wait_ready(base, server)
        ready_s = round(time.perf_counter() - started, 1)
        said = [line for line in log.read_text().splitlines() if line.startswith("engine ")]
        for clients in ctx.options.clients:
            total = ctx.options.requests_total or max(32, 2 * clients)
            logged = len(log.read_text().splitlines())
            row = measure(base, server.pid, bodies, clients, total, ctx.options.timeout)
            row |= served_latency(log.read_text().splitlines()[logged:])
            served = row["requests_per_s"] * per_request
            calls = offline["offline_batch_calls_inputs_per_s"]
            rows.append({"row": f"{clients} clients", **row, "inputs_per_request": per_request,
                         "inputs_per_s": round(served, 2), **offline,
                         "served_over_offline": round(served / offline["offline_inputs_per_s"], 3),
                         "served_over_batch_calls": round(served / max(calls, 1e-9), 3),
                         "engine": health.get("engine"), "engine_line": said[0] if said else None,
                         "precision": health.get("precision"), "max_batch": health.get("max_batch"),
                         "ready_s": ready_s})  # fmt: skip
            print({k: v for k, v in rows[-1].items() if k != "rss_mb_over_time"}, flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows


def served_latency(lines: list[str]) -> dict[str, Any]:
    """The server's own latency of its 503s (access log: `ID POST /predict STATUS 5.5ms`), from
    the app receiving the request to its answer: what the client's figure holds beyond it is the
    load generator's own queueing and the network stack on the same cores."""
    from bench.suites.serve.load import percentile

    refused = [float(p[-1].removesuffix("ms")) for p in (line.split() for line in lines)
               if len(p) >= 4 and p[-2] == "503" and p[-3] == "/predict"]  # fmt: skip
    p99 = percentile(refused, 0.99)
    return {"server_p99_503_ms": None if p99 is None else round(p99, 1),
            "server_max_503_ms": max(refused) if refused else None}  # fmt: skip


# --------------------------------------------------------------------------- cases


def images(ctx: Context) -> list[dict[str, Any]]:
    """500x375 JPEGs, one a request: served against offline, at each client count."""
    from bench.suites.serve.load import Body

    photos = write_photos(ctx.work / "photos", max(ctx.options.files, 16), seed=0)
    run = image_run(ctx, photos)
    offline = _offline(ctx, run, photos, ["torch", "onnxruntime"])
    kind = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    bodies = [Body(_multipart(path), kind) for path in photos]
    return serve_rows(ctx, run, bodies, 1, offline)


def text(ctx: Context) -> list[dict[str, Any]]:
    """8 texts a request: served against offline, at each client count."""
    from bench.suites.serve.load import Body

    rng = random.Random(2)
    texts = [review(rng)[0] for _ in range(ctx.options.files * TEXTS_PER_REQUEST)]
    run = text_run(ctx)
    offline = _offline(ctx, run, texts, ["torch"])  # the engine race runs image models only
    kind = {"content-type": "application/json"}
    chunks = [texts[i : i + TEXTS_PER_REQUEST] for i in range(0, len(texts), TEXTS_PER_REQUEST)]
    bodies = [Body(json.dumps({"texts": chunk}).encode(), kind) for chunk in chunks]
    return serve_rows(ctx, run, bodies, TEXTS_PER_REQUEST, offline)


CASES = {"images": images, "text": text}
DEFAULT_CASES = ("images",)  # the smoke; the text case runs when named (`--only images text`)
