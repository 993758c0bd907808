"""What people look at: report.html (opened in headless Chromium), graft compare's outputs, and the
`graft serve` page and API (driven in headless Chromium and with an HTTP client)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLASSES, make_image_folder, unavailable

import graft

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data = make_image_folder(root / "data", per_class=8, seed=5)
    clf = graft.Classifier(strategy="linear", image_size=32, epochs=5, out=str(root / "run"))
    clf.fit(data, log=lambda line: None)
    return clf.run_dir_, data


@pytest.fixture
def browser():
    try:
        import playwright.sync_api as playwright
    except ImportError:
        unavailable("playwright is not installed (extra test)")
    if CHROMIUM is None:
        unavailable("headless Chromium is not installed (Debian package chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


# --------------------------------------------------------------------------- report.html


def test_every_run_folder_has_a_self_contained_report(image_run):
    run_dir, _ = image_run
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # curves and confusion matrix, embedded
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert "Per class" in page and all(f">{c}<" in page for c in CLASSES)
    report = json.loads((run_dir / "report.json").read_text())
    assert len(report["top_losses"]) == min(12, report["validation"]["n"])
    losses = [row["loss"] for row in report["top_losses"]]
    assert losses == sorted(losses, reverse=True)
    assert all(row["example"]["image"].startswith("data:image/jpeg;base64,") for row in report["top_losses"])


def test_graft_report_regenerates_the_page(image_run, capsys):
    from graft.cli import main

    run_dir, _ = image_run
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file()
    assert main(["report", str(run_dir / "nowhere")]) == 2
    assert "nowhere: run folder does not exist" in capsys.readouterr().err
    assert main(["report", str(run_dir / "confusion.png")]) == 2  # not a folder
    assert "has no report.json" in capsys.readouterr().err


def test_report_opens_in_chromium_with_its_plots(image_run, browser):
    run_dir, _ = image_run
    page = browser.new_page()
    page.goto((run_dir / "report.html").resolve().as_uri())
    widths = page.eval_on_selector_all("img.plot", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 2 and all(w > 100 for w in widths)  # the PNGs decoded
    assert "validation accuracy" in page.inner_text("body")


# --------------------------------------------------------------------------- graft serve


@pytest.fixture(scope="module")
def client(image_run):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from graft.serve import create_app

    run_dir, _ = image_run
    with TestClient(create_app(run_dir, max_upload_bytes=200_000)) as client:  # starts the batcher
        yield client


def test_predict_an_uploaded_image(client, image_run):
    _, data = image_run
    path = sorted((data / "red").glob("*.png"))[0]
    answer = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert answer.status_code == 200
    top = answer.json()["predictions"][0]["top"]
    assert top[0]["label"] == "red" and len(top) == 3
    assert abs(sum(p["probability"] for p in top) - 1) < 1e-4


def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(client, image_run):
    _, data = image_run
    not_image = client.post("/predict", files={"file": ("notes.png", b"not an image", "image/png")})
    assert not_image.status_code == 415 and "not an image" in not_image.json()["error"]
    assert "BytesIO" not in not_image.json()["error"]  # a message for people, no Python object
    big = client.post("/predict", files={"file": ("big.png", b"x" * 300_000, "image/png")})
    assert big.status_code == 413
    texts = client.post("/predict", json={"texts": ["hello"]})
    assert texts.status_code == 400 and "image model" in texts.json()["error"]
    plain = client.post("/predict", content=b"plain", headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    path = sorted((data / "blue").glob("*.jpg"))[0]
    again = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    assert again.status_code == 200 and again.json()["predictions"][0]["top"][0]["label"] == "blue"
    health = client.get("/health").json()
    assert health["modality"] == "image" and health["classes"] == list(CLASSES)
    # the precision served: the engine raced at start-up decides it (ONNX Runtime computes in fp32)
    alone = graft.load(image_run[0]).precision.name
    assert health["precision"] == ("fp32" if health["engine"] == "onnxruntime" else alone)
    page = client.get("/").text
    assert f"{len(CLASSES)} classes: {', '.join(CLASSES)}" in page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app: Any) -> Iterator[int]:
    """`app` on uvicorn in a thread, on a free local port (yielded once it has started)."""
    pytest.importorskip("uvicorn")
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_page_classifies_an_uploaded_image_in_chromium(image_run, browser, tmp_path):
    from graft.serve import create_app

    run_dir, data = image_run
    with serving(create_app(run_dir)) as port:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        assert page.text_content("#classes") == f"3 classes: {', '.join(CLASSES)}"
        page.set_input_files("#file", str(sorted((data / "green").glob("*.png"))[0]))
        page.wait_for_selector(".prediction", timeout=20_000)
        labels = page.eval_on_selector_all(".prediction", "els => els.map(e => e.textContent)")
        assert labels[0] == "green" and len(labels) == 3
        page.screenshot(path=str(tmp_path / "serve.png"))


# --------------------------------------------------------------------------- graft compare


def test_compare_on_a_tiny_dataset(tmp_path):
    from graft.cli import main

    data = make_image_folder(tmp_path / "data", per_class=10, seed=6)
    out = tmp_path / "compare"
    code = main(["compare", str(data), "--labels-per-class", "3", "--methods", "linear,scratch",
                 "--image-size", "32", "--out", str(out), "--json"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "compare.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"linear", "scratch"}
    assert rows["linear"]["train_examples"] == rows["scratch"]["train_examples"] == 9  # the same subset
    assert summary["test_examples"] == 6  # 20% of the 30 images, held out once for every run
    assert rows["scratch"]["epochs"] >= 6  # never fewer epochs than fine-tuning's 5
    for name in ("learning_curve.png", "accuracy_vs_time.png", "report.html"):
        assert (out / name).stat().st_size > 1000
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2
    # run again into the same folder with one more size: the finished run is reused, not redone
    lines: list[str] = []
    from graft.compare import CompareConfig, run_compare

    again = run_compare(
        CompareConfig(data=str(data), out=str(out), labels_per_class=(3, 4), methods=("linear",),
                      options={"image_size": 32}),
        log=lines.append,
    )  # fmt: skip
    assert [("done before" in line) for line in lines] == [True, False]
    reused = {r["labels_per_class"]: r for r in again["rows"]}
    assert reused[3] == rows["linear"] and reused[4]["train_examples"] == 12


def test_scratch_is_the_same_recipe_from_random_weights():
    from graft.compare import method_config
    from graft.config import TrainConfig

    scratch = method_config(TrainConfig(data="d", image_size=32), "scratch", finetune_epochs=19)
    assert (scratch.weights, scratch.freeze_epochs) == ("random", 0)
    assert (scratch.lr_mult, scratch.bn) == (1.0, "trainable")
    assert scratch.patience == 19 and scratch.epochs == 30  # at least fine-tuning's epochs, then a plateau
    assert scratch.augment == "light" and scratch.image_size == 32  # the same augmentation and inputs


def test_compare_gives_scratch_the_time_fine_tuning_took(tmp_path, monkeypatch):
    """Without --time-budget, scratch on a subset runs under a budget of the seconds fine-tuning
    took on it (at least SCRATCH_MIN_BUDGET_S), recorded in its row and in its run's config."""
    from graft import compare

    monkeypatch.setattr(compare, "SCRATCH_MIN_BUDGET_S", 2.0)
    data = make_image_folder(tmp_path / "data", per_class=10, seed=6)
    summary = compare.run_compare(
        compare.CompareConfig(data=str(data), out=str(tmp_path / "c"), labels_per_class=(3,),
                              methods=("scratch", "finetune"), options={"image_size": 32}),
        log=lambda line: None,
    )  # fmt: skip
    rows = {r["method"]: r for r in summary["rows"]}
    budget = round(max(2.0, rows["finetune"]["seconds"]), 1)
    assert rows["scratch"]["time_budget"] == budget and rows["finetune"]["time_budget"] is None
    report = json.loads((Path(rows["scratch"]["run_dir"]) / "report.json").read_text())
    assert report["config"]["time_budget"] == budget
