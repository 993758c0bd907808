"""`graft serve` under load: requests batched across clients and answered as if alone, the event
loop free while a batch runs, overload and slowness answered (503, 504), the bearer token, the
refusal of an open network address, metrics and access logs, and the bad requests new users send."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import hide_module, make_image_folder

import graft
from graft.options import ServeOptions

JSON = {"content-type": "application/json"}

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_load")
    data = make_image_folder(root / "data", per_class=8, seed=5)
    clf = graft.Classifier(strategy="linear", image_size=32, epochs=5, out=str(root / "run"))
    clf.fit(data, log=lambda line: None)
    return clf.run_dir_, sorted(data.glob("*/*.*"))


def _app(run_dir: Path, **options: Any) -> Any:
    from graft.serve import create_app

    return create_app(run_dir, precision="fp32", options=ServeOptions(run_dir=str(run_dir), **options))


def _client(app: Any) -> Any:
    from fastapi.testclient import TestClient

    return TestClient(app)


def _wait_ready(client: Any) -> None:
    deadline = time.monotonic() + 30
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, "the app never got ready"
        time.sleep(0.02)


def _spy(app: Any, sleep_s: float = 0.0) -> list[int]:
    """Record the size of every batch the model runs (after sleeping `sleep_s`)."""
    model, sizes = app.state.model, []
    real = type(model).outputs

    def outputs(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(inputs))
        time.sleep(sleep_s)
        return real(model, inputs, *args, **kwargs)

    model.outputs = outputs
    return sizes


def _post_image(client: Any, path: Path, **headers: str) -> Any:
    upload = {"file": (path.name, path.read_bytes(), "image/png")}
    return client.post("/predict", files=upload, headers=headers)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(image_run):
    run_dir, files = image_run
    app = _app(run_dir, max_batch=8, max_wait_ms=50)
    with _client(app) as client:
        _wait_ready(client)
        alone = [_post_image(client, f).json()["predictions"][0] for f in files[:12]]
        sizes = _spy(app, sleep_s=0.05)
        with ThreadPoolExecutor(12) as pool:
            together = list(pool.map(lambda f: _post_image(client, f), files[:12]))
    assert max(sizes) > 1 and max(sizes) <= 8  # batched across requests, never past --max-batch
    assert sum(sizes) == 12
    for answer, expected in zip(together, alone, strict=True):
        got = answer.json()["predictions"][0]
        assert got["input"] == expected["input"]
        assert [p["label"] for p in got["top"]] == [p["label"] for p in expected["top"]]
        probabilities = np.array([p["probability"] for p in got["top"]])
        assert np.allclose(probabilities, [p["probability"] for p in expected["top"]], atol=1e-5)


def test_health_answers_at_once_while_a_slow_batch_runs(image_run):
    run_dir, files = image_run
    app = _app(run_dir)
    with _client(app) as client:
        _wait_ready(client)
        _spy(app, sleep_s=1.5)
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(_post_image, client, files[0])
            time.sleep(0.3)  # the batch is running now
            start = time.perf_counter()
            health = client.get("/health")
            took = time.perf_counter() - start
            assert not slow.done()
            assert slow.result().status_code == 200
    assert health.status_code == 200 and health.json()["status"] == "alive"
    assert took < 0.5  # the batch (1.5 s) runs in the worker thread, not on the event loop


def test_a_full_queue_answers_503_with_retry_after_at_once(image_run):
    run_dir, files = image_run
    app = _app(run_dir, max_batch=1, max_queue=1)
    with _client(app) as client:
        _wait_ready(client)
        _spy(app, sleep_s=0.8)

        def timed(path: Path) -> tuple[Any, float]:
            start = time.perf_counter()
            return _post_image(client, path), time.perf_counter() - start

        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(timed, files[:5]))
    refused = [(a, s) for a, s in answers if a.status_code == 503]
    assert refused, [a.status_code for a, _ in answers]
    assert all(a.status_code in (200, 503) for a, _ in answers)
    for answer, seconds in refused:
        assert answer.headers["retry-after"] == "1" and "busy" in answer.json()["error"]
        assert seconds < 0.5  # at once, not after the slow batch


def test_a_request_past_its_timeout_gets_504_and_the_server_keeps_serving(image_run):
    run_dir, files = image_run
    app = _app(run_dir, request_timeout=0.2)
    with _client(app) as client:
        _wait_ready(client)
        sizes = _spy(app, sleep_s=0.6)
        late = _post_image(client, files[0])
        assert late.status_code == 504 and "--request-timeout 0.2 s" in late.json()["error"]
        time.sleep(0.6)
        app.state.model.outputs = type(app.state.model).outputs.__get__(app.state.model)
        assert _post_image(client, files[1]).status_code == 200
    assert sizes == [1]


def test_the_token_is_required_and_compared_in_constant_time(image_run, monkeypatch):
    from graft.serve import auth

    compared: list[bytes] = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append(a) or real(a, b))
    run_dir, files = image_run
    with _client(_app(run_dir, token="s3cret")) as client:
        missing = _post_image(client, files[0])
        wrong = _post_image(client, files[0], authorization="Bearer guess")
        right = _post_image(client, files[0], authorization="Bearer s3cret")
        metrics = client.get("/metrics"), client.get("/metrics", headers={"authorization": "Bearer s3cret"})
        health = client.get("/health")
        page = client.get("/").text
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in missing.json()["error"]
    assert wrong.status_code == 401 and right.status_code == 200
    assert [m.status_code for m in metrics] == [401, 200]
    assert health.status_code == 200  # liveness stays open
    assert b"guess" in compared and b"s3cret" in compared
    assert "const needsToken = true" in page


def test_the_token_comes_from_the_environment_too(image_run, monkeypatch):
    monkeypatch.setenv("GRAFT_SERVE_TOKEN", "from-env")
    run_dir, files = image_run
    with _client(_app(run_dir)) as client:
        assert _post_image(client, files[0]).status_code == 401
        assert _post_image(client, files[0], authorization="Bearer from-env").status_code == 200


def test_a_network_address_without_a_token_is_refused_in_one_line(image_run, capsys, monkeypatch):
    from graft.cli import main
    from graft.serve.auth import is_loopback

    run_dir, _ = image_run
    assert main(["serve", str(run_dir), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--token" in err and "--insecure" in err
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.com"))
    import uvicorn

    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    assert main(["serve", str(run_dir), "--host", "0.0.0.0", "--insecure", "--port", "8123"]) == 0
    assert "--insecure: anyone who can reach 0.0.0.0" in capsys.readouterr().out
    assert started[0]["host"] == "0.0.0.0" and started[0]["port"] == 8123


def test_metrics_and_access_logs(image_run, caplog):
    run_dir, files = image_run
    with _client(_app(run_dir)) as client, caplog.at_level(logging.INFO, logger="graft.serve"):
        _wait_ready(client)
        answer = _post_image(client, files[0], **{"x-request-id": "abc123"})
        text = client.get("/metrics").text
    assert answer.headers["x-request-id"] == "abc123"
    assert 'graft_requests_total{path="/predict",status="200"} 1.0' in text
    assert "graft_request_seconds_bucket" in text and "graft_queue_depth 0.0" in text
    assert "graft_batch_size_count" in text and 'modality="image"' in text
    line = next(r.getMessage() for r in caplog.records if "abc123" in r.getMessage())
    assert "POST /predict 200" in line and line.endswith("ms")


def test_bad_image_requests_get_a_4xx_in_grafts_shape(image_run):
    run_dir, files = image_run
    red = next(f for f in files if f.parent.name == "red")
    blue = next(f for f in files if f.parent.name == "blue")
    parts = [("file", (red.name, red.read_bytes())), ("file", (blue.name, blue.read_bytes()))]
    multipart = {"content-type": "multipart/form-data"}  # no boundary
    with _client(_app(run_dir)) as client:
        two = client.post("/predict", files=parts)
        no_boundary = client.post("/predict", content=b"--x\r\n", headers=multipart)
        nowhere = client.get("/nowhere")
        alive = _post_image(client, red)
    rows = two.json()["predictions"]  # each file answered, in order
    assert [r["input"] for r in rows] == [red.name, blue.name]
    assert [r["top"][0]["label"] for r in rows] == ["red", "blue"]
    assert no_boundary.status_code == 400 and set(no_boundary.json()) == {"error"}
    assert nowhere.status_code == 404 and set(nowhere.json()) == {"error"}
    assert alive.status_code == 200


def _text_app(run_dir: Path, monkeypatch: pytest.MonkeyPatch, pairs: bool) -> Any:
    """An app whose model reads texts (pairs or not); its outputs are fixed probabilities."""
    from graft.modalities import get_modality
    from graft.predict import predictor

    model = graft.load(run_dir, precision="fp32")
    model.modality = get_modality("text")
    model.preprocessing = SimpleNamespace(pairs=pairs)
    model.outputs = lambda inputs: np.tile(np.array([0.7, 0.2, 0.1], np.float32), (len(inputs), 1))
    monkeypatch.setattr(predictor, "load", lambda *args, **kwargs: model)
    return _app(run_dir)


def test_the_batch_size_defaults_to_the_modalitys_and_the_flag_overrides_it(image_run, monkeypatch):
    run_dir, _ = image_run
    assert _app(run_dir).state.service.batcher.max_batch == 32
    assert _app(run_dir, max_batch=7).state.service.batcher.max_batch == 7
    assert _text_app(run_dir, monkeypatch, pairs=False).state.service.batcher.max_batch == 64


def test_the_batchers_worker_has_pytorchs_threads_at_a_lower_priority_and_the_event_loop_one():
    """A thread of the event loop's that ran ops with PyTorch's threads would give libgomp more
    threads than cores (see batching.py); a fresh process, not to change this one's threads."""
    code = textwrap.dedent("""
        import asyncio, torch
        from graft.serve.batching import Batcher, torch_threads_for_worker
        torch.set_num_threads(3)
        threads = torch_threads_for_worker()
        import os, threading
        def seen(xs):
            nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            return [(torch.get_num_threads(), nice) for _ in xs]
        batcher = Batcher(seen, 4, 0.0, 4, torch_threads=threads)
        worker_threads, worker_nice = asyncio.run(batcher.compute([0]))[0]
        base = os.getpriority(os.PRIO_PROCESS, 0)
        print(threads, torch.get_num_threads(), worker_threads, worker_nice - base, base)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    threads, loop, worker, lower, base = out.stdout.split()
    assert (threads, loop, worker) == ("3", "1", "3")
    if sys.platform == "linux":  # 10 below the loop's priority, as far as the lowest (19) allows
        assert int(lower) == min(10, 19 - int(base))


def test_bad_text_requests_get_a_4xx_in_grafts_shape(image_run, monkeypatch):
    run_dir, _ = image_run
    with _client(_text_app(run_dir, monkeypatch, pairs=True)) as client:
        single = client.post("/predict", json={"texts": ["only one text"]})
        empty = client.post("/predict", json={"texts": [["", ""]]})
        pair = client.post("/predict", json={"texts": [["a cat", "a dog"]]})
        deep = client.post("/predict", content=b'{"texts": ' + b"[" * 100_000, headers=JSON)
    assert single.status_code == 400 and '[["first", "second"], ...]' in single.json()["error"]
    assert empty.status_code == 400 and "texts[0] is empty" in empty.json()["error"]
    assert pair.status_code == 200 and pair.json()["predictions"][0]["input"] == ["a cat", "a dog"]
    assert deep.status_code == 400 and "nested too deep" in deep.json()["error"]


def test_a_huge_text_is_not_echoed_back_whole(image_run, monkeypatch):
    run_dir, _ = image_run
    huge = "word " * 200_000  # 1 MB
    with _client(_text_app(run_dir, monkeypatch, pairs=False)) as client:
        answer = client.post("/predict", json={"texts": [huge, "short"]})
    rows = answer.json()["predictions"]
    assert answer.status_code == 200 and len(answer.content) < 10_000
    assert rows[0]["input"] == huge[:200] + "..." and rows[1]["input"] == "short"


def test_the_batcher_gathers_holds_over_and_drains():
    from graft.serve.batching import Batcher, Overloaded

    batches: list[list[int]] = []

    def run(inputs: list[int]) -> list[int]:
        batches.append(list(inputs))
        time.sleep(0.05)
        return [x * 10 for x in inputs]

    async def scenario() -> tuple[list[Any], Any]:
        batcher = Batcher(run, max_batch=4, max_wait_s=0.05, max_queue=8)
        batcher.start()
        futures = [batcher.submit([1, 2, 3]), batcher.submit([4, 5, 6]), batcher.submit([7])]
        await batcher.drain()  # the accepted ones finish
        try:
            batcher.submit([8])
        except Overloaded as err:
            refused = err
        return [f.result() for f in futures], refused

    answers, refused = asyncio.run(scenario())
    assert answers == [[10, 20, 30], [40, 50, 60], [70]]
    assert batches == [[1, 2, 3], [4, 5, 6, 7]]  # [4, 5, 6] did not fit the first batch: it led the next
    assert "stopping" in str(refused)


def test_a_request_holds_its_place_while_it_is_read_and_one_past_the_queue_is_refused_first():
    from graft.serve.batching import Batcher, Overloaded

    async def scenario() -> list[Any]:
        batcher = Batcher(lambda xs: xs, max_batch=4, max_wait_s=0.0, max_queue=2)
        first, second = batcher.reserve(), batcher.reserve()  # two bodies being read
        seen = [batcher.full]
        try:
            batcher.reserve()
        except Overloaded as err:
            seen.append(str(err))
        future = batcher.submit([1], first)  # the place it held becomes its place in the queue
        seen += [batcher.full, batcher.queue.qsize(), batcher.reading]
        second.release()
        seen += [batcher.full, batcher.reading]
        future.cancel()
        return seen

    full, refused, still_full, queued, reading, after, left = asyncio.run(scenario())
    assert full and "2 requests are waiting" in refused
    assert (still_full, queued, reading) == (True, 1, 1)
    assert (after, left) == (False, 0)


def test_serve_options_reach_the_command_line():
    from graft.cli import _parser

    flags = ["--max-batch", "16", "--max-wait-ms", "2", "--max-queue", "9", "--request-timeout", "3"]
    args = _parser().parse_args(["serve", "run", *flags, "--token", "t", "--insecure"])
    assert (args.max_batch, args.max_wait_ms, args.max_queue, args.request_timeout) == (16, 2.0, 9, 3.0)
    assert (args.token, args.insecure) == ("t", True)
    defaults = ServeOptions(run_dir="run")
    assert (defaults.max_batch, defaults.max_wait_ms, defaults.max_queue) == (None, 5.0, 256)
    assert json.loads(json.dumps(defaults.request_timeout)) == 30.0


def test_shutdown_under_load_lets_every_accepted_request_finish(image_run):
    """uvicorn told to stop while 8 requests are queued or running: each still gets its 200."""
    httpx = pytest.importorskip("httpx")
    uvicorn = pytest.importorskip("uvicorn")
    run_dir, files = image_run
    app = _app(run_dir, max_batch=2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not (server.started and httpx.get(f"{base}/ready").status_code == 200):
        assert time.monotonic() < deadline, "the server never got ready"
        time.sleep(0.05)
    sizes = _spy(app, sleep_s=0.2)

    def post(path: Path) -> int | str:
        try:
            upload = {"file": (path.name, path.read_bytes(), "image/png")}
            return httpx.post(f"{base}/predict", files=upload, timeout=30).status_code
        except httpx.TransportError as err:  # an accepted request dropped
            return type(err).__name__

    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(post, f) for f in files[:8]]
        batcher, deadline = app.state.service.batcher, time.monotonic() + 20
        while len(batcher.pending) + sum(sizes) < 8:  # all accepted: batches running, the rest queued
            assert time.monotonic() < deadline, "the requests never arrived"
            time.sleep(0.01)
        server.should_exit = True
        statuses = [a.result() for a in answers]
    thread.join(timeout=30)
    assert statuses == [200] * 8 and sum(sizes) == 8
    assert not thread.is_alive()


# --------------------------------------------------------------------------- the engine at start-up


def _started(app: Any) -> Any:
    client = _client(app)
    client.__enter__()
    _wait_ready(client)
    return client


def test_the_engine_race_runs_at_start_up_at_max_batch_and_decides_serving(image_run, monkeypatch):
    """Six inputs a batch: the engines race on six at start-up (a server repays an export whatever
    its batch size), the winner runs /predict, /health names it, and each answer is what a
    one-at-a-time predict gives."""
    from graft.runtime import engine

    raced: list[int] = []
    real_race = engine._race
    monkeypatch.setattr(engine, "_race", lambda a, b, x, **k: raced.append(len(x)) or real_race(a, b, x, **k))
    run_dir, files = image_run
    said: list[str] = []
    from graft.serve import create_app

    options = ServeOptions(run_dir=str(run_dir), max_batch=6)
    app = create_app(run_dir, precision="fp32", options=options, log=said.append)
    client = _started(app)
    try:
        health = client.get("/health").json()
        answers = [_post_image(client, f).json()["predictions"][0] for f in files[:4]]
        metrics = client.get("/metrics").text
    finally:
        client.__exit__(None, None, None)
    model = app.state.model
    assert raced == [6] and model.settled is not None
    assert health["engine"] == model.engine_choice["name"] and health["engine_reason"]
    assert health["precision"] == "fp32" and f'engine="{health["engine"]}"' in metrics
    (line,) = [s for s in said if s.startswith("engine ")]
    assert line.startswith(f"engine {health['engine']} (fp32) at batches of 6: ")
    alone = graft.load(run_dir, precision="fp32")
    for answer, path in zip(answers, files[:4], strict=True):
        expected = dict(zip(alone.classes_, alone.predict_proba([path])[0], strict=True))
        for row in answer["top"]:
            assert row["probability"] == pytest.approx(expected[row["label"]], abs=1e-4)


def test_a_race_won_by_onnxruntime_makes_serving_use_it(image_run, monkeypatch):
    from graft.runtime import engine

    ran: list[int] = []

    def won_by_onnxruntime(module, example, n_inputs, engine_name="auto", serving=False):
        eager = engine.torch_forward(module, engine.FP32)
        choice = engine.EngineChoice("onnxruntime", "1.4x PyTorch fp32's speed (a fake race)", 0.0, 1.4)
        return (lambda x: ran.append(len(x)) or eager(x)), choice

    monkeypatch.setattr(engine, "choose_engine", won_by_onnxruntime)
    run_dir, files = image_run
    client = _started(_app(run_dir, max_batch=4))
    try:
        answer = _post_image(client, files[0])
        health = client.get("/health").json()
    finally:
        client.__exit__(None, None, None)
    assert answer.status_code == 200 and ran[-1] == 1  # the request ran on the winner's forward
    assert (health["engine"], health["precision"]) == ("onnxruntime", "fp32")
    assert "fake race" in health["engine_reason"]


def test_a_parity_failure_keeps_pytorch(image_run, monkeypatch):
    from graft.runtime import engine

    real = engine._ort_forward
    monkeypatch.setattr(engine, "_ort_forward", lambda session: (lambda x: real(session)(x) + 1.0))
    run_dir, files = image_run
    client = _started(_app(run_dir, max_batch=4))
    try:
        answer = _post_image(client, files[0]).json()["predictions"][0]
        health = client.get("/health").json()
    finally:
        client.__exit__(None, None, None)
    assert health["engine"] == "torch" and "differs from fp32 PyTorch" in health["engine_reason"]
    expected = graft.load(run_dir, precision="fp32").predict([files[0]])[0]
    assert answer["top"][0]["label"] == expected


def test_without_onnxruntime_pytorch_serves_and_says_why_in_one_line(image_run, monkeypatch):
    hide_module(monkeypatch, "onnxruntime")
    run_dir, files = image_run
    said: list[str] = []
    from graft.serve import create_app

    app = create_app(run_dir, precision="fp32", options=ServeOptions(run_dir=str(run_dir)), log=said.append)
    client = _started(app)
    try:
        assert _post_image(client, files[0]).status_code == 200
        health = client.get("/health").json()
    finally:
        client.__exit__(None, None, None)
    assert health["engine"] == "torch" and "onnxruntime is not installed" in health["engine_reason"]
    assert [s for s in said if s.startswith("engine ")] == [
        f"engine torch (fp32) at batches of 32: {health['engine_reason']}"
    ]


# --------------------------------------------------------------------------- bodies without a length


def test_a_body_without_content_length_is_held_to_the_limit(image_run, monkeypatch):
    """A client that streams its body (chunked, no content-length) gets the same 413 in graft's
    shape, for an upload or JSON, and the server keeps serving."""
    run_dir, files = image_run

    def chunks(total: int) -> Any:
        for _ in range(total // 1000):
            yield b"x" * 1000

    from graft.serve import create_app

    options = ServeOptions(run_dir=str(run_dir))
    app = create_app(run_dir, precision="fp32", options=options, max_upload_bytes=20_000)
    boundary = {"content-type": "multipart/form-data; boundary=b"}
    with _client(app) as client:
        upload = client.post("/predict", content=chunks(60_000), headers=boundary)
        texts = client.post("/predict", content=chunks(60_000), headers=JSON)
        alive = _post_image(client, files[0])
    for refused in (upload, texts):
        assert refused.status_code == 413 and set(refused.json()) == {"error"}
        assert "over the 20000-byte limit" in refused.json()["error"]
        assert "content-length" not in refused.request.headers
    assert alive.status_code == 200


def test_a_large_photo_is_served_as_predict_reads_it(image_run, tmp_path):
    """An upload is decoded and resized in a decoding thread as `predict` reads a file (a large
    JPEG at a reduced scale): the same probabilities, so the batch only crops it."""
    from PIL import Image

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    photo = tmp_path / "large.jpg"
    Image.fromarray(pixels).resize((1200, 900), Image.Resampling.NEAREST).save(photo, quality=90)
    run_dir, _ = image_run
    with _client(_app(run_dir)) as client:
        _wait_ready(client)
        (row,) = _post_image(client, photo).json()["predictions"]
    alone = graft.load(run_dir, precision="fp32")
    expected = dict(zip(alone.classes_, alone.predict_proba([photo])[0], strict=True))
    for answer in row["top"]:
        assert answer["probability"] == pytest.approx(expected[answer["label"]], abs=1e-4)
