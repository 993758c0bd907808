"""The conformance suite: every registered Modality with every registered Task, through the whole
life of a run: read and split labelled data, encode labels, train (a linear probe: every modality
and task meet the loop, the report and the bundle there), evaluate, predict from the bundle (Python
and the CLI), export to ONNX with parity, and serve. A new modality or task joins the suite by
registering; it passes once it has a data builder below (DATA) and does what the others do."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_image_table

import graft
from graft.cli import main
from graft.modalities import modalities
from graft.tasks import task_names

COLUMNS = {"single": "label", "multi": "labels", "regression": "score"}  # each builder's label columns
MONITORED = {"single": "accuracy", "multi": "map", "regression": "r2"}


def _image_data(root: Path, n: int, seed: int) -> tuple[Path, list[Any]]:
    """conftest's image table: a colour (single), the colour and "warm" for red (multi), the
    brightness (regression: its column is renamed to the builders' `score`)."""
    write_image_table(root, n, seed)
    table = (root / "labels.csv").read_text().replace("brightness", "score", 1)
    (root / "labels.csv").write_text(table)
    return root, [root / "000.png", root / "001.png"]


def _text_data(root: Path, n: int, seed: int) -> tuple[Path, list[Any]]:
    """Reviews: their sentiment (single), sentiment and "long" (multi), a score (regression)."""
    rng = random.Random(seed)
    good, bad = ["wonderful", "great", "superb"], ["awful", "terrible", "dreadful"]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "table.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", *COLUMNS.values()])
        for _ in range(n):
            positive, long = rng.random() < 0.5, rng.random() < 0.5
            text = f"the film was {rng.choice(good if positive else bad)}" + (" and long" if long else "")
            sentiment = "pos" if positive else "neg"
            score = (4.2 if positive else 1.6) + rng.uniform(-0.4, 0.4)
            writer.writerow([text, sentiment, sentiment + ("|long" if long else ""), f"{score:.2f}"])
    return path, ["the film was superb", "the film was awful and long"]


# one builder per modality: (folder, examples, seed) -> (data path, two inputs to predict)
Builder = Callable[[Path, int, int], tuple[Path, list[Any]]]
DATA: dict[str, Builder] = {"image": _image_data, "text": _text_data}
OPTIONS = {"image": ["--image-size", "32"], "text": []}
EXTRAS = {"text": "transformers"}

PAIRS = [(m, t) for m in sorted(modalities()) for t in task_names()]


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{m}-{t}" for m, t in PAIRS])
def run(request, tmp_path_factory) -> dict[str, Any]:
    modality, task = request.param
    if modality in EXTRAS:
        pytest.importorskip(EXTRAS[modality], reason=f"{modality} needs its extra")
    assert modality in DATA, f"the conformance suite needs a data builder for the modality {modality!r}"
    root = tmp_path_factory.mktemp(f"{modality}-{task}")
    train, inputs = DATA[modality](root / "train", 45, 0)
    test, _ = DATA[modality](root / "test", 24, 1)
    out = root / "run"
    argv = ["train", str(train), "--test", str(test), "--label-column", COLUMNS[task], "--task", task]
    argv += ["--strategy", "linear", "--epochs", "20", "--out", str(out), "--json", *OPTIONS[modality]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(root / "cache"))
        assert main(argv) == 0
    return {"modality": modality, "task": task, "out": out, "test": test, "inputs": inputs}


def test_train_reads_splits_encodes_and_reports_through_the_task(run) -> None:
    report = json.loads((run["out"] / "report.json").read_text())
    monitor = MONITORED[run["task"]]
    assert report["modality"] == run["modality"] and report["task"]["name"] == run["task"]
    assert np.isfinite(report["test"][monitor]) and f"val_{monitor}" in report["history"][-1]
    assert report["test"]["n"] == 24 and (run["out"] / "report.html").is_file()
    meta = json.loads((run["out"] / "graft.json").read_text())
    assert meta.get("task", {"name": "single"})["name"] == run["task"]


def test_eval_gives_the_reports_test_numbers(run, capsys) -> None:
    report = json.loads((run["out"] / "report.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run["out"]), str(run["test"]), "--json", "--precision", "fp32"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    key = MONITORED[run["task"]]
    assert evaluated[key] == pytest.approx(report["test"][key], abs=0.05)


def test_the_bundle_predicts_in_python_and_on_the_command_line_alike(run, capsys) -> None:
    model = graft.load(run["out"], device="cpu", precision="fp32")
    outputs = model.outputs(run["inputs"])
    assert outputs.shape == (2, len(model.classes_)) and np.isfinite(outputs).all()
    capsys.readouterr()
    given = [str(i) for i in run["inputs"]]
    assert main(["predict", str(run["out"]), *given, "--json", "--precision", "fp32"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    assert [str(r["input"]) for r in rows] == given and not any("error" in r for r in rows)
    expected = _predictions(model, outputs)
    assert rows == [{"input": r["input"], **p} for r, p in zip(rows, expected, strict=True)]


def _predictions(model: Any, outputs: np.ndarray) -> list[dict[str, Any]]:
    """What `graft predict --json` prints for each input, from the model's outputs."""
    if model.task.name == "single":
        top = [(model.classes_[j], float(o[j])) for j, o in zip(outputs.argmax(1), outputs, strict=True)]
        return [{"predictions": [{"label": label, "probability": p}]} for label, p in _approx(top)]
    return [_approx(p) for p in model.task.predictions(outputs, model.classes_)]


def _approx(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_approx(v) for v in value)
    return pytest.approx(value, abs=1e-4) if isinstance(value, float) else value


def test_onnx_export_keeps_parity_and_predicts_as_the_bundle(run, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from graft.export import export

    result = export(run["out"], "onnx", tmp_path / "model.onnx")
    assert result["max_abs_diff"] < result["tolerance"]
    exported = graft.load(tmp_path / "model.onnx")
    model = graft.load(run["out"], device="cpu", precision="fp32")
    np.testing.assert_allclose(exported.outputs(run["inputs"]), model.outputs(run["inputs"]), atol=1e-3)


def test_serve_answers_as_the_bundle_predicts(run) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from graft.serve import create_app

    model = graft.load(run["out"], device="cpu", precision="fp32")
    client = TestClient(create_app(run["out"], precision="fp32"))
    first = run["inputs"][0]
    if model.modality.request_field == "file":
        with open(first, "rb") as f:
            answer = client.post("/predict", files={"file": (Path(first).name, f, "image/png")})
    else:
        answer = client.post("/predict", json={"texts": [first]})
    assert answer.status_code == 200, answer.text
    (row,) = answer.json()["predictions"]
    expected = model.outputs([first])[0]
    if model.task.name == "regression":
        assert list(row["values"].values()) == pytest.approx(expected.tolist(), abs=1e-3)
    else:
        assert row["top"][0]["label"] == model.classes_[int(expected.argmax())]
    assert client.get("/").status_code == 200
