"""The `graft` command line. Every subcommand's options are generated from dataclass fields (help
text, default, choices live there, once): `config.TrainConfig` for the training options `train`,
`lr-find` and `compare` take, `options.*Options` for the rest. This module only parses, calls the
Python API and prints. Nothing here trains."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2
EXIT_BUG = 1
# each subcommand's one-line help; its options are the fields of graft.options.COMMAND_OPTIONS[name]
COMMAND_HELP = {
    "train": "train a classifier on images or texts",
    "eval": "evaluate a run folder on labelled images or a labelled text table",
    "predict": "predict labels for images or texts",
    "lr-find": "learning-rate range test: plot and suggested --lr",
    "export": "export a run folder for another runtime (ONNX), checked for parity",
    "report": "write a run folder's report.html again (from its report.json)",
    "compare": "linear probe vs fine-tuning vs from scratch, at several data sizes",
    "serve": "an HTTP prediction service and page for a run folder (extra serve)",
    "backbones": "list the built-in backbones",
    "pick": "score candidate backbones on your data (frozen-feature probes) and pick one",
    "demo": "pretrained vs from scratch on scikit-learn's digits, offline",
}


def _arg_type(f: Field) -> Any:
    kind = str(f.type)
    if "parse" in f.metadata:
        parse = f.metadata["parse"]

        def parsed(text: str) -> Any:
            try:
                return parse(text)
            except ValueError as err:  # argparse prints this message as the usage error
                raise argparse.ArgumentTypeError(str(err)) from None

        return parsed
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float
    return str


def add_arguments(
    parser: argparse.ArgumentParser,
    options: type,
    only: tuple[str, ...] | None = None,
    defaults: dict[str, Any] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """One argument per field of an options dataclass (TrainConfig, graft.options.*), as Hugging
    Face's HfArgumentParser does: its help (or `helps`'), its default (shown), its choices, in its
    group."""
    defaults, helps = defaults or {}, helps or {}
    for f in fields(options):
        if only is not None and f.name not in only:
            continue
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        names, kwargs = _argument(f, default, helps.get(f.name))
        _group(parser, f.metadata.get("group")).add_argument(*names, **kwargs)


def _argument(f: Field, default: Any, help_text: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """argparse's names and keywords for one field."""
    meta = f.metadata
    shape = {key: meta[key] for key in ("nargs", "metavar") if key in meta}
    if meta.get("positional"):
        return [f.name], {"help": meta["help"], **shape}
    help_text = help_text or meta["help"]
    if default is not None and default is not False:
        means = f": {meta['default_means']}" if "default_means" in meta else ""
        help_text = f"{help_text} (default: {default}{means})".strip()
    flag = "--" + f.name.replace("_", "-")
    if str(f.type) == "bool":
        return [flag], {"action": "store_true", "default": default, "help": help_text}
    typed = {"type": _arg_type(f), "choices": meta.get("choices")}
    return [flag], {**typed, **shape, "default": default, "help": help_text}


