"""Paths no other test file walked end to end: `--strategy auto`'s choice as report.json records it,
feature-cache invalidation, bad rows of every text format reaching report.json, `graft backbones`,
`graft predict` / `graft eval` on unreadable images, and `--augment strong`, `--head mlp`,
`--flip-features` through whole runs. Tiny synthetic data; each test costs seconds at most."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_image_folder
from PIL import Image
from safetensors.torch import load_file

import graft
from graft.backbones import create_backbone
from graft.cli import main
from graft.config import TrainConfig
from graft.data.text import load_text_data
from graft.errors import DataError
from graft.modalities import get_modality
from graft.modalities import image as image_modality
from graft.runner import run
from graft.training import auto
from graft.training.features import cache_key, cached_features


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


# --------------------------------------------------------------------------- --strategy auto


def _noise_folder(root: Path, per_class: int, seed: int) -> Path:
    """Images of pure noise in the three class folders: labels a probe cannot learn, so it leaves
    fine-tuning all the headroom there is."""
    rng = np.random.default_rng(seed)
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def noise(tmp_path_factory) -> Path:
    """30 noise images per class: with --val-fraction 0.3, 21 per class train (auto's minimum is 20)."""
    return _noise_folder(tmp_path_factory.mktemp("noise") / "data", per_class=30, seed=0)


def _auto(noise: Path, out: Path, epoch_seconds: float, monkeypatch, **kw) -> tuple[dict, list[int]]:
    """`--strategy auto` with only the time estimate stubbed (to `epoch_seconds` per epoch): the
    probe, the headroom rule and the budget rule run as they are. Returns the report and the
    batch sizes the estimate was asked for."""
    asked: list[int] = []

    def estimate(job, batch_size):
        asked.append(batch_size)
        return epoch_seconds

    monkeypatch.setattr(auto, "estimate_epoch_seconds", estimate)
    monkeypatch.setattr(image_modality, "default_workers", lambda: 0)  # augmentation in this process
    config = TrainConfig(
        data=str(noise), image_size=32, val_fraction=0.3, epochs=1, out=str(out), **kw
    )  # fmt: skip
    return run(config, log=_quiet).report, asked


@pytest.fixture(scope="module")
def auto_finetune(noise, tmp_path_factory) -> tuple[dict, list[int]]:
    """auto with a stubbed 1 s fine-tuning epoch."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(noise.parent / "cache"))
        return _auto(noise, tmp_path_factory.mktemp("auto") / "finetune", 1.0, mp)


def test_auto_fine_tunes_when_the_probe_leaves_room_and_the_epochs_fit(auto_finetune):
    """report.json's strategy_choice says finetune and why; the run really fine-tuned (after its
    probe, everything trained) and the estimate was asked once, with fine-tuning's batch size."""
    report, asked = auto_finetune
    choice = report["strategy_choice"]
    assert report["strategy"] == choice["chosen"] == report["plan"]["strategy"] == "finetune"
    assert "fit the 900s budget" in choice["reason"] and "leaves room" in choice["reason"]
    assert report["config"]["strategy"] == "auto"
    assert asked == [64]
    probe, tuned = report["history"]
    assert probe["stage"] == ["head"] and len(tuned["stage"]) == len(report["backbone"]["groups"]) + 1


def test_auto_keeps_the_probe_when_fine_tuning_would_not_fit_the_budget(
    noise, auto_finetune, tmp_path, monkeypatch
):
    """The same data with a stubbed 10,000 s epoch and --time-budget 1h: linear, the reason names
    the budget, and the linear result is the probe that already ran (no fine-tuning epoch; its
    features came from the cache auto_finetune filled)."""
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(noise.parent / "cache"))
    report, asked = _auto(noise, tmp_path / "run", 10_000.0, monkeypatch, time_budget=3600)
    choice = report["strategy_choice"]
    assert report["strategy"] == choice["chosen"] == "linear"
    assert "left of the time budget" in choice["reason"] and "leaves room" in choice["reason"]
    assert asked == [64]
    assert all(row["stage"] == ["head"] for row in report["history"])
    assert report["timing"]["feature_cache_hit"]  # the probe's features: auto_finetune cached them


