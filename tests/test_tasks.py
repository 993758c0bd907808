"""Tasks beyond one label per example: multi-label and regression, on texts (tables), on images
(a folder with labels.csv) and in memory (graft.Classifier / graft.Regressor), end to end through
train, the report, predict, eval and the bundle; their numbers checked against scikit-learn."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_image, write_image_table
from sklearn.metrics import average_precision_score, r2_score

import graft
from graft.cli import main
from graft.errors import ConfigError, DataError
from graft.tasks import auto_task, get_task
from graft.tasks.multi import average_precision, best_threshold

# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("raw", "task"),
    [
        (["pos", "neg"], "single"),
        (["1", "2", "3"], "single"),  # integers stay classes unless --task regression
        (["1.5", "2", "3.25"], "regression"),
        (["a|b", "b", "c"], "multi"),
        ([("0", "1"), ("1", "1")], "multi"),
        ([("0.5", "1"), ("2", "3")], "regression"),
    ],
)
def test_auto_reads_the_task_from_the_labels(raw, task):
    assert auto_task(raw, "|") == task


def test_several_label_columns_of_words_are_a_one_line_error():
    with pytest.raises(ConfigError, match="0/1 .* or numbers"):
        auto_task([("a", "b")], "|")


def test_average_precision_and_thresholds_match_their_definitions():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.random(40) < 0.3
        scores = np.round(rng.random(40), 1)  # ties, as real outputs have
        if truth.any():
            assert average_precision(scores, truth) == pytest.approx(average_precision_score(truth, scores))
    scores = np.array([0.1, 0.2, 0.6, 0.7, 0.9])
    threshold = best_threshold(scores, np.array([False, False, True, True, True]))
    assert 0.2 < threshold < 0.6  # midway: no validation example sits on it


def test_regression_fits_scales_and_reports_what_scikit_learn_reports():
    task = get_task("regression", ["price"]).fit(np.array([[10.0], [20.0], [30.0]]), {})
    assert task.state == {"mean": [20.0], "std": [pytest.approx(8.164966)]}
    logits = torch.tensor([[-1.0], [0.2], [1.1], [0.0]])
    true = torch.tensor([[12.0], [21.0], [29.0], [20.5]])
    metrics = task.metrics(logits, true)
    predicted = task.activate(logits).numpy()[:, 0]
    assert metrics["r2"] == pytest.approx(r2_score(true.numpy()[:, 0], predicted), rel=1e-5)
    first = task.predictions(task.activate(logits).numpy()[:1], ["price"])
    assert first == [{"value": pytest.approx(20.0 - 8.164966, rel=1e-4)}]


def test_multi_label_encodes_checks_and_weighs_rare_labels_more():
    task = get_task("multi").from_raw(["a|b", "b", "c | a"], ["labels"], "|")
    assert task.names == ("a", "b", "c")
    labels, refused = task.encode_all(["a|b", "c", "d"])
    assert labels.tolist() == [[1, 1, 0], [0, 0, 1]]
    assert refused == [(2, "label 'd' is not among the training labels")]
    fitted = task.fit(np.array([[1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 0, 1], [0, 0, 0]]), {})
    weights = fitted.state["pos_weight"]
    assert weights[1] > weights[2] > weights[0] == 1.0
    with pytest.raises(DataError, match="no training rows carries the label"):
        task.check(np.array([[1, 0, 0], [1, 1, 0]]), "rows")


# --------------------------------------------------------------------------- texts, end to end

FRUITS = ["apple", "banana", "cherry", "mango"]
COLOURS = ["red", "green", "yellow", "purple"]
OTHER = ["chair", "table", "window", "road"]


def _multi_label_texts(path: Path, n: int, seed: int) -> Path:
    """A text mentions a fruit, a colour, both or neither: its labels say which."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "labels"])
        for _ in range(n):
            fruit, colour = rng.random() < 0.5, rng.random() < 0.5
            words = [rng.choice(OTHER)]
            words += [rng.choice(FRUITS)] if fruit else []
            words += [rng.choice(COLOURS)] if colour else []
            rng.shuffle(words)
            labels = "|".join(name for name, on in (("fruit", fruit), ("colour", colour)) if on) or "none"
            writer.writerow([f"I saw a {' and a '.join(words)} today", labels])
    return path