def _group(parser: argparse.ArgumentParser, name: str | None) -> Any:
    """The parser itself, or its "<name> options" group (made on first use)."""
    if not name:
        return parser
    title = f"{name} options"
    found = [g for g in parser._action_groups if g.title == title]
    return found[0] if found else parser.add_argument_group(title)


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__
    from .config import TrainConfig
    from .options import COMMAND_OPTIONS

    parser = argparse.ArgumentParser(prog="graft", description="Transfer learning from one command.")
    parser.add_argument("--version", action="version", version=f"graft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, options in COMMAND_OPTIONS.items():
        p = sub.add_parser(name, help=COMMAND_HELP[name])
        if options.config_fields:  # the training options it shares, generated from TrainConfig
            add_arguments(p, TrainConfig, options.config_fields, options.config_defaults, options.config_help)
        add_arguments(p, options)
    return parser


def _log_for(args: argparse.Namespace):
    # with --json, progress goes to stderr so stdout's last line is the JSON object
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    return lambda line: print(line, file=stream, flush=True)


def _config_options(args: argparse.Namespace) -> dict[str, Any]:
    from .config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .api import Classifier

    options = _config_options(args)
    data = options.pop("data")
    clf = Classifier(**options).fit(data, log=_log_for(args))
    report = clf.report_
    task = clf.task_
    val, test = task.headline(report["validation"]), task.headline(report["test"]) if report["test"] else {}
    out = {k: v for k, v in val.items() if k != "n"} | {
        "seconds": round(report["seconds"], 2),
        "run_dir": str(clf.run_dir_),
        "strategy": report["strategy"],
        "feature_cache_hit": report["timing"]["feature_cache_hit"],
        "skipped_files": len(report["skipped_files"]),
    }
    out |= {f"test_{k}": v for k, v in test.items() if k != "n"}
    if task.name != "single":
        out["task"] = task.name
    if report.get("advice"):
        out["advice"] = report["advice"]
    if not args.json and _is_main():  # under accelerate launch every process runs this: rank 0 prints
        print(f"validation {_numbers(val)}")
        if test:
            print(f"test {_numbers(test)}")
        print(f"run folder: {clf.run_dir_}  ({out['seconds']:.1f}s)")
        for line in report.get("advice") or []:
            print(f"advice: {line}")
    return out


NUMBER_NAMES = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "map": "mAP", "r2": "R2", "rmse": "RMSE"}


def _numbers(headline: dict[str, Any]) -> str:
    """A task's headline numbers for people: `accuracy 0.9120  macro-F1 0.9050`."""
    shown = [(NUMBER_NAMES.get(k, k.replace("_", " ")), v) for k, v in headline.items() if k != "n"]
    return "  ".join(f"{name} {value:.4f}" if value is not None else f"{name} -" for name, value in shown)


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluate import evaluate_folder

    metrics = evaluate_folder(
        args.run_dir, args.data, args.text_column, args.label_column, args.precision, args.image_column
    )
    if not args.json:
        if metrics["split"]:
            print(f"evaluating {metrics['data']}: the {metrics['split']} split of {args.data}")
        from .tasks import get_task

        task = get_task(metrics["task"])
        print(f"{_numbers(task.headline(metrics))}  (n={metrics['n']}, {metrics['precision']['name']})")
        for line in task.eval_lines(metrics):  # per class, label or target, as the task has them
            print(line)
        unknown = metrics["unknown_labels"]
        if unknown:
            listed = ", ".join(f"{label!r} ({n})" for label, n in unknown.items())
            print(f"left out {sum(unknown.values())} row(s) with labels the model never saw: {listed}")
        for s in metrics["skipped_files"]:
            print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
        if metrics["skipped_files"]:
            print(f"skipped {len(metrics['skipped_files'])} input(s); --json lists them")
    return metrics


EXIT_SOME_FAILED = 3  # predict: some inputs could not be read (the others were predicted)


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    from .bundle import with_columns
    from .errors import ConfigError
    from .predict.light import load_exported

    # an image run exported with `graft export` predicts without importing PyTorch (starts in ~1 s);
    # it computes in fp32, so it stands in for `auto` and `fp32` only
    torch_free = args.engine != "torch" and args.precision in ("auto", "fp32")
    model = load_exported(args.run_dir) if torch_free else None
    if model is None:
        from .predict.predictor import load

        model = load(args.run_dir, engine=args.engine, precision=args.precision)
    if not args.json:
        print(f"precision {model.precision.name} ({model.precision.reason})", file=sys.stderr)
    meta = with_columns(model.meta, args.text_column, args.label_column, args.image_column)
    one_file = len(args.inputs) == 1 and Path(args.inputs[0]).is_file()
    if _takes_strings(model) and not args.input and one_file:
        warnings.warn(
            f"{args.inputs[0]} is an existing file, classified here as a text: "
            "use --input FILE to predict the texts in it",
            stacklevel=1,
        )
    inputs, failed = _gather(args.inputs, model)
    inputs += _inputs_from(args.input, model, meta) if args.input else []
    if not inputs and not failed:
        raise ConfigError("nothing to predict: give image files or texts, or --input FILE")
    proba, failures = model.predict_proba_or_skip(inputs) if inputs else (None, {})
    rows = [{"input": given, "error": reason} for given, reason in failed]
    for i, source in enumerate(inputs):
        if i in failures:
            rows.append({"input": str(source), "error": failures[i]})
        else:  # the task's row: the top classes, the labels that apply, or the numbers
            (row,) = model.task.predict_rows(proba[i : i + 1], model.classes_, args.top_k)
            rows.append({"input": source, **row})
    _print_predictions(rows, args.json)
    if any("error" in row for row in rows):
        args.exit_status = EXIT_SOME_FAILED
    return {"predictions": rows}  # --json: one object, as every command prints


