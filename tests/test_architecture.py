"""The shape of graft: no modality branches outside modalities/, one optimisation loop, imports that
run one way, detection by majority, an explicit device, errors that keep bugs' tracebacks, a CLI
generated from the config, report.json with the config as asked and the plan as resolved, the
scikit-learn style API, and bundles of the previous format still loading."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_image_folder
from PIL import Image

import graft
from graft.cli import main
from graft.errors import ConfigError
from graft.modalities import detect, get_modality
from graft.runtime.capabilities import CudaCapabilities, use_capabilities
from graft.runtime.device import resolve_device

SRC = Path(graft.__file__).resolve().parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _modules() -> dict[str, Path]:
    return {str(p.relative_to(SRC)): p for p in SRC.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Modules a file imports (also inside functions), relative imports resolved to graft.* names."""
    package = ["graft", *path.relative_to(SRC).parent.parts]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}
    return found


# --------------------------------------------------------------------------- the shape


def test_no_modality_branches_outside_modalities():
    pattern = re.compile(r"modality ==|== \"text\"|== \"image\"|== 'text'|== 'image'")
    offenders = [
        f"{name}:{i}"
        for name, path in _modules().items()
        if not name.startswith("modalities/")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_exactly_one_optimisation_loop():
    """Only training/loop.py calls backward() or steps an optimizer."""
    pattern = re.compile(r"\.backward\(|\.step\(\)|scaler\.step\(")
    places = sorted(name for name, path in _modules().items() if pattern.search(path.read_text()))
    assert places == ["training/loop.py"]


def test_every_function_stays_under_60_lines():
    """Small functions: one that grew past 60 lines (finetune was 141) is split before it lands."""
    import ast

    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{name}:{node.name}")
    assert long == []


def test_imports_run_one_way():
    mods = _modules()
    # prediction needs no training code, even transitively
    code = "import sys, graft.predict; print(sorted(m for m in sys.modules if 'graft.training' in m))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    assert not any("recipes" in m for m in _imports(mods["training/features.py"]))  # the cache uses no recipe
    assert not any(m.startswith("graft.data") for m in _imports(mods["training/loop.py"]))
    strategies = {m.split(".")[0] for m in _imports(mods["training/strategies.py"])} - {"graft"}
    assert strategies <= {"__future__", "math", "collections", "dataclasses", "functools"}  # pure
    for name in ("modalities/base.py", "modalities/image.py", "modalities/text.py"):
        assert not any(m.startswith("graft.training") for m in _imports(mods[name])), name
    # no circle between prediction and export: export uses the predictors, never the reverse
    prediction = [name for name in mods if name.startswith(("predict/", "serve/"))] + ["__init__.py"]
    assert len(prediction) == 13
    for name in prediction:
        assert not any(m.startswith("graft.export") for m in _imports(mods[name])), name
    # the onnxruntime predictor does not use the torch one
    onnx_predictor = _imports(mods["predict/onnx_predictor.py"])
    assert not any(m.startswith("graft.predict.predictor") for m in onnx_predictor)
    # the layers below prediction never reach up into it (the engine borrows only answers' onnx_session)
    for name in mods:
        if name.startswith(("runtime/", "distributed/", "data/", "modalities/", "tasks/", "backbones/")):
            above = {m for m in _imports(mods[name]) if m.startswith("graft.predict")}
            assert above <= {"graft.predict.answers", "graft.predict.answers.onnx_session"}, name


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """graft module -> the graft modules it imports: every import statement (also inside functions
    and under TYPE_CHECKING), `from . import x` resolved to the module x, an import of a package
    counted as importing its __init__."""
    paths = {_module_name(p): p for p in SRC.rglob("*.py")}

    def known(name: str) -> str | None:  # the longest prefix that is a graft module
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join([*base, node.module] if node.module else base)
                for alias in node.names:
                    inner = f"{module}.{alias.name}"
                    targets.add(inner if inner in paths else known(module))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    """No module imports, directly or through others, a module that imports it: every import
    counts, also those inside functions, so a cycle cannot hide behind a lazy import."""
    graph = _import_graph()
    cycles = _cycles(graph)
    lines = []
    for members in cycles:
        lines.append(f"cycle of {len(members)} modules:")
        lines += [f"  {m} -> {', '.join(sorted(graph[m] & set(members)))}" for m in members]
    assert cycles == [], "\n" + "\n".join(lines)


# modules that moved in issue 35 keep their old path for one release, with a DeprecationWarning
SHIMS = {
    "graft.compute": ("graft.runtime.device", "graft.runtime.precision", "graft.runtime.inference"),
    "graft.engine": ("graft.runtime.engine",),
    "graft.onnx_runtime": ("graft.predict.onnx_predictor",),
    "graft.predict_onnx": ("graft.predict.light",),
    "graft.answers": ("graft.predict.answers",),
    "graft.onnx_graph": ("graft.predict.graph",),
}


def test_no_file_is_over_600_lines():
    too_long = {
        name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 600
    }
    assert too_long == {}


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_an_old_module_path_warns_and_gives_the_same_objects(old, monkeypatch):
    import importlib

    monkeypatch.delitem(sys.modules, old, raising=False)  # imported afresh: its warning is given again
    with pytest.warns(DeprecationWarning, match=rf"^{re.escape(old)} is deprecated: import from ") as seen:
        __import__(old)
    assert seen[0].filename == __file__  # the warning points at the line that imports it
    module = sys.modules[old]
    moved = {name: getattr(importlib.import_module(new), name) for new in SHIMS[old]
             for name in vars(importlib.import_module(new)) if not name.startswith("__")}
    public = [name for name in moved if not name.startswith("_")]
    assert public and all(getattr(module, name) is moved[name] for name in public)
    first = public[0]
    found: dict[str, Any] = {}
    exec(f"from {old} import {first}", found)  # the form users' code has
    assert found[first] is moved[first]
    private = [name for name in moved if name.startswith("_")]  # forwarded on first use (bench scripts)
    assert all(getattr(module, name) is moved[name] for name in private)


def test_graft_predict_keeps_its_names_and_imports_no_torch():
    """`graft.predict` is a package now: its names of before load the torch predictor on first use,
    and importing it (or the torch-free path under it) imports neither torch nor training code."""
    code = (
        "import sys, graft.predict, graft.predict.light; "
        "print('torch' in sys.modules, any('graft.training' in m for m in sys.modules)); "
        "from graft.predict import RUNTIMES, Predictor, build_model, load; "
        "import graft.predict.predictor as p; "
        "print(Predictor is p.Predictor and build_model is p.build_model and load is p.load "
        "and RUNTIMES == ('torch', 'onnx'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "True"]


def test_an_old_name_of_graft_distributed_warns_and_gives_the_same_object():
    import importlib

    import graft.distributed as package

    assert len(package._MOVED) == 24
    for name, where in package._MOVED.items():
        with pytest.warns(DeprecationWarning, match=rf"graft\.distributed\.{name} is deprecated: use "):
            found = getattr(package, name)
        assert found is getattr(importlib.import_module(f"graft.distributed.{where}"), name), name
    with pytest.warns(DeprecationWarning, match="graft.distributed.launch is deprecated"):
        from graft.distributed import launch
    assert launch is importlib.import_module("graft.distributed.launcher").launch
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        package.nothing  # noqa: B018


def test_graft_uses_none_of_its_old_paths():
    """No graft module imports a moved module's old path or an old name of graft.distributed."""
    import graft.distributed

    old_names = {f"graft.distributed.{name}" for name in graft.distributed._MOVED}
    for name, path in _modules().items():
        if f"graft.{name.removesuffix('.py')}".replace("/", ".") in SHIMS:
            continue
        used = _imports(path)
        assert not used & (set(SHIMS) | old_names), name
        # the package itself (whose attributes are the old names) is never imported, only its modules
        froms = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)]
        package = [a.name for node in froms if node.module in (None, "graft") for a in node.names]
        assert "distributed" not in package, name