# --------------------------------------------------------------------------- feature cache


def test_feature_cache_is_invalidated_by_what_changes_the_features(lite0, tmp_path, monkeypatch):
    """The cache is hit for the same inputs and settings, and recomputed after a changed file, another
    --image-size, --flip-features, or a damaged cache entry (which is rewritten, not trusted)."""
    modality = get_modality("image")
    data = make_image_folder(tmp_path / "data", per_class=2, seed=0)
    sources = sorted(str(p) for p in data.glob("*/*"))
    encoded: list[int] = []
    real_encode = modality.encode

    def encode(*args, **kwargs):
        encoded.append(1)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(modality, "encode", encode)
    prep = lite0.preprocessing.with_size(32)

    def features(prep=prep, flip=False):
        return cached_features(modality, lite0, sources, prep, flip=flip, directory=tmp_path / "cache")

    first = features()
    again = features()
    assert (first.cached, again.cached, len(encoded)) == (False, True, 1)
    np.testing.assert_array_equal(first.values, again.values)

    bigger = features(lite0.preprocessing.with_size(48))  # --image-size 48
    assert not bigger.cached and len(encoded) == 2
    assert not np.allclose(bigger.values, first.values)

    flipped = features(flip=True)  # --flip-features
    assert not flipped.cached and len(encoded) == 3
    assert not np.allclose(flipped.values, first.values)
    assert features(flip=True).cached and len(encoded) == 3

    changed = sources[0]  # another picture under the same name, with a new modification time
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(changed)
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    after = features()
    assert not after.cached and len(encoded) == 4
    assert not np.allclose(after.values[0], first.values[0])
    np.testing.assert_allclose(after.values[1:], first.values[1:], rtol=1e-5, atol=1e-5)

    entry = (
        tmp_path / "cache" / "features" / f"{cache_key(modality, lite0, prep, sources, False)}.safetensors"
    )
    assert entry.is_file()
    entry.write_bytes(entry.read_bytes()[:100])  # truncated: a crash mid-write, a full disk
    repaired = features()
    assert not repaired.cached and len(encoded) == 5
    np.testing.assert_allclose(repaired.values, after.values, rtol=1e-5, atol=1e-5)
    assert features().cached and len(encoded) == 5  # the entry was rewritten whole


# --------------------------------------------------------------------------- text formats

TSV = (
    b"text\tlabel\n"
    + b"".join(f"a good {w} film\tpos\nan awful {w} film\tneg\n".encode() for w in "abcdef")
    + b"bad \xff bytes\tpos\n"  # line 14
    + b"\tneg\n"  # line 15: empty text
    + b"no label here\t\n"  # line 16
    + b"one\ttoo\tmany\n"  # line 17
)
JSONL = (
    b'{"text": "a good dev film", "label": "pos"}\n'
    b'{"text": "an awful dev film", "label": "neg"}\n'
    b"{broken\n"  # line 3
    b'["not", "an", "object"]\n'  # line 4
    b'{"text": "no label"}\n'  # line 5
    b'{"text": "a film", "label": "meh"}\n'  # line 6: not a training label
)
NDJSON = (
    b'{"text": "a good test film", "label": "pos"}\n'
    b'{"text": "", "label": "neg"}\n'  # line 2: empty text
    b'{"text": "an awful test film", "label": "neg"}\n'
    b"\xfe\xfe\n"  # line 4: not UTF-8
)


