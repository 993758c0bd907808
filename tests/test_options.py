"""Every subcommand's options are generated from dataclass fields (graft.options, and TrainConfig
for the training options): each default lives in its field, is shown in --help, is what the Python
entry points default to, and a bad value is a one-line error."""

from __future__ import annotations

import argparse
import ast
import inspect
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

import graft.cli
from graft.cli import main
from graft.config import TrainConfig
from graft.errors import ConfigError
from graft.options import (
    COMMAND_OPTIONS,
    CompareOptions,
    DemoConfig,
    DemoOptions,
    EvalOptions,
    ExportOptions,
    LrFindOptions,
    PredictOptions,
    ServeOptions,
)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = graft.cli._parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def _field_defaults(command: str) -> dict[str, object]:
    """What each of the command's options defaults to, read from the dataclasses alone."""
    options = COMMAND_OPTIONS[command]
    train = {f.name: f.default for f in fields(TrainConfig) if f.name in options.config_fields}
    own = {f.name: f.default for f in fields(options)}
    merged = train | options.config_defaults | own
    return {name: (None if value is MISSING else value) for name, value in merged.items()}


def test_every_subcommand_has_its_options_dataclass():
    assert set(_subparsers()) == set(COMMAND_OPTIONS)


@pytest.mark.parametrize("command", sorted(COMMAND_OPTIONS))
def test_each_option_defaults_to_its_field_and_says_so_in_the_help(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line an option: a default is never wrapped
    parser = _subparsers()[command]
    expected = _field_defaults(command)
    text = parser.format_help()
    given = [a for a in parser._actions if a.dest != "help"]
    assert {a.dest for a in given} == set(expected)
    for action in given:
        assert action.help, action.dest
        if not action.option_strings:  # positional: required, or nargs="*"
            continue
        assert action.default == expected[action.dest], action.dest
        if action.default not in (None, False):
            assert f"(default: {action.default}" in action.help, action.dest
            assert f"(default: {action.default}" in text, action.dest


@pytest.mark.parametrize("command", sorted(COMMAND_OPTIONS))
def test_the_options_parsed_are_the_dataclass_with_its_defaults(command, tmp_path):
    positionals = [a for a in _subparsers()[command]._actions if not a.option_strings and a.nargs != "*"]
    argv = [command, *(str(tmp_path) for a in positionals if a.dest != "help")]
    args = graft.cli._parser().parse_args(argv)
    options = COMMAND_OPTIONS[command]
    built = options.from_args(args)
    for f in fields(options):
        if f.default is not MISSING:
            assert getattr(built, f.name) == f.default, f.name


def test_the_python_entry_points_default_to_the_same_fields():
    from graft.compare import CompareConfig
    from graft.demo import DemoConfig as DemoConfigThere
    from graft.evaluate import evaluate_folder
    from graft.export import export
    from graft.export.onnx import export_onnx
    from graft.predict.predictor import load
    from graft.serve import create_app, serve
    from graft.training.lr_find import find_lr, lr_range_test

    def default(function, name):
        return inspect.signature(function).parameters[name].default

    assert default(export, "format") == ExportOptions.format == "onnx"
    assert default(export, "samples") == default(export_onnx, "samples") == ExportOptions.samples == 32
    # serve takes a ServeOptions (None: its defaults), so host, port and the rest are the CLI's own
    assert default(serve, "options") is None and ServeOptions(run_dir="r").host == ServeOptions.host
    assert default(create_app, "precision") == ServeOptions.precision == "auto"
    assert default(evaluate_folder, "precision") == EvalOptions.precision
    assert default(load, "engine") == PredictOptions.engine and default(load, "precision") == "auto"
    assert default(find_lr, "steps") == default(lr_range_test, "steps") == LrFindOptions.steps == 100
    config = CompareConfig(data="d")
    assert config.labels_per_class == (10, 50, 250, None)
    assert config.methods == ("linear", "finetune", "scratch")
    assert (config.backbones, config.seeds, config.out) == ((None,), CompareOptions.seeds, CompareOptions.out)
    assert DemoConfigThere is DemoConfig and issubclass(DemoOptions, DemoConfig)
    assert (DemoConfig().labels_per_class, DemoConfig().image_size, DemoConfig().seed) == (10, 96, 0)


def test_cli_writes_no_argument_by_hand():
    """Only the generator (and --version) calls add_argument: an option is a dataclass field."""
    tree = ast.parse(Path(graft.cli.__file__).read_text())
    places = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                first = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
                places.append((function.name, first))
    assert sorted(places) == [("_parser", "--version"), ("add_arguments", None)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "RUN", "x", "--top-k", "0"], "--top-k must be at least 1, got 0"),
        (["serve", "RUN", "--port", "70000"], "--port must be in [0, 65535], got 70000"),
        (["export", "RUN", "--samples", "0"], "--samples must be at least 1"),
        (["lr-find", "RUN", "--steps", "0"], "--steps must be at least 1, got 0"),
        (["compare", "RUN", "--seeds", "0"], "--seeds must be at least 1, got 0"),
        (["compare", "RUN", "--methods", "linear,fast"], "bad --methods 'linear,fast'"),
        (["compare", "RUN", "--labels-per-class", "10,some"], "bad --labels-per-class '10,some'"),
        (["demo", "--labels-per-class", "0"], "--labels-per-class must be at least 1, got 0"),
    ],
)
def test_a_bad_option_is_a_one_line_error(argv, message, tmp_path, capsys):
    argv = [str(tmp_path) if part == "RUN" else part for part in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("graft: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("options", "given", "message"),
    [
        (PredictOptions, {"engine": "fast"}, "unknown --engine 'fast'; choose one of auto, torch, onnxru"),
        (EvalOptions, {"precision": "fp8"}, "unknown --precision 'fp8'; choose one of auto, fp32, bf16"),
        (PredictOptions, {"top_k": "3"}, "--top-k must be int, got '3'"),
        (ServeOptions, {"port": -1}, "--port must be in [0, 65535], got -1"),
    ],
)
def test_options_built_in_python_check_themselves(options, given, message):
    positional = {f.name: "x" for f in fields(options) if f.default is MISSING}
    with pytest.raises(ConfigError) as err:
        options(**positional, **given)
    assert message in str(err.value) and "\n" not in str(err.value)