def test_importing_graft_and_training_gives_no_deprecation_warning_from_graft(tmp_path):
    """In a fresh process: every graft module imported, then a small `graft train`; none of graft's
    own old paths warns (they would, once each, if graft still used them)."""
    data = make_image_folder(tmp_path / "data", per_class=4, seed=0)
    code = f"""
import importlib, pkgutil, re, warnings
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    import graft
    for info in pkgutil.walk_packages(graft.__path__, "graft."):
        if info.name not in {sorted(SHIMS)!r} and info.name != "graft.__main__":
            importlib.import_module(info.name)
    from graft.cli import main
    code = main(["train", {str(data)!r}, "--strategy", "linear", "--image-size", "32", "--epochs", "2",
                 "--out", {str(tmp_path / "run")!r}])
old = [str(w.message) for w in seen if re.match(r"graft[.][a-z_.]+ is deprecated", str(w.message))]
print(code, old)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "0 []"


# --------------------------------------------------------------------------- detection


def test_a_stray_text_file_does_not_make_an_image_folder_text(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4, seed=0)
    (data / "red" / "README.txt").write_text("notes about the red images")
    with pytest.warns(UserWarning, match=r"holds 12 images; ignoring 1 other file\(s\): .*README\.txt"):
        found = detect(data)
    assert found.modality.name == "image"


def test_a_stray_image_does_not_make_a_text_folder_images(tmp_path):
    for label in ("neg", "pos"):
        (tmp_path / label).mkdir()
        for i in range(3):
            (tmp_path / label / f"{i}.txt").write_text(f"{label} text {i}")
    Image.new("RGB", (8, 8)).save(tmp_path / "pos" / "cover.png")
    with pytest.warns(UserWarning, match="cover.png"):
        assert detect(tmp_path).modality.name == "text"


def test_tables_are_text_and_cifar10_is_images(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("text,label\na,x\n")
    assert detect(table).modality.name == "text"
    assert detect("cifar10").modality.name == "image"


# --------------------------------------------------------------------------- device, errors, CLI


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with use_capabilities(CudaCapabilities(available=False)):  # as on a GPU machine too
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="unknown --device 'gpu0'"):
        resolve_device("gpu0")


def test_cli_device_error_is_one_line(tmp_path, capsys, monkeypatch):
    data = make_image_folder(tmp_path / "data", per_class=4, seed=0)
    with use_capabilities(CudaCapabilities(available=False)):
        assert main(["train", str(data), "--device", "cuda:1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "graft: error: --device cuda:1: no CUDA GPU is visible to PyTorch; use --device cpu"


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """A plain ValueError inside graft is a bug: traceback, a line asking to report it, exit 1."""
    import graft.cli as cli

    def broken(args):
        raise ValueError("boom")

    monkeypatch.setitem(cli.COMMANDS, "backbones", broken)
    assert main(["backbones"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: boom" in err and "please report it" in err


def test_help_shows_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--weight-decay WEIGHT_DECAY AdamW weight decay", "(default: 0.05)", "--device DEVICE",
                     "(default: auto)", "--time-budget DURATION", "text options:", "--adapt-lm N"):
        assert expected in text
    from graft.cli import _parser

    train = next(a for a in _parser()._actions if a.dest == "command").choices["train"]
    assert all(action.help for action in train._actions)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"graft {graft.__version__}"


# --------------------------------------------------------------------------- report, console, API


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    from graft.config import TrainConfig
    from graft.runner import run

    root = tmp_path_factory.mktemp("auto")
    data = make_image_folder(root / "data", per_class=8, seed=1)
    lines: list[str] = []
    result = run(TrainConfig(data=str(data), image_size=32, out=str(root / "run")), log=lines.append)
    return result, lines


def test_report_keeps_the_config_as_asked_and_the_plan_as_resolved(auto_run):
    result, _ = auto_run
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["config"]["strategy"] == "auto" and report["config"]["epochs"] is None
    plan = report["plan"]
    assert plan["strategy"] == "linear" and "examples per class" in plan["strategy_reason"]
    assert plan["epochs"] == len(report["history"]) and plan["epochs"] > 30  # stretched to 500 steps
    assert any("at least 500 steps" in note for note in plan["notes"])
    assert plan["device"] == "cpu" and plan["preprocessing"]["input_size"] == 32


def test_linear_probe_prints_one_summary_line_not_one_per_epoch(auto_run):
    _, lines = auto_run
    assert not [line for line in lines if line.startswith("epoch ")]
    summary = [line for line in lines if line.startswith("linear probe: ")]
    assert len(summary) == 1 and "val_acc" in summary[0]


def test_classifier_fit_predict_score_save_load(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8, seed=2)
    clf = graft.Classifier(strategy="linear", image_size=32, epochs=5, out=str(tmp_path / "run"))
    assert clf.fit(data, log=lambda line: None) is clf
    assert list(clf.classes_) == list(CLASSES)
    files = sorted((data / "red").iterdir())[:2] + sorted((data / "blue").iterdir())[:2]
    proba = clf.predict_proba(files)
    assert proba.shape == (4, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert clf.score(files, ["red", "red", "blue", "blue"]) == 1.0
    saved = clf.save(tmp_path / "saved")
    np.testing.assert_allclose(graft.load(saved).predict_proba(files), proba, atol=1e-5)


def test_classifier_fits_in_memory_arrays(tmp_path):
    from conftest import synthetic_image

    rng = np.random.default_rng(3)
    images = [synthetic_image(label, rng) for label in CLASSES for _ in range(8)]
    labels = [label for label in CLASSES for _ in range(8)]
    clf = graft.Classifier(strategy="linear", image_size=32, epochs=5, out=str(tmp_path / "run"))
    clf.fit(images, labels, log=lambda line: None)
    assert clf.score(images[:3] + images[-3:], labels[:3] + labels[-3:]) == 1.0


def test_classifier_rejects_an_unknown_option():
    with pytest.raises(ConfigError, match="unknown option"):
        graft.Classifier(epoch=3)


# --------------------------------------------------------------------------- bundles of format 1


def _old_bundle(tmp_path: Path, name: str) -> tuple[Path, dict]:
    from safetensors.torch import save_file

    from graft.heads import upgrade_head_keys
    from graft.predict.predictor import build_model

    fixture = json.loads((FIXTURES / f"bundle-0.1-{name}.json").read_text())
    meta = fixture["graft.json"]
    state = build_model(meta).state_dict()
    # the same shapes under the names of then (the head's numbered keys: head.0.mean, head.1.weight)
    old_name = upgrade_head_keys({k: k for k in fixture["weights"]})
    assert {k: list(v.shape) for k, v in state.items()} == {k: fixture["weights"][old_name[k]] for k in state}
    tmp_path.mkdir(parents=True, exist_ok=True)
    old_state = {old_name[k]: v.contiguous() for k, v in state.items()}
    save_file(old_state, str(tmp_path / "model.safetensors"))
    (tmp_path / "graft.json").write_text(json.dumps(meta))
    return tmp_path, meta


def test_an_image_bundle_written_before_the_change_loads_and_predicts(tmp_path):
    run_dir, meta = _old_bundle(tmp_path / "old", "image")
    model = graft.load(run_dir)
    assert model.classes_ == tuple(meta["classes"]) and model.modality.name == "image"
    assert model.preprocess([np.zeros((8, 8), np.uint8)]).shape == (1, 3, 96, 96)
    assert model.predict([np.zeros((8, 8), np.uint8)])[0] in meta["classes"]


def test_a_text_bundle_written_before_the_change_rebuilds_its_encoder(tmp_path):
    pytest.importorskip("transformers")
    _, meta = _old_bundle(tmp_path / "old", "text")
    assert meta["modality"] == "text" and get_modality(meta["modality"]).name == "text"


@pytest.mark.precision
def test_a_real_format_1_text_bundle_loads_and_predicts_what_it_predicted_then(tmp_path):
    """tests/fixtures/bundle-format1-text was written by graft before bundle format 2 (commit
    bba6ea7^: a 2-layer BERT with a 89-word WordPiece vocabulary, fine-tuned on 40 reviews), with
    the probabilities that graft gave for four texts then, in fp32. Today's graft loads it (no
    digests to verify; the encoder's model folder is gone) and gives the same probabilities."""
    pytest.importorskip("transformers")
    run_dir = tmp_path / "old"
    shutil.copytree(FIXTURES / "bundle-format1-text", run_dir)
    meta = json.loads((run_dir / "graft.json").read_text())
    assert meta["format"] == 1 and "integrity" not in meta
    assert not Path(meta["backbone"]["name"]).exists()  # rebuilt from graft.json alone
    expected = json.loads((run_dir / "expected.json").read_text())
    model = graft.load(run_dir, device="cpu", precision="fp32")
    np.testing.assert_allclose(
        model.predict_proba(expected["texts"]), expected["probabilities"], atol=1e-5, rtol=0
    )
    assert model.predict(expected["texts"]) == expected["labels"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--epochs", "-1"], "--epochs must be at least 1, got -1"),
        (["--image-size", "0"], "--image-size must be at least 1, got 0"),
        (["--label-smoothing", "2"], "--label-smoothing must be in [0, 1), got 2.0"),
        (["--lr", "0"], "--lr must be positive, got 0.0"),
        (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    ],
)
def test_impossible_options_are_one_line_errors_before_any_work(tmp_path, capsys, args, message):
    assert main(["train", str(tmp_path / "not-read"), *args]) == 2
    assert capsys.readouterr().err.strip() == f"graft: error: {message}"


def test_every_predictor_answers_through_one_shared_class():
    """PyTorch, onnxruntime and the torch-free path differ only in running the network
    (`outputs_or_skip`); reading a table's columns (`read_inputs`), `predict_proba_or_skip`,
    `outputs`, `predict_proba` and `predict` are written once."""
    from graft.predict.answers import Answers
    from graft.predict.light import ExportedImagePredictor
    from graft.predict.onnx_predictor import OnnxPredictor
    from graft.predict.predictor import Predictor

    for runtime in (Predictor, OnnxPredictor, ExportedImagePredictor):
        assert issubclass(runtime, Answers)
        shared = {"read_inputs", "predict_proba_or_skip", "outputs", "predict_proba", "predict"}
        assert shared.isdisjoint(vars(runtime)), runtime.__name__
        assert "outputs_or_skip" in vars(runtime), runtime.__name__