def test_bad_rows_of_tsv_jsonl_and_ndjson_reach_report_json(tmp_path):
    """A task folder with train.tsv, dev.jsonl and test.ndjson: every bad row of each file is
    skipped and listed in report.json by file and line, and the good rows are all used."""
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "train.tsv").write_bytes(TSV)
    (folder / "dev.jsonl").write_bytes(JSONL)
    (folder / "test.ndjson").write_bytes(NDJSON)
    config = TrainConfig(data=str(folder), strategy="linear", epochs=2, out=str(tmp_path / "run"))
    report = run(config, log=_quiet).report
    skipped = {(Path(s["path"]).name, s["reason"]) for s in report["skipped_files"]}
    assert skipped == {
        ("train.tsv", "line 14: not valid UTF-8"),
        ("train.tsv", "line 15: empty text"),
        ("train.tsv", "line 16: missing label in column 'label'"),
        ("train.tsv", "line 17: 3 fields where the header has 2"),
        ("dev.jsonl", "line 3: not valid JSON (Expecting property name enclosed in double quotes)"),
        ("dev.jsonl", "line 4: not a JSON object"),
        ("dev.jsonl", "line 5: missing label in column 'label'"),
        ("a film", "label 'meh' is not among the training labels"),
        ("test.ndjson", "line 2: empty text"),
        ("test.ndjson", "line 4: not valid UTF-8"),
    }
    assert (report["data"]["train"], report["data"]["val"], report["data"]["test"]) == (12, 2, 2)
    assert report["data"]["val_source"].endswith("dev.jsonl")


def test_bad_files_of_a_txt_folder_reach_report_json(tmp_path):
    """<class>/*.txt: a file that is not UTF-8 and an empty one are skipped and listed by path."""
    for label, words in (("ham", "abcdef"), ("spam", "ghijkl")):
        (tmp_path / "data" / label).mkdir(parents=True)
        for w in words:
            (tmp_path / "data" / label / f"{w}.txt").write_text(f"a {label} message about {w}")
    (tmp_path / "data" / "ham" / "latin1.txt").write_bytes(b"caf\xe9 cr\xe8me")
    (tmp_path / "data" / "spam" / "empty.txt").write_bytes(b"  \n")
    config = TrainConfig(
        data=str(tmp_path / "data"), strategy="linear", epochs=2, val_fraction=0.25, out=str(tmp_path / "run")
    )
    report = run(config, log=_quiet).report
    skipped = {(Path(s["path"]).name, s["reason"]) for s in report["skipped_files"]}
    assert skipped == {("latin1.txt", "not valid UTF-8"), ("empty.txt", "empty text")}
    assert report["data"]["train"] + report["data"]["val"] == 12


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("empty.csv", b"", r"empty\.csv is empty: it needs a header row"),
        ("empty.tsv", b"", r"empty\.tsv is empty: it needs a header row"),
        ("empty.jsonl", b"", r"empty\.jsonl: training needs at least 2 labels, found 0 \(no usable rows"),
        ("header.csv", b"text,label\n", r"header\.csv: training needs at least 2 labels, found 0"),
        ("latin1.csv", b"t\xe9xt,label\nx,a\n", r"latin1\.csv: the header row is not valid UTF-8"),
        (
            "commas.tsv",
            b"text,label\nx,a\n",
            r"commas\.tsv: no column 'text', 'label'; the columns are 'text,label'",
        ),
    ],
)
def test_an_empty_file_or_a_bad_header_is_a_one_line_error(tmp_path, name, body, message):
    """An empty table, a header with no rows, a header that is not UTF-8 or uses the wrong
    delimiter: one DataError line naming the file, no partial data."""
    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(DataError, match=message) as info:
        load_text_data(str(path), None, None, ["text"], "label", 0.1, 0)
    assert "\n" not in str(info.value)