def _print_predictions(rows: list[dict[str, Any]], as_json: bool) -> None:
    """One line per input (stdout); each failure also on stderr, then how many failed."""
    errors = [row for row in rows if "error" in row]
    for row in rows:
        if "error" in row:
            print(f"error: {row['error']}", file=sys.stderr)
        elif not as_json:
            given = row["input"]  # a sentence pair is shown as "first ‖ second"
            print(f"{' ‖ '.join(given) if isinstance(given, tuple) else given}\t{_shown(row)}")
    if errors:
        print(f"graft: {len(errors)} of {len(rows)} input(s) could not be predicted", file=sys.stderr)


def _shown(row: dict[str, Any]) -> str:
    """One prediction for people: the top classes, the labels that apply, or the number(s)."""
    if "predictions" in row:
        return "\t".join(f"{p['label']} {p['probability']:.4f}" for p in row["predictions"])
    if "labels" in row:
        return ", ".join(row["labels"]) or "(no label)"
    if "value" in row:
        return f"{row['value']:.6g}"
    return "\t".join(f"{name} {value:.6g}" for name, value in row["values"].items())


def _takes_strings(model: Any) -> bool:
    """Whether the model's inputs are strings themselves (texts), not paths to files."""
    return bool(model.modality.accepts("\0 not a path"))


def _gather(given: list[str], model: Any) -> tuple[list[Any], list[tuple[str, str]]]:
    """Inputs to predict, and (argument, reason) for the arguments that give none: a missing
    image file, a folder with no inputs in it."""
    inputs: list[Any] = []
    failed: list[tuple[str, str]] = []
    for item in given:
        path = Path(item)
        if not path.exists() and not _takes_strings(model):
            failed.append((item, f"{item}: no such file"))
        elif path.is_dir():
            found = model.modality.inputs_of_folder(path)
            inputs += found
            if not found:
                failed.append((item, f"{item}: a folder with no {model.modality.unit} in it"))
        else:
            inputs.append(item)
    return inputs, failed


def _inputs_from(path: str, model: Any, meta: dict[str, Any]) -> list[Any]:
    """Inputs to predict from --input: a table's input column (the bundle's, as `meta` names it: texts,
    or image paths relative to the table) or a plain file, one per line."""
    from .errors import DataError

    if not Path(path).is_file():
        raise DataError(f"--input {path}: no such file")
    return model.modality.inputs_of_file(Path(path), meta)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from .export import export

    result = export(args.run_dir, args.format, args.out, samples=args.samples, log=_log_for(args))
    if not args.json:
        assets = f" + {result['assets']}/" if result["assets"] else ""
        print(f"wrote {result['out']}{assets} ({result['bytes'] / 1e6:.1f} MB) in {result['seconds']:.1f}s")
    return result


