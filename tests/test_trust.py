"""Trust: bundles are data only and verified, bad inputs are reported and skipped, a run never
overwrites another run by accident. Tiny synthetic data throughout (32 px, linear probe)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, make_image_folder

import graft
from graft.bundle import BUNDLE_FORMAT, META_FILE, WEIGHTS_FILE, atomic_write, file_sha256
from graft.cli import main
from graft.config import TrainConfig
from graft.errors import BundleError
from graft.runner import run

SRC = Path(graft.__file__).resolve().parent


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trust")
    data = make_image_folder(root / "data", per_class=6, seed=0)
    config = TrainConfig(
        data=str(data), image_size=32, strategy="linear", val_fraction=0.25, out=str(root / "run")
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(root / "cache"))
        run(config, log=lambda line: None)
    return root / "run"


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return target


def _edit_meta(run_dir: Path, change) -> None:
    meta = json.loads((run_dir / META_FILE).read_text())
    change(meta)
    (run_dir / META_FILE).write_text(json.dumps(meta))


# --------------------------------------------------------------------------- bundles


def test_the_bundle_records_every_file_digest_and_the_model_fields(image_run):
    meta = json.loads((image_run / META_FILE).read_text())
    assert meta["format"] == BUNDLE_FORMAT == 4
    files = meta["integrity"]["files"]
    assert files == {WEIGHTS_FILE: file_sha256(image_run / WEIGHTS_FILE)}
    assert len(meta["integrity"]["model_digest"]) == 64
    assert graft.load(image_run).classes_ == CLASSES


TAMPERING = {
    "reordered classes": lambda m: m.update(classes=m["classes"][::-1]),
    "shortened classes": lambda m: m.update(classes=m["classes"][:2]),
    "extended classes": lambda m: m.update(classes=[*m["classes"], "purple"]),
    "renamed class": lambda m: m.update(classes=["cyan", *m["classes"][1:]]),
    "another backbone": lambda m: m["backbone"].update(name="resnet18"),
    "another head": lambda m: m["head"].update(spec="mlp"),
    "other preprocessing": lambda m: m["preprocessing"].update(mean=[0.0, 0.0, 0.0]),
    "other modality": lambda m: m.update(modality="text"),
    "forged weights digest": lambda m: m["integrity"]["files"].update({WEIGHTS_FILE: "0" * 64}),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_an_edited_graft_json_is_refused_in_one_line(image_run, tmp_path, capsys, case):
    run_dir = _copy(image_run, tmp_path)
    _edit_meta(run_dir, TAMPERING[case])
    with pytest.raises(BundleError) as err:
        graft.load(run_dir)
    assert "\n" not in str(err.value) and ("graft.json" in str(err.value) or WEIGHTS_FILE in str(err.value))
    assert main(["predict", str(run_dir), str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_recomputed_model_digest_still_disagrees_with_the_weights(image_run, tmp_path):
    """Editing the classes *and* graft.json's digest: the weights carry the original digest."""
    from graft.bundle import model_digest

    run_dir = _copy(image_run, tmp_path)

    def forge(meta):
        meta["classes"] = meta["classes"][::-1]
        meta["integrity"]["model_digest"] = model_digest(meta)

    _edit_meta(run_dir, forge)
    with pytest.raises(BundleError, match="its field 'classes' changed after training") as err:
        graft.load(run_dir)
    assert "display_names" in str(err.value)  # what to edit instead


@pytest.mark.parametrize("cut", [0, 7, 100, -10])
def test_a_truncated_or_changed_weights_file_is_refused_naming_it(image_run, tmp_path, cut):
    run_dir = _copy(image_run, tmp_path)
    weights = run_dir / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[:cut] if cut >= 0 else data[:cut] + bytes(10))
    with pytest.raises(BundleError, match=re.escape(str(weights))):
        graft.load(run_dir)


