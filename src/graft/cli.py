"""The `graft` command line. `train` and `lr-find` options are generated from the fields of
`config.TrainConfig` (their help text and defaults live there, once); this module only parses,
calls the Python API and prints. Nothing here trains."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2
EXIT_BUG = 1
# lr-find: the options that change what the range test measures
LR_FIND_OPTIONS = (
    "data",
    "val",
    "data_root",
    "backbone",
    "weights",
    "strategy",
    "head",
    "dropout",
    "image_size",
    "flip_features",
    "batch_size",
    "val_fraction",
    "seed",
    "device",
    "text_column",
    "label_column",
    "pooling",
    "max_length",
    "augment",
)


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


def add_config_arguments(
    parser: argparse.ArgumentParser,
    only: tuple[str, ...] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """One argument per TrainConfig field: its help, its default (shown), its choices."""
    from .config import TrainConfig

    defaults = defaults or {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        meta = dict(f.metadata)
        if meta.get("positional"):
            parser.add_argument(f.name, help=meta["help"])
            continue
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        help_text = meta["help"]
        if default is not None and default is not False:
            help_text += f" (default: {default})"
        group_name = meta.get("group")
        target: Any = parser
        if group_name:
            if group_name not in groups:
                groups[group_name] = parser.add_argument_group(f"{group_name} options")
            target = groups[group_name]
        flag = "--" + f.name.replace("_", "-")
        choices = meta.get("choices")
        if str(f.type) == "bool":
            target.add_argument(flag, action="store_true", default=default, help=help_text)
        else:
            target.add_argument(
                flag,
                type=_arg_type(f),
                default=default,
                choices=choices,
                metavar=meta.get("metavar"),
                help=help_text,
            )


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="graft", description="Transfer learning from one command.")
    parser.add_argument("--version", action="version", version=f"graft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a classifier on images or texts")
    add_config_arguments(p)
    _json_flag(p)
    p = sub.add_parser("eval", help="evaluate a run folder on labelled images or a labelled text table")
    p.add_argument("run_dir", help="a run folder (graft.json + model.safetensors)")
    p.add_argument("data", help="labelled data of the same kind as the run's training data")
    _json_flag(p)
    p = sub.add_parser("predict", help="predict labels for images or texts")
    p.add_argument("run_dir", help="a run folder (graft.json + model.safetensors)")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, or texts for a text model")
    p.add_argument(
        "--input", help="text model: a .csv/.tsv/.jsonl (its text column) or .txt, one text per line"
    )
    p.add_argument("--top-k", type=int, default=1, help="labels per input, most probable first (default: 1)")
    _json_flag(p)
    p = sub.add_parser("lr-find", help="learning-rate range test: plot and suggested --lr")
    add_config_arguments(p, only=LR_FIND_OPTIONS, defaults={"strategy": "linear"})
    p.add_argument("--steps", type=int, default=100, help="steps of the range test (default: 100)")
    p.add_argument(
        "--out", default="lr-find", help="folder for lr_find.png and lr_find.json (default: lr-find)"
    )
    _json_flag(p)
    p = sub.add_parser("backbones", help="list the built-in backbones")
    _json_flag(p)
    p = sub.add_parser("demo", help="pretrained vs from scratch on scikit-learn's digits, offline")
    p.add_argument("--labels-per-class", type=int, default=10, help="training images per class (default: 10)")
    p.add_argument("--image-size", type=int, default=96, help="input size in pixels (default: 96)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and training (default: 0)")
    p.add_argument("--out", help="run folder (default: runs/demo)")
    _json_flag(p)
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
    out = {
        "accuracy": report["validation"]["accuracy"],
        "macro_f1": report["validation"]["macro_f1"],
        "seconds": round(report["seconds"], 2),
        "run_dir": str(clf.run_dir_),
        "strategy": report["strategy"],
        "feature_cache_hit": report["timing"]["feature_cache_hit"],
        "skipped_files": len(report["skipped_files"]),
    }
    if report["test"]:
        out |= {
            "test_accuracy": report["test"]["accuracy"],
            "test_macro_f1": report["test"]["macro_f1"],
        }
    if not args.json:
        print(f"validation accuracy {out['accuracy']:.4f}  macro-F1 {out['macro_f1']:.4f}")
        if report["test"]:
            print(f"test accuracy {out['test_accuracy']:.4f}  macro-F1 {out['test_macro_f1']:.4f}")
        print(f"run folder: {clf.run_dir_}  ({out['seconds']:.1f}s)")
    return out


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluate import evaluate_folder

    metrics = evaluate_folder(args.run_dir, args.data)
    if not args.json:
        print(f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  (n={metrics['n']})")
    return metrics


def cmd_predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .errors import ConfigError
    from .predict import load

    model = load(args.run_dir)
    inputs = list(args.inputs) + (_texts_from(args.input, model.meta) if args.input else [])
    if not inputs:
        raise ConfigError("nothing to predict: give image files or texts, or --input FILE")
    proba = model.predict_proba(inputs)
    k = max(1, min(args.top_k, len(model.classes_)))
    rows = []
    for source, p in zip(inputs, proba, strict=True):
        top = p.argsort()[::-1][:k]
        rows.append(
            {
                "input": source,
                "predictions": [
                    {"label": model.classes_[i], "probability": round(float(p[i]), 6)} for i in top
                ],
            }
        )
        if not args.json:
            print(source + "\t" + "\t".join(f"{model.classes_[i]} {p[i]:.4f}" for i in top))
    return rows


def _texts_from(path: str, meta: dict[str, Any]) -> list[str]:
    """Texts to predict from a table (the bundle's text column) or a plain file, one per line."""
    from .data.text import read_text_column

    return read_text_column(path, meta.get("recipe", {}).get("text_column", "text"))


def cmd_backbones(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .backbones import list_backbones

    rows = list_backbones()
    if not args.json:
        print(f"{'name':28} {'source':12} {'parameters':>12} {'input':>6}  offline")
        for r in rows:
            print(
                f"{r['name']:28} {r['source']:12} {r['parameters']:>12,} {r['input_size']:>6}  "
                f"{'yes' if r['offline'] else 'no (downloads when online)'}"
            )
        print("Also: any torchvision classification model by name, any timm model as timm/<name>.")
    return rows


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from .demo import DemoConfig, run_demo

    started = time.perf_counter()
    result = run_demo(
        DemoConfig(args.labels_per_class, args.image_size, args.seed, args.out), log=_log_for(args)
    )
    if not args.json:
        t, s = result["transfer"], result["scratch"]
        print(
            f"\nDigits, {result['labels_per_class']} labels per class, {result['test_images']} held-out "
            f"test images, {result['backbone']} at {args.image_size}px:"
        )
        print(f"  pretrained (ImageNet) + linear head : accuracy {t['accuracy']:.3f} in {t['seconds']:.0f}s")
        print(f"  same network from scratch           : accuracy {s['accuracy']:.3f} in {s['seconds']:.0f}s")
        print("Same images, same architecture, same time budget: the gap is what pretraining gives.")
        print(f"Run folder: {result['run_dir']}  (total {time.perf_counter() - started:.0f}s)")
    return result


def cmd_lr_find(args: argparse.Namespace) -> dict[str, Any]:
    from .config import TrainConfig
    from .training.lr_find import find_lr

    config = TrainConfig(**_config_options(args))
    return find_lr(config, Path(args.out), steps=args.steps, log=_log_for(args))


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "backbones": cmd_backbones,
    "lr-find": cmd_lr_find,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .errors import USER_ERRORS

    warnings.formatwarning = lambda msg, category, *a, **k: f"warning: {msg}\n"
    try:
        result = COMMANDS[args.command](args)
    except USER_ERRORS as err:
        print(f"graft: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        return 130
    except Exception:
        import traceback

        traceback.print_exc()
        print(
            "graft: internal error (the traceback above): please report it with the command you ran",
            file=sys.stderr,
        )
        return EXIT_BUG
    if getattr(args, "json", False):
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