def cmd_backbones(args: argparse.Namespace) -> dict[str, Any]:
    from .backbones import list_backbones

    rows = list_backbones()
    if not args.json:
        print(f"{'name':28} {'source':12} {'parameters':>12} {'input':>6}  offline")
        for r in rows:
            print(
                f"{r['name']:28} {r['source']:12} {r['parameters']:>12,} {r['input_size']:>6}  "
                f"{'yes' if r['offline'] else r.get('missing') or 'no (downloads when online)'}"
            )
        print("Also: any torchvision classification model by name, any timm model as timm/<name>.")
    return {"backbones": rows}


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from .demo import run_demo
    from .options import DemoOptions

    started = time.perf_counter()
    result = run_demo(DemoOptions.from_args(args), log=_log_for(args))
    if not args.json:
        t, s = result["transfer"], result["scratch"]
        print(
            f"\nDigits, {result['labels_per_class']} labels per class, {result['test_images']} held-out "
            f"test images, {result['backbone']} at {args.image_size}px:"
        )
        print(f"  pretrained (ImageNet) + linear head : accuracy {t['accuracy']:.3f} in {t['seconds']:.0f}s")
        print(f"  same network from scratch           : accuracy {s['accuracy']:.3f} in {s['seconds']:.0f}s")
        print(
            f"Same images, same architecture; from scratch trained until validation accuracy stopped "
            f"improving ({s['epochs']} epochs). The gap is what pretraining gives."
        )
        print(f"Run folder: {result['run_dir']}  (total {time.perf_counter() - started:.0f}s)")
    return result


def cmd_lr_find(args: argparse.Namespace) -> dict[str, Any]:
    from .config import TrainConfig
    from .training.lr_find import find_lr

    config = TrainConfig(**_config_options(args))
    return find_lr(config, Path(args.out), steps=args.steps, log=_log_for(args))


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from .report_html import write_report_html

    path = write_report_html(args.run_dir)
    if not args.json:
        print(f"wrote {path}")
    return {"report": str(path)}


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from .compare import CompareConfig, headline, run_compare
    from .options import CompareOptions, parse_backbones, parse_methods, parse_sizes

    options = _config_options(args)
    data, test = options.pop("data"), options.pop("test")
    given = CompareOptions.from_args(args)
    sizes, methods = parse_sizes(given.labels_per_class), parse_methods(given.methods)
    backbones = parse_backbones(given.backbones)
    config = CompareConfig(data, test, sizes, methods, backbones, given.seeds, given.out, options)
    summary = run_compare(config, log=_log_for(args))
    if not args.json:
        print(f"compare.json, learning_curve.png, accuracy_vs_time.png and report.html in {given.out}")
    return headline(summary)


def cmd_pick(args: argparse.Namespace) -> dict[str, Any]:
    from .options import PickOptions, parse_candidates
    from .pick import PickConfig, format_table, run_pick

    options = _config_options(args)
    data, budget = options.pop("data"), options.pop("time_budget")
    given = PickOptions.from_args(args)
    config = PickConfig(data, parse_candidates(given.candidates), budget, given.per_class, options)
    result = run_pick(config, log=_log_for(args))
    if not args.json:
        print("\n".join(format_table(result)))
    return result


def cmd_serve(args: argparse.Namespace) -> None:
    from .options import ServeOptions
    from .serve import serve

    names = [f.name for f in fields(ServeOptions)]
    options = ServeOptions(**{name: getattr(args, name) for name in names})
    serve(args.run_dir, options, log=lambda line: print(line, flush=True))


COMMANDS = {
    "train": cmd_train,
    "report": cmd_report,
    "compare": cmd_compare,
    "pick": cmd_pick,
    "serve": cmd_serve,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "export": cmd_export,
    "backbones": cmd_backbones,
    "lr-find": cmd_lr_find,
    "demo": cmd_demo,
}


def _resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """The exact command that continues an interrupted training run (its --out holds the checkpoint)."""
    import shlex

    if args.command != "train" or not getattr(args, "out", None):
        return ""
    if not (Path(args.out) / "checkpoint.json").is_file():  # stopped before its first checkpoint
        return f"; no checkpoint was written to {args.out} yet: run the same command again to start over"
    command = ["graft", *(a for a in argv if a not in ("--resume", "--overwrite")), "--resume"]
    return f"; the last checkpoint is kept in {args.out}, continue with: {shlex.join(command)}"