def test_cli_on_an_empty_table_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "empty.csv").write_bytes(b"")
    assert main(["train", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("graft: error: ") and "empty.csv is empty" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- backbones, predict, eval


def test_cli_backbones_lists_the_registry(capsys):
    """`graft backbones --json` lists the registry (both kinds, the packaged ones offline); the
    table names every backbone and marks exactly the offline ones."""
    assert main(["backbones", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["backbones"]
    by_name = {r["name"]: r for r in rows}
    assert len(by_name) == len(rows) and {"efficientnet_lite0", "minilm", "resnet18"} <= set(by_name)
    assert all({"name", "source", "parameters", "input_size", "offline"} <= set(r) for r in rows)
    assert by_name["efficientnet_lite0"]["offline"] is True and by_name["minilm"]["source"] == "packaged"
    assert main(["backbones"]) == 0
    table = capsys.readouterr().out.splitlines()
    for row in rows:
        (line,) = [t for t in table if t.split() and t.split()[0] == row["name"]]
        assert line.rstrip().endswith("yes") == row["offline"]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """A linear-strategy run with an MLP head (`--head mlp:16 --dropout 0.5`) on tiny images."""
    root = tmp_path_factory.mktemp("mlp")
    data = make_image_folder(root / "data", per_class=8, seed=0)
    holdout = make_image_folder(root / "holdout", per_class=2, seed=1)
    config = TrainConfig(
        data=str(data), strategy="linear", head="mlp:16", dropout=0.5, image_size=32, epochs=10,
        out=str(root / "run"),
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(root / "cache"))
        return run(config, log=_quiet), holdout


@pytest.mark.precision
def test_head_mlp_end_to_end(mlp_run):
    """--head mlp:16 --dropout 0.5: the bundle holds a 1280 -> 16 -> 3 head, reloads with the same
    probabilities as the in-memory model (dropout off), and the head learnt the easy classes."""
    result, holdout = mlp_run
    assert result.report["head"] == "mlp:16"
    saved = load_file(str(result.run_dir / "model.safetensors"))
    shapes = {k: tuple(v.shape) for k, v in saved.items() if k.startswith("head.") and k.endswith("weight")}
    assert shapes == {"head.hidden.0.weight": (16, 1280), "head.fc.weight": (3, 16)}
    paths = sorted(holdout.glob("*/*"))
    loaded = graft.load(result.run_dir, device="cpu", precision="fp32")
    with torch.inference_mode():
        expected = result.model.eval()(torch.from_numpy(loaded.preprocess(paths))).softmax(1).numpy()
    np.testing.assert_allclose(loaded.predict_proba(paths), expected, atol=1e-5, rtol=0)
    assert result.report["validation"]["accuracy"] >= 2 / 3


def test_cli_predict_with_an_unreadable_image_predicts_the_others_and_exits_3(mlp_run, tmp_path, capsys):
    """`graft predict` with a broken and a missing image beside a good one: the good one is
    predicted, each bad one is a row with an error naming it (and a stderr line), no traceback,
    and the exit status is 3 (some inputs failed), not 0."""
    result, holdout = mlp_run
    good = str(sorted(holdout.glob("red/*.png"))[0])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    missing = tmp_path / "missing.jpg"
    code = main(["predict", str(result.run_dir), good, str(broken), str(missing), "--json"])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    rows = {row["input"]: row for row in json.loads(captured.out.strip().splitlines()[-1])["predictions"]}
    assert set(rows) == {good, str(broken), str(missing)}
    assert rows[good]["predictions"][0]["label"] == "red" and "error" not in rows[good]
    for bad in (broken, missing):
        assert str(bad) in rows[str(bad)]["error"] and "predictions" not in rows[str(bad)]
        assert any(str(bad) in line for line in captured.err.splitlines())
    assert "Traceback" not in captured.err and "2 of 3 input(s) could not be predicted" in captured.err


def test_cli_eval_skips_an_unreadable_image_and_lists_it(mlp_run, tmp_path, capsys):
    """`graft eval` on a folder holding a broken image: exit 0, the others scored, the broken one
    listed under skipped_files."""
    result, holdout = mlp_run
    folder = tmp_path / "eval"
    for path in holdout.glob("*/*"):
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / path.parent.name / path.name).write_bytes(path.read_bytes())
    (folder / "red" / "broken.jpg").write_bytes(b"")
    assert main(["eval", str(result.run_dir), str(folder), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n"] == 6
    assert [Path(s["path"]).name for s in metrics["skipped_files"]] == ["broken.jpg"]


# --------------------------------------------------------------------------- --augment strong


def test_augment_strong_fine_tunes_with_trivial_augment(tmp_path, monkeypatch):
    """--augment strong: fine-tuning runs, and TrivialAugmentWide transformed every training image of
    the epoch (21 images in 3 batches of 7; augmentation in this process, so the spy sees it)."""
    from torchvision.transforms import v2

    calls = [0]
    real = v2.TrivialAugmentWide.forward

    def counted(self, *inputs):
        calls[0] += 1
        return real(self, *inputs)

    monkeypatch.setattr(v2.TrivialAugmentWide, "forward", counted)
    monkeypatch.setattr(image_modality, "default_workers", lambda: 0)
    data = make_image_folder(tmp_path / "data", per_class=8, seed=4)
    config = TrainConfig(
        data=str(data), strategy="finetune", freeze_epochs=0, epochs=1, augment="strong", image_size=32,
        batch_size=7, out=str(tmp_path / "run"),
    )  # fmt: skip
    report = run(config, log=_quiet).report
    assert report["config"]["augment"] == "strong" and report["data"]["train"] == 21
    assert calls[0] == 21 and len(report["history"]) == 1


# --------------------------------------------------------------------------- --flip-features


@pytest.fixture(scope="module")
def flip_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("flip")
    data = make_image_folder(root / "data", per_class=8, seed=2)
    holdout = make_image_folder(root / "holdout", per_class=2, seed=3)
    config = TrainConfig(
        data=str(data), test=str(holdout), strategy="linear", flip_features=True, image_size=32, epochs=10,
        out=str(root / "run"),
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(root / "cache"))
        return run(config, log=_quiet), holdout


def _flip_averaged_proba(result, paths: list[Path]) -> np.ndarray:
    """The head on the average of each image's and its mirror image's features: what the run
    trained and tested on."""
    loaded = graft.load(result.run_dir, device="cpu")
    x = torch.from_numpy(loaded.preprocess(paths))
    model = result.model.eval()
    with torch.inference_mode():
        feats = (model.body(x).flatten(1) + model.body(x.flip(3)).flatten(1)) / 2
        return model.head(feats).softmax(1).numpy()


@pytest.mark.precision
def test_flip_features_run_trains_and_tests_on_flip_averaged_features(flip_run):
    """--flip-features end to end: the report's test accuracy is the head's on flip-averaged
    features, and those differ from the plain ones (the option does something)."""
    result, holdout = flip_run
    assert result.report["config"]["flip_features"] is True
    paths = sorted(holdout.glob("*/*"))
    labels = [CLASSES.index(p.parent.name) for p in paths]
    proba = _flip_averaged_proba(result, paths)
    assert result.report["test"]["accuracy"] == pytest.approx(np.mean(proba.argmax(1) == labels))
    assert result.report["test"]["n"] == 6
    loaded = graft.load(result.run_dir, device="cpu")
    x = torch.from_numpy(loaded.preprocess(paths))
    with torch.inference_mode():
        plain = result.model.body(x).flatten(1)
        mirrored = result.model.body(x.flip(3)).flatten(1)
    assert not torch.allclose(plain, mirrored, atol=1e-3)


@pytest.mark.precision
def test_flip_features_bundle_predicts_what_the_run_tested(flip_run):
    """graft.load(run).predict_proba on the test images equals the probabilities behind report.json's
    test accuracy (the head on flip-averaged features): the bundle records `flip_average`."""
    result, holdout = flip_run
    paths = sorted(holdout.glob("*/*"))
    expected = _flip_averaged_proba(result, paths)
    got = graft.load(result.run_dir, device="cpu", precision="fp32").predict_proba(paths)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