def _scored_texts(path: Path, n: int, seed: int) -> Path:
    """Reviews whose score (1-5, with a fraction) follows their words."""
    rng = random.Random(seed)
    good, bad = ["wonderful", "great", "superb"], ["awful", "terrible", "dreadful"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "score"])
        for _ in range(n):
            positive = rng.random() < 0.5
            word = rng.choice(good if positive else bad)
            score = (4.2 if positive else 1.6) + rng.uniform(-0.4, 0.4)
            writer.writerow([f"the film was {word}", f"{score:.2f}"])
    return path


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    pytest.importorskip("transformers", reason="text needs the `text` extra")
    root = tmp_path_factory.mktemp("tasks-text")
    runs = {}
    kinds = (("multi", _multi_label_texts, "labels"), ("regression", _scored_texts, "score"))
    for name, make, column in kinds:
        train, test = make(root / f"{name}-train.csv", 120, 0), make(root / f"{name}-test.csv", 40, 1)
        out = root / f"{name}-run"
        argv = ["train", str(train), "--test", str(test), "--label-column", column, "--strategy", "linear"]
        code = main([*argv, "--epochs", "60", "--out", str(out), "--json"])
        assert code == 0
        runs[name] = (out, test)
    return runs


def test_text_multi_label_trains_reports_predicts_and_evaluates(text_runs, capsys):
    out, test = text_runs["multi"]
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["name"] == "multi" and report["classes"] == ["colour", "fruit", "none"]
    assert report["test"]["map"] > 0.9 and report["test"]["subset_accuracy"] > 0.7
    assert len(report["task"]["state"]["thresholds"]) == 3
    assert "val_map" in report["history"][-1] and "confusion_matrix" not in report["test"]
    assert "Per label" in (out / "report.html").read_text()
    model = graft.load(out, precision="fp32")
    assert model.predict(["I saw a banana and a purple chair"]) == [("colour", "fruit")]
    capsys.readouterr()
    assert main(["predict", str(out), "I saw a road", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["predictions"][0]
    assert row["labels"] == ["none"] and set(row["probabilities"]) == {"colour", "fruit", "none"}
    assert main(["eval", str(out), str(test), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["task"] == "multi" and evaluated["map"] == pytest.approx(report["test"]["map"], abs=0.02)


def test_multi_label_predict_rows_list_the_labels_over_threshold_most_probable_first_at_most_k():
    task = get_task("multi", ("a", "b", "c"), {"thresholds": [0.5, 0.5, 0.9]})
    outputs = np.array([[0.6, 0.8, 0.85], [0.1, 0.2, 0.3]], dtype=np.float32)
    shown = ("A", "B", "C")
    every = task.predict_rows(outputs, shown, None)
    assert [row["labels"] for row in every] == [["B", "A"], []]  # C's 0.85 is under its 0.9
    assert every[0]["probabilities"] == pytest.approx({"A": 0.6, "B": 0.8, "C": 0.85})
    assert [row["labels"] for row in task.predict_rows(outputs, shown, 1)] == [["B"], []]
    assert [row["labels"] for row in task.predict_rows(outputs, shown, 5)] == [["B", "A"], []]


def test_each_task_prints_its_own_eval_table():
    multi = get_task("multi", ("a", "b"), {"thresholds": [0.4, 0.6]})
    logits = torch.tensor([[2.0, -2.0], [1.0, 1.0], [-2.0, 2.0], [-1.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    lines = multi.eval_lines(multi.metrics(logits, labels))
    assert lines[0].split() == ["label", "AP", "precision", "recall", "F1", "support", "threshold"]
    assert [line.split() for line in lines[1:]] == [
        ["a", "1.000", "1.000", "1.000", "1.000", "2", "0.400"],
        ["b", "1.000", "1.000", "1.000", "1.000", "2", "0.600"],
    ]
    single = get_task("single", ("cat", "dog"))
    metrics = single.metrics(torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), torch.tensor([0, 1, 1]))
    lines = single.eval_lines(metrics)
    assert lines[0].split() == ["class", "precision", "recall", "F1", "support"]
    assert lines[1].split() == ["cat", "0.500", "1.000", "0.667", "1"]
    assert "  dog taken for cat: 1" in lines
    regression = get_task("regression", ("x", "y"), {"mean": [0.0, 0.0], "std": [1.0, 1.0]})
    values = torch.tensor([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
    lines = regression.eval_lines(regression.metrics(values, values))
    assert lines[0].split() == ["target", "R2", "RMSE", "MAE", "Spearman"]
    assert lines[1].split() == ["x", "1.000", "0.000", "0.000", "1.000"]
    one = get_task("regression", ("x",), {"mean": [0.0], "std": [1.0]})
    assert one.eval_lines(one.metrics(values[:, :1], values[:, :1])) == []  # the headline says it all


def test_multi_label_cli_eval_prints_the_per_label_table_and_predict_takes_top_k(text_runs, capsys):
    out, test = text_runs["multi"]
    capsys.readouterr()
    assert main(["eval", str(out), str(test), "--json"]) == 0
    per_label = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["per_label"]
    assert main(["eval", str(out), str(test)]) == 0
    printed = capsys.readouterr().out.splitlines()
    start = printed.index(next(line for line in printed if line.split()[:2] == ["label", "AP"]))
    table = {line.split()[0]: line.split()[1:] for line in printed[start + 1 : start + 4]}
    assert set(table) == set(per_label) == {"colour", "fruit", "none"}
    for name, cells in table.items():
        assert float(cells[0]) == pytest.approx(per_label[name]["average_precision"], abs=5e-4)
        assert int(cells[4]) == per_label[name]["support"]
    both = "I saw a banana and a purple chair"
    assert main(["predict", str(out), both, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    assert sorted(row["labels"]) == ["colour", "fruit"]
    probability = row["probabilities"]
    assert probability[row["labels"][0]] >= probability[row["labels"][1]]  # most probable first
    assert main(["predict", str(out), both, "--top-k", "1", "--json"]) == 0
    (top,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    assert top["labels"] == row["labels"][:1] and top["probabilities"] == row["probabilities"]
    assert main(["predict", str(out), both, "--top-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{both}\t{row['labels'][0]}"


def test_text_regression_trains_reports_predicts_and_evaluates(text_runs, capsys):
    out, test = text_runs["regression"]
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["name"] == "regression" and report["classes"] == ["score"]
    assert report["test"]["r2"] > 0.7 and report["test"]["spearman"] > 0.7
    assert (out / "predicted.png").is_file() and not (out / "confusion.png").exists()
    values = graft.load(out, precision="fp32").predict(["the film was superb", "the film was awful"])
    assert values[0] > 3.2 and values[1] < 2.6  # in the data's units
    capsys.readouterr()
    assert main(["eval", str(out), str(test)]) == 0
    assert "R2" in capsys.readouterr().out


def test_a_regression_column_with_a_word_skips_that_row_naming_it(tmp_path):
    pytest.importorskip("transformers", reason="text needs the `text` extra")
    train = _scored_texts(tmp_path / "train.csv", 60, 0)
    with open(train, "a", newline="") as f:
        csv.writer(f).writerow(["the film was fine", "n/a"])
    from graft.data.text import load_text_data

    splits = load_text_data(str(train), None, None, ["text"], "score", 0.2, 0, "regression")
    assert any("'n/a' is not a number" in s.reason for s in splits.skipped)
    assert splits.train.labels.dtype == np.float32 and splits.train.labels.shape[1] == 1


# --------------------------------------------------------------------------- images and the Python API


def test_images_with_a_labels_table_regress_and_a_missing_file_is_skipped(tmp_path):
    data = write_image_table(tmp_path / "photos", 45, 0)
    with open(data / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerow(["gone.png", "red", "red|warm", "0.5"])
    out = tmp_path / "run"
    argv = ["train", str(data), "--label-column", "brightness", "--task", "regression"]
    argv += ["--strategy", "linear", "--image-size", "32", "--epochs", "40", "--out", str(out), "--json"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["name"] == "regression" and report["validation"]["r2"] > 0.5
    skipped = report["skipped_files"]
    assert any(s["path"].endswith("gone.png") and s["reason"] == "no such file" for s in skipped)
    values = graft.load(out).predict([data / "000.png", data / "001.png"])
    assert values.shape == (2,) and np.isfinite(values).all()


def test_the_python_api_fits_label_lists_and_numbers_as_scikit_learn_expects(tmp_path):
    rng = np.random.default_rng(0)
    colours = ["red", "green", "blue"] * 15
    images = [synthetic_image(c, rng) for c in colours]
    lists = [[c] + (["warm"] if c == "red" else []) for c in colours]
    options = {"strategy": "linear", "image_size": 32, "epochs": 30}
    clf = graft.Classifier(out=str(tmp_path / "multi"), **options).fit(images, lists, log=lambda line: None)
    assert list(clf.classes_) == ["blue", "green", "red", "warm"] and clf.task_.name == "multi"
    predicted = clf.predict(images[:3])
    assert predicted.shape == (3, 4) and set(np.unique(predicted)) <= {0, 1}
    assert clf.score(images, lists) > 0.8  # subset accuracy
    brightness = np.array([img.mean() / 255 for img in images])
    reg = graft.Regressor(out=str(tmp_path / "reg"), **options).fit(images, brightness, log=lambda line: None)
    assert reg.predict(images[:4]).shape == (4,)
    assert reg.score(images, brightness) > 0.5  # R2
    assert reg.get_params()["strategy"] == "linear"


def test_python_reads_multi_labels_as_the_command_line_does(tmp_path, capsys):
    """`a|b` labels: the CLI's rules from a DataFrame (task multi or auto), from label strings
    and from label lists: the same labels, the same split, the same probabilities."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("transformers", reason="text needs the `text` extra")
    table = _multi_label_texts(tmp_path / "train.csv", 40, 0)
    options = ["--strategy", "linear", "--epochs", "3", "--seed", "1"]
    argv = ["train", str(table), "--label-column", "labels", "--task", "multi", *options]
    assert main([*argv, "--out", str(tmp_path / "cli"), "--json"]) == 0
    cli = graft.load(tmp_path / "cli", device="cpu")
    frame = pd.read_csv(table)
    texts, strings = list(frame["text"]), list(frame["labels"])
    given = {
        "DataFrame, task multi": ({"task": "multi", "label_column": "labels"}, frame, None),
        "DataFrame, task auto": ({"label_column": "labels"}, frame, None),
        "label strings": ({}, texts, strings),
        "label lists": ({}, texts, [s.split("|") for s in strings]),
    }
    probe = ["I saw a banana and a purple chair", "I saw a road today"]
    for name, (chosen, X, y) in given.items():
        settings = {"strategy": "linear", "epochs": 3, "seed": 1, "out": str(tmp_path / name), **chosen}
        clf = graft.Classifier(**settings).fit(X, y, log=lambda line: None)
        assert clf.task_.name == "multi" and list(clf.classes_) == list(cli.classes_), name
        assert clf.classes_.tolist() == ["colour", "fruit", "none"], name
        expected = cli.predict_proba(probe)
        np.testing.assert_allclose(clf.predict_proba(probe), expected, atol=1e-3, err_msg=name)
        assert clf.score(texts, strings) == clf.score(texts, [s.split("|") for s in strings]) > 0.5


def test_errors_raised_from_python_name_parameters_and_classes(tmp_path, capsys):
    texts = [f"text {i}" for i in range(7)]
    labels = ["cat", "cat", "dog", "dog", "cat", "dog", "bird"]
    with pytest.raises(DataError) as caught:
        graft.Classifier(out=str(tmp_path / "py")).fit(texts, labels)
    assert str(caught.value) == (
        "fit(X, y): class 'bird' has a single example, too few to split off validation data: add "
        "examples, remove the class, or pass a validation set (val=)"
    )
    with pytest.raises(ConfigError, match=r"^epochs= must be at least 1, got 0$"):
        graft.Classifier(epochs=0).fit(texts, labels)
    with pytest.raises(ConfigError, match=r"task='regression' predicts numbers: use graft.Regressor"):
        graft.Classifier(task="regression").fit(texts, labels)
    table = tmp_path / "t.csv"
    table.write_text("text,label\n" + "".join(f"{t},{v}\n" for t, v in zip(texts, labels, strict=True)))
    assert main(["train", str(table), "--epochs", "0"]) == 2  # the command line keeps its flags
    assert capsys.readouterr().err.strip() == "graft: error: --epochs must be at least 1, got 0"
    assert main(["train", str(table), "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("class 'bird' has a single example, too few to split off validation data: add "
                        "examples, remove the class, or pass a validation set (--val)")


# --------------------------------------------------------------------------- every task


RAW = {
    "single": (["cat", "dog", "cat", "dog", "cat", "dog"], ["label"]),
    "multi": (["a|b", "b", "a", "b|a", "a", "b"], ["labels"]),
    "regression": (["1.5", "2.5", "0.5", "3.0", "2.0", "1.0"], ["score"]),
}


@pytest.mark.parametrize("name", sorted(RAW))
def test_every_task_keeps_the_contract_the_loop_report_and_bundle_rely_on(name):
    """From raw labels to a saved task and back: encode, fit, a loss that trains, the monitored
    metric in the validation row and the metrics, predictions, and the bundle's round trip."""
    from graft.tasks import task_from_meta

    raw, columns = RAW[name]
    task = get_task(name).from_raw(raw, columns, "|")
    labels, refused = task.encode_all(raw)
    assert refused == [] and len(labels) == len(raw)
    task.check(labels, "rows")
    fitted = task.fit(labels, {})
    torch.manual_seed(0)
    head = torch.nn.Linear(4, fitted.outputs())
    x, y = torch.randn(len(raw), 4), fitted.label_tensor(labels)
    loss_fn = fitted.loss(torch.device("cpu"))
    first = loss_fn(head, x, y).item()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        loss_fn(head, x, y).backward()
        optimizer.step()
    assert loss_fn(head, x, y).item() < first  # the loss trains
    logits = head(x).detach()
    tuned = fitted.tune(logits, y)
    row, metrics = tuned.validation_row(logits, y), tuned.metrics(logits, y)
    assert {"val_loss", f"val_{tuned.monitor}"} <= set(row) and tuned.monitor in metrics
    assert metrics["n"] == len(raw) and set(tuned.headline(metrics)) >= {tuned.monitor, "n"}
    rows = tuned.predictions(tuned.activate(logits).numpy(), list(tuned.names))
    assert len(rows) == len(raw) and all(isinstance(r, dict) for r in rows)
    json.dumps([row, tuned.headline(metrics), rows, tuned.to_dict()])  # JSON all the way
    saved = {"classes": list(tuned.names), "task": tuned.to_dict()}
    loaded = task_from_meta(saved)
    assert type(loaded) is type(tuned) and loaded.state == tuned.state
    assert torch.equal(loaded.activate(logits), tuned.activate(logits))


@pytest.mark.parametrize("name", ["multi", "regression"])
def test_the_serve_page_shows_the_labels_or_the_number_in_chromium(text_runs, name):
    """A person types a text on `graft serve`'s page and sees the labels that apply (multi-label)
    or the predicted number (regression)."""
    from conftest import unavailable
    from test_serve_and_report import BROWSER_ARGS, CHROMIUM, serving

    from graft.serve import create_app

    try:
        import playwright.sync_api as playwright
    except ImportError:
        unavailable("playwright is not installed (extra test)")
    if CHROMIUM is None:
        unavailable("headless Chromium is not installed (Debian package chromium)")
    out, _ = text_runs[name]
    text = "I saw a banana and a purple chair" if name == "multi" else "the film was superb"
    expected = graft.load(out, precision="fp32").predict([text])[0]
    with serving(create_app(out, precision="fp32")) as port, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#text", text)
        page.click("#go")
        page.wait_for_selector(".prediction", timeout=20_000)
        shown = page.eval_on_selector_all(".prediction", "els => els.map(e => e.textContent)")
        browser.close()
    if name == "multi":
        assert shown[0] == ", ".join(expected)  # the labels that apply, then the probability bars
    else:
        assert float(shown[0]) == pytest.approx(float(expected), rel=1e-3)


def test_a_task_the_data_cannot_hold_is_a_one_line_error(tmp_path, capsys):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "classes", per_class=4, seed=0)
    assert main(["train", str(folder), "--task", "regression", "--out", str(tmp_path / "r1")]) != 0
    assert "has no labels.csv" in capsys.readouterr().err
    table = tmp_path / "words.csv"
    table.write_text("text,label\n" + "".join(f"text {i},pos\n" for i in range(6)))
    assert main(["train", str(table), "--task", "regression", "--out", str(tmp_path / "r2")]) != 0
    err = capsys.readouterr().err
    assert "no training row has a label regression can take (target 'pos' is not a number)" in err


def test_auto_keeps_the_thresholds_its_probe_tuned(tmp_path, capsys):
    """`auto` runs the probe on a copy of the run's plan: the thresholds it tunes on validation are
    the ones the test metrics, the bundle and `graft eval` use (they were lost once: test micro-F1
    0.33 against the probe's 0.72 on TREC-6's labels)."""
    pytest.importorskip("transformers", reason="text needs the `text` extra")
    train = _multi_label_texts(tmp_path / "train.csv", 120, 0)
    test = _multi_label_texts(tmp_path / "test.csv", 40, 1)
    out = tmp_path / "auto"
    argv = ["train", str(train), "--test", str(test), "--label-column", "labels", "--time-budget", "20"]
    assert main([*argv, "--out", str(out), "--json"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["task"]["state"]["thresholds"]) == 3
    capsys.readouterr()
    assert main(["eval", str(out), str(test), "--json", "--precision", "fp32"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["micro_f1"] == pytest.approx(report["test"]["micro_f1"], abs=0.03)