def test_a_truncated_weights_file_of_an_old_bundle_is_one_line(image_run, tmp_path):
    """Without recorded digests (format 1), safetensors' own error becomes one BundleError line."""
    run_dir = _copy(image_run, tmp_path)
    _edit_meta(run_dir, lambda m: (m.pop("integrity"), m.update(format=1)))
    weights = run_dir / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(BundleError, match="is damaged") as err:
        graft.load(run_dir)
    assert "\n" not in str(err.value)


def test_an_old_bundle_without_digests_still_loads(image_run, tmp_path):
    run_dir = _copy(image_run, tmp_path)
    _edit_meta(run_dir, lambda m: (m.pop("integrity"), m.update(format=1)))
    images = [np.zeros((8, 8), np.uint8), np.full((8, 8), 200, np.uint8)]
    np.testing.assert_array_equal(
        graft.load(run_dir).predict_proba(images), graft.load(image_run).predict_proba(images)
    )  # the same weights, read without their digests


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", '{"format": 2}', "\xff\xfe"])
def test_broken_json_is_refused_naming_the_file(image_run, tmp_path, text):
    run_dir = _copy(image_run, tmp_path)
    (run_dir / META_FILE).write_bytes(text.encode("latin-1"))
    with pytest.raises(BundleError, match=re.escape(str(run_dir / META_FILE))) as err:
        graft.load(run_dir)
    assert "\n" not in str(err.value)


def test_a_bundle_from_a_newer_graft_says_which_version_it_needs(image_run, tmp_path):
    run_dir = _copy(image_run, tmp_path)
    _edit_meta(run_dir, lambda m: (m.update(format=99), m["versions"].update(graft="9.1")))
    with pytest.raises(BundleError, match=r"graft 9\.1 .*upgrade graft to 9\.1 or newer"):
        graft.load(run_dir)


def test_a_missing_weights_file_is_one_line(image_run, tmp_path):
    run_dir = _copy(image_run, tmp_path)
    (run_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError, match="model.safetensors is missing"):
        graft.load(run_dir)


def test_atomic_write_uses_the_umask_and_leaves_no_temp_file(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "w" / "a.json", lambda tmp: tmp.write_text("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w" / "a.json").stat().st_mode) == 0o644  # was 0600 (mkstemp)
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["a.json"]


def test_bundle_files_get_the_users_umask(image_run):
    mask = os.umask(0o022)
    os.umask(mask)
    for name in (WEIGHTS_FILE, META_FILE, "report.json"):
        assert stat.S_IMODE((image_run / name).stat().st_mode) == 0o666 & ~mask


UNSAFE = [
    (re.compile(r"\bimport pickle\b|\bpickle\.|\bcPickle\b"), "pickle"),
    (re.compile(r"\bdill\b"), "dill"),
    (re.compile(r"\bjoblib\b"), "joblib"),
    (re.compile(r"(?<![\w.])eval\(|(?<![\w.])exec\("), "eval/exec"),
]


def test_no_unpickling_or_code_execution_in_the_source():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern, what in UNSAFE:
            found += [f"{path.name}: {what}" for _ in pattern.finditer(text)]
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : text.find(")", m.start()) + 1]
            if "weights_only=True" not in call:
                found.append(f"{path.name}: {call}")
    assert found == []


# --------------------------------------------------------------------------- bad inputs