def _is_main() -> bool:
    """False in the processes other than rank 0 of a multi-process run (accelerate launch)."""
    from .distributed.ranks import is_main

    return is_main()


@contextmanager
def _interrupts_not_lost() -> Iterator[None]:
    """CPython drops an exception raised inside an at-fork hook or a __del__, printing only
    "Exception ignored in ...": a Ctrl-C landing while a DataLoader forks its worker (every epoch)
    was lost and training went on. Such a KeyboardInterrupt is raised again in the main thread."""
    import _thread
    import threading

    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # from another thread, a moment later: the main thread gets it back outside the hook
            threading.Timer(0.05, _thread.interrupt_main).start()
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


NAMED_DATA = ("cifar10",)  # data names that are not paths (downloaded or read from --data-root)
# (argument, what it is) checked before any heavy import: a typo is reported in well under a second
PATH_ARGUMENTS = {
    "train": (("data", "data"), ("val", "--val"), ("test", "--test")),
    "lr-find": (("data", "data"), ("val", "--val")),
    "compare": (("data", "data"), ("test", "--test"), ("val", "--val")),
    "pick": (("data", "data"), ("val", "--val")),
    "eval": (("run_dir", "run folder"), ("data", "data")),
    "predict": (("run_dir", "run folder"), ("input", "--input")),
    "export": (("run_dir", "run folder"),),
    "report": (("run_dir", "run folder"),),
    "serve": (("run_dir", "run folder"),),
}


def check_arguments(args: argparse.Namespace) -> None:
    """The command's options (its TrainConfig ones for train and lr-find), then its paths: they
    exist, data folders are not empty, a run folder holds graft.json. One-line errors before torch
    is imported (seconds)."""
    from .config import TrainConfig
    from .errors import ConfigError, DataError
    from .options import COMMAND_OPTIONS

    COMMAND_OPTIONS[args.command].from_args(args)  # each checks itself, as TrainConfig does
    if args.command in ("train", "lr-find"):
        config = TrainConfig(**_config_options(args))
        if args.command == "train":
            config.check_extras()
    for name, what in PATH_ARGUMENTS.get(args.command, ()):
        value = getattr(args, name, None)
        if value is None or (name == "data" and value in NAMED_DATA):
            continue
        path = Path(value)
        if not path.exists():
            raise DataError(f"{value}: {what} does not exist; check the path")
        if name != "run_dir" and path.is_dir() and next(path.iterdir(), None) is None:
            raise DataError(
                f"{value}: {what} is an empty folder; graft learns from images in one subfolder per "
                f"class ({value}/<class>/*.jpg) or a table of texts (.csv, .tsv, .jsonl)"
            )
        bundle_needed = name == "run_dir" and args.command != "report"  # report reads report.json
        if bundle_needed and path.is_dir() and not (path / "graft.json").is_file():
            raise ConfigError(f"{value} is not a graft run folder: graft.json is missing")
    weights = getattr(args, "weights", None)
    if weights and weights != "random" and not Path(weights).expanduser().is_file():
        raise ConfigError(f"--weights {weights}: no such file (a .pth/.safetensors file, or `random`)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .config import on_command_line
    from .errors import USER_ERRORS

    warnings.formatwarning = lambda msg, category, *a, **k: f"warning: {msg}\n"
    try:
        check_arguments(args)
        with _interrupts_not_lost(), on_command_line():  # errors name --flags
            result = COMMANDS[args.command](args)
    except USER_ERRORS as err:
        print(f"graft: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        hint = _resume_hint(args, sys.argv[1:] if argv is None else argv)
        print(f"graft: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception:
        import traceback

        traceback.print_exc()
        print(
            "graft: internal error (the traceback above): please report it with the command you ran",
            file=sys.stderr,
        )
        return EXIT_BUG
    if getattr(args, "json", False) and _is_main():
        print(json.dumps(result, default=str))
    return getattr(args, "exit_status", 0)


if __name__ == "__main__":
    sys.exit(main())