def _truncated_jpeg(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a readable header: only decoding finds the cut
    return path


def _good_image(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(path)
    return path


def test_predict_goes_on_past_bad_inputs_and_reports_each(image_run, tmp_path, capsys):
    a, c = _good_image(tmp_path / "a.png"), _good_image(tmp_path / "c.jpg")
    bad = _truncated_jpeg(tmp_path / "bad.jpg")
    folder = tmp_path / "dir"
    _good_image(folder / "d.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "zero.png").write_bytes(b"")
    argv = [str(a), str(bad), str(c), str(folder), str(tmp_path / "missing.jpg")]
    argv += [str(tmp_path / "empty"), str(tmp_path / "zero.png")]
    assert main(["predict", str(image_run), *argv]) == 3
    out, err = capsys.readouterr()
    predicted = [line.split("\t")[0] for line in out.splitlines()]
    assert sorted(predicted) == sorted([str(a), str(c), str(folder / "d.png")])
    for name in ("bad.jpg", "missing.jpg", "empty", "zero.png"):
        assert name in err
    assert "4 of 7 input(s) could not be predicted" in err
    assert main(["predict", str(image_run), *argv, "--json"]) == 3
    rows = json.loads(capsys.readouterr().out.splitlines()[-1])["predictions"]
    assert sum("error" in r for r in rows) == 4 and sum("predictions" in r for r in rows) == 3


def test_predict_with_only_good_inputs_exits_zero(image_run, tmp_path, capsys):
    assert main(["predict", str(image_run), str(_good_image(tmp_path / "a.png"))]) == 0


def test_eval_skips_a_truncated_jpeg_and_goes_on(image_run, tmp_path, capsys):
    data = make_image_folder(tmp_path / "holdout", per_class=2, seed=5)
    _truncated_jpeg(data / "red" / "truncated.jpg")
    assert main(["eval", str(image_run), str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert metrics["n"] == 6
    assert [Path(s["path"]).name for s in metrics["skipped_files"]] == ["truncated.jpg"]


def test_eval_of_only_unreadable_images_is_one_line(image_run, tmp_path, capsys):
    _truncated_jpeg(tmp_path / "data" / "red" / "truncated.jpg")
    _truncated_jpeg(tmp_path / "data" / "blue" / "truncated.jpg")
    assert main(["eval", str(image_run), str(tmp_path / "data")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


# --------------------------------------------------------------------------- text models


def _table(path: Path, header: tuple[str, str], rows: list[tuple[str, str]]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


_POS, _NEG = ["great", "lovely", "superb"], ["awful", "boring", "poor"]


def _reviews(n: int, labels: tuple[str, str] = ("positive", "negative")) -> list[tuple[str, str]]:
    return [
        (f"the film was {(_POS if i % 2 else _NEG)[i % 3]}", labels[0] if i % 2 else labels[1])
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("trust-text")
    data = _table(root / "train.csv", ("review", "sentiment"), _reviews(24))
    config = TrainConfig(
        data=str(data),
        text_column="review",
        label_column="sentiment",
        strategy="linear",
        out=str(root / "run"),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(root / "cache"))
        run(config, log=lambda line: None)
    return root / "run"


def test_text_bundle_records_the_tokenizer_files_and_refuses_an_edited_one(text_run, tmp_path):
    meta = json.loads((text_run / META_FILE).read_text())
    tokenizer_files = [name for name in meta["integrity"]["files"] if name.startswith("tokenizer/")]
    assert tokenizer_files and meta["recipe"]["text_column"] == "review"
    run_dir = _copy(text_run, tmp_path)
    target = run_dir / tokenizer_files[0]
    target.write_bytes(target.read_bytes() + b" ")
    with pytest.raises(BundleError, match=re.escape(str(target))):
        graft.load(run_dir)


def test_text_predict_of_nothing_is_an_empty_list(text_run):
    assert graft.load(text_run).predict([]) == []


def test_text_eval_and_predict_take_other_column_names(text_run, tmp_path, capsys):
    table = _table(tmp_path / "other.csv", ("body", "stars"), _reviews(8))
    argv = ["eval", str(text_run), str(table), "--text-column", "body", "--label-column", "stars", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == 8
    argv = ["predict", str(text_run), "--input", str(table), "--text-column", "body", "--json"]
    assert main(argv) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[-1])["predictions"]) == 8


def test_text_eval_counts_and_reports_labels_never_seen(text_run, tmp_path, capsys):
    rows = _reviews(6) + [("the film was fine", "neutral")] * 3
    table = _table(tmp_path / "mixed.csv", ("review", "sentiment"), rows)
    assert main(["eval", str(text_run), str(table)]) == 0
    out = capsys.readouterr().out
    assert "left out 3 row(s) with labels the model never saw: 'neutral' (3)" in out
    assert main(["eval", str(text_run), str(table), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert metrics["unknown_labels"] == {"neutral": 3} and metrics["n"] == 6


def test_text_eval_with_only_foreign_labels_is_one_line(text_run, tmp_path, capsys):
    table = _table(tmp_path / "digits.csv", ("review", "sentiment"), _reviews(6, ("1", "0")))
    assert main(["eval", str(text_run), str(table)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none of its labels (0, 1)" in err and "negative, positive" in err


def test_text_predict_of_one_existing_file_warns(text_run, tmp_path, capsys):
    table = _table(tmp_path / "t.csv", ("review", "sentiment"), _reviews(2))
    with pytest.warns(UserWarning, match="use --input FILE"):
        assert main(["predict", str(text_run), str(table)]) == 0


# --------------------------------------------------------------------------- preflight


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("trust-small") / "data", per_class=4, seed=3)


def _train(data: Path, out: Path | str, **options) -> int:
    argv = ["train", str(data), "--image-size", "32", "--strategy", "linear", "--out", str(out)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return main(argv)


@pytest.mark.parametrize("marker", ["graft.json", "checkpoint.json"])
def test_an_out_folder_holding_a_run_is_refused_before_any_compute(
    small_data, tmp_path, capsys, monkeypatch, marker
):
    out = tmp_path / "run"
    out.mkdir()
    (out / marker).write_text("{}")
    monkeypatch.setattr("graft.runner._backbone_for", lambda *a: pytest.fail("computed before refusing"))
    assert _train(small_data, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and "--resume" in err and marker in err


def test_overwrite_replaces_a_run(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(small_data, out) == 0
    (out / "tokenizer").mkdir()  # a stale asset folder of another (text) run
    assert _train(small_data, out) == 2
    assert _train(small_data, out, overwrite=True) == 0
    assert not (out / "tokenizer").exists()
    assert graft.load(out).classes_ == CLASSES


@pytest.mark.parametrize("case", ["out is a file", "under a file", "under /proc", "overwrite and resume"])
def test_unusable_out_folders_are_one_line(small_data, tmp_path, capsys, case):
    (tmp_path / "file").write_text("x")
    out = {
        "out is a file": tmp_path / "file",
        "under a file": tmp_path / "file" / "run",
        "under /proc": Path("/proc/graft-run"),
        "overwrite and resume": tmp_path / "run",
    }[case]
    extra = {"overwrite": True, "resume": True} if case == "overwrite and resume" else {}
    assert _train(small_data, out, **extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("graft: error: ")


def test_resume_without_a_checkpoint_says_it_starts_afresh(small_data, tmp_path):
    with pytest.warns(UserWarning, match="holds no checkpoint"):
        assert _train(small_data, tmp_path / "run", resume=True) == 0


@pytest.mark.parametrize("case", ["read-only", "a file", "under /proc"])
def test_an_unusable_cache_folder_trains_without_it_with_one_warning(small_data, tmp_path, monkeypatch, case):
    target = {
        "read-only": tmp_path / "ro",
        "a file": tmp_path / "cachefile",
        "under /proc": Path("/proc/graft"),
    }[case]
    if case == "read-only":
        target.mkdir()
        target.chmod(0o555)
        if os.access(target, os.W_OK) and os.geteuid() == 0:  # root writes anyway: fail the mkdir instead
            (target / "features").write_text("not a folder")
    elif case == "a file":
        target.write_text("x")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(target))
    with pytest.warns(UserWarning, match="GRAFT_CACHE_DIR") as record:
        assert _train(small_data, tmp_path / "run") == 0
    assert sum("GRAFT_CACHE_DIR" in str(w.message) for w in record) == 1


# --------------------------------------------------------------------------- interruptions


def test_ctrl_c_prints_the_exact_command_to_resume(tmp_path, capsys, monkeypatch):
    from graft import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "train", interrupted)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data dir" / "a").mkdir(parents=True)  # the paths are checked before the command runs
    out = tmp_path / "my run"
    assert main(["train", "data dir", "--out", str(out), "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint was written" in err and "run the same command again" in err
    out.mkdir()
    (out / "checkpoint.json").write_text("{}")
    assert main(["train", "data dir", "--out", str(out), "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.rstrip().endswith(f"continue with: graft train 'data dir' --out '{out}' --resume")


# --------------------------------------------------------------------------- preflight: the data


def _image(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(path)


def _no_classes(root: Path) -> Path:
    root.mkdir()
    return root


def _loose_images(root: Path) -> Path:
    for i in range(3):
        _image(root / f"{i}.png")
    return root


def _one_class(root: Path) -> Path:
    for i in range(4):
        _image(root / "red" / f"{i}.png")
    return root


def _single_example_class(root: Path) -> Path:
    for i in range(4):
        _image(root / "red" / f"{i}.png")
    _image(root / "blue" / "only.png")
    return root


DATA_PREFLIGHT = {
    "no class folders": (_no_classes, r"is an empty folder; graft learns from images in one subfolder"),
    "images but no class folders": (_loose_images, r"found 0 class folder\(s\).*one subfolder per class"),
    "one class": (_one_class, r"found 1 class folder\(s\) \(red\); need at least two"),
    "a class of one image": (
        _single_example_class,
        r"class 'blue' has a single example, too few to split off validation data: add examples, "
        r"remove the class, or pass a validation set \(--val\)",
    ),
}


@pytest.mark.parametrize("case", list(DATA_PREFLIGHT))
def test_unusable_image_data_is_one_line_naming_the_fix_before_any_training(
    tmp_path, capsys, monkeypatch, case
):
    build, message = DATA_PREFLIGHT[case]
    data = build(tmp_path / "data")
    monkeypatch.setattr("graft.training.recipes.train", lambda *a: pytest.fail("trained before refusing"))
    assert _train(data, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"graft: error: {data}")
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_a_class_of_one_image_trains_when_a_validation_folder_is_given(tmp_path):
    data = _single_example_class(tmp_path / "data")
    val = make_image_folder(tmp_path / "val", per_class=1, seed=1)
    shutil.rmtree(val / "green")
    tiny = {"backbone": "timm/test_efficientnet", "weights": "random"}
    assert _train(data, tmp_path / "run", val=val, **tiny) == 0
    assert graft.load(tmp_path / "run").classes_ == ("blue", "red")


TEXT_PREFLIGHT = {
    "one label": (
        [("great film", "pos")] * 6,
        r"training needs at least 2 labels, found 1 \('pos'\); add rows with other labels, or point "
        r"--label-column at the column that holds them",
    ),
    "no usable row": ([("", "pos"), ("a film", "")], r"found 0 \(no usable rows, 2 skipped\)"),
    "a label of one row": (
        [("great film", "pos")] * 6 + [("meh", "neutral")] + [("awful film", "neg")] * 6,
        r"class 'neutral' has a single example, too few to split off validation data",
    ),
}


@pytest.mark.parametrize("case", list(TEXT_PREFLIGHT))
def test_unusable_text_data_is_one_line_naming_the_fix_before_any_training(
    tmp_path, capsys, monkeypatch, case
):
    pytest.importorskip("transformers")
    rows, message = TEXT_PREFLIGHT[case]
    table = _table(tmp_path / "train.csv", ("text", "label"), rows)
    monkeypatch.setattr("graft.training.recipes.train", lambda *a: pytest.fail("trained before refusing"))
    assert main(["train", str(table), "--strategy", "linear", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"graft: error: {table}")
    assert re.search(message, err), err
